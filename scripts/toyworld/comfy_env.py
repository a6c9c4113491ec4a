"""The toy world's device choice on top of pack_bootstrap: ComfyUI in CPU mode unless CAD_TOYWORLD_GPU=1,
the pack loaded as `cad_pack` with its toy-world model module (train.py, benchmarks/efficacy.py)."""
import os

from pack_bootstrap import import_pack as _import_pack  # scripts/ is on sys.path wherever toyworld is found


def import_pack():
    # CPU by default so results match the tests; a GPU machine can opt in for the long benchmarks
    pack = _import_pack(cpu=os.environ.get("CAD_TOYWORLD_GPU") != "1")
    import cad_pack.nodes.toyworld.model  # noqa: F401
    return pack

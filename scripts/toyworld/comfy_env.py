"""Import ComfyUI (CPU mode unless CAD_TOYWORLD_GPU=1) and this pack (as `cad_pack`) for the toy-world scripts."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pack_bootstrap import import_pack as _import_pack  # noqa: E402


def import_pack():
    # CPU by default so results match the tests; a GPU machine can opt in for the long benchmarks
    pack = _import_pack(cpu=os.environ.get("CAD_TOYWORLD_GPU") != "1")
    import cad_pack.nodes.toyworld.model  # noqa: F401
    return pack

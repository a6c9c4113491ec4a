"""Import ComfyUI and this pack (as `cad_pack`) from a plain script, the way ComfyUI loads custom nodes.

The one place scripts and benchmarks put ComfyUI (COMFYUI_PATH, else .comfyui/ComfyUI) on sys.path and
choose its device: ComfyUI reads `--cpu` once, when comfy.model_management is first imported.
"""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_pack(cpu: bool = True):
    """ComfyUI importable with the device chosen (CPU unless cpu=False), the pack loaded as `cad_pack`."""
    if "cad_pack" in sys.modules:
        return sys.modules["cad_pack"]
    root = os.path.abspath(os.environ.get("COMFYUI_PATH") or os.path.join(REPO, ".comfyui", "ComfyUI"))
    if not os.path.isfile(os.path.join(root, "main.py")):
        raise SystemExit(f"ComfyUI not found at {root}: run `make setup` or set COMFYUI_PATH.")
    # the repo's `nodes/` package must not shadow ComfyUI's nodes.py
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != REPO]
    sys.path.insert(0, root)
    from comfy.cli_args import args
    if "comfy.model_management" not in sys.modules:
        args.cpu = cpu
    spec = importlib.util.spec_from_file_location("cad_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["cad_pack"] = pack
    spec.loader.exec_module(pack)
    return pack

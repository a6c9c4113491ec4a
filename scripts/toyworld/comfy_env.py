"""Import ComfyUI (CPU mode unless CAD_TOYWORLD_GPU=1) and this pack (as `cad_pack`) from a plain script."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_pack():
    """Put ComfyUI on sys.path (COMFYUI_PATH or .comfyui/ComfyUI), select the CPU, import the pack."""
    if "cad_pack" in sys.modules:
        return sys.modules["cad_pack"]
    comfy_root = os.environ.get("COMFYUI_PATH") or os.path.join(REPO, ".comfyui", "ComfyUI")
    if not os.path.isfile(os.path.join(comfy_root, "main.py")):
        raise SystemExit(f"ComfyUI not found at {comfy_root}: run `make setup` or set COMFYUI_PATH.")
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != REPO]
    sys.path.insert(0, comfy_root)
    from comfy.cli_args import args
    if "comfy.model_management" not in sys.modules:
        # CPU by default so results match the tests; a GPU machine can opt in for the long benchmarks
        args.cpu = os.environ.get("CAD_TOYWORLD_GPU") != "1"
    spec = importlib.util.spec_from_file_location("cad_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["cad_pack"] = pack
    spec.loader.exec_module(pack)
    import cad_pack.nodes.toyworld.model  # noqa: F401
    return pack

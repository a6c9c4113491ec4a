"""Import ComfyUI and this pack (as `cad_pack`) from a plain script, the way ComfyUI loads custom nodes.

The one place tests (tests/conftest.py), scripts and benchmarks find ComfyUI (COMFYUI_PATH, else
.comfyui/ComfyUI), put it on sys.path (the only sys.path edit in the project), choose its device (ComfyUI
reads `--cpu` once, when comfy.model_management is first imported) and load the pack:

    import_pack(cpu=True)      ComfyUI importable, device chosen, the pack loaded as `cad_pack`
    import_comfyui(cpu=True)   the same without the pack (e.g. to build a checkpoint)

and the steps they are made of, for callers that report a failure their own way (the test bootstrap):
comfyui_root(), find_comfyui(), put_comfyui_on_path(), choose_device(), load_pack().
"""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_INIT = os.path.join(REPO, "__init__.py")


def comfyui_root() -> str:
    """Where ComfyUI should be: COMFYUI_PATH, else the copy scripts/setup_env.sh puts in .comfyui/ComfyUI."""
    return os.path.abspath(os.environ.get("COMFYUI_PATH") or os.path.join(REPO, ".comfyui", "ComfyUI"))


def find_comfyui():
    """comfyui_root() if a ComfyUI is there (main.py and comfy/), else None."""
    root = comfyui_root()
    if os.path.isfile(os.path.join(root, "main.py")) and os.path.isdir(os.path.join(root, "comfy")):
        return root
    return None


def put_comfyui_on_path(root: str) -> None:
    """`root` first on sys.path and the repo root right after it: ComfyUI's nodes.py must win over the repo's
    `nodes/` package, while the tooling packages (`scripts`, `benchmarks`) stay importable from the repo."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) not in (REPO, root)]
    sys.path[0:0] = [root, REPO]


def toyworld_on_cpu() -> bool:
    """The toy world runs on the CPU, so results match the tests, unless CAD_TOYWORLD_GPU=1 (long benchmarks)."""
    return os.environ.get("CAD_TOYWORLD_GPU") != "1"


def choose_device(cpu: bool = True) -> None:
    """ComfyUI's --cpu, before comfy.model_management is first imported (later it no longer counts)."""
    from comfy.cli_args import args
    if "comfy.model_management" not in sys.modules:
        args.cpu = cpu


def load_pack():
    """Execute the repo's __init__.py as package `cad_pack` (ComfyUI must be importable). If that fails,
    no half-imported `cad_pack` stays in sys.modules and the exception propagates."""
    spec = importlib.util.spec_from_file_location("cad_pack", PACK_INIT, submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["cad_pack"] = pack
    try:
        spec.loader.exec_module(pack)
    except BaseException:
        for name in [n for n in sys.modules if n == "cad_pack" or n.startswith("cad_pack.")]:
            del sys.modules[name]
        raise
    return pack


def import_comfyui(cpu: bool = True) -> str:
    """ComfyUI importable with the device chosen (CPU unless cpu=False); returns its folder."""
    root = find_comfyui()
    if root is None:
        raise SystemExit(f"ComfyUI not found at {comfyui_root()}: run `make setup` or set COMFYUI_PATH.")
    put_comfyui_on_path(root)
    choose_device(cpu)
    return root


def import_pack(cpu: bool = True):
    """ComfyUI importable with the device chosen (CPU unless cpu=False), the pack loaded as `cad_pack`."""
    if "cad_pack" in sys.modules:
        return sys.modules["cad_pack"]
    import_comfyui(cpu)
    return load_pack()

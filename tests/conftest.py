"""Test bootstrap: real ComfyUI on sys.path (CPU), the pack importable as `cad_pack`,
and session fixtures for the random SD1.5 test checkpoint and a running ComfyUI server."""
import os
import sys
import traceback

import pytest

from scripts import pack_bootstrap  # the one ComfyUI and pack bootstrap (the repo root is on sys.path: pyproject's
#                                     pytest `pythonpath`); tests only report its failures

REPO = pack_bootstrap.REPO
ARTIFACTS = os.path.join(REPO, "tests", ".artifacts")

# --- 1. ComfyUI -------------------------------------------------------------------------
COMFYUI_PATH = pack_bootstrap.comfyui_root()
if pack_bootstrap.find_comfyui() is None:
    pytest.exit(f"ComfyUI not found at {COMFYUI_PATH}. Run `make test` (it sets everything up), "
                f"or point COMFYUI_PATH at a ComfyUI checkout.", returncode=4)
os.environ["COMFYUI_PATH"] = COMFYUI_PATH  # so scripts/ helpers and subprocesses agree
pack_bootstrap.put_comfyui_on_path(COMFYUI_PATH)  # sys.path: ComfyUI (its nodes.py wins over our nodes/), the repo

assert "comfy.model_management" not in sys.modules, "comfy.model_management imported before args.cpu was set"
pack_bootstrap.choose_device(cpu=True)  # must precede the first import of comfy.model_management

# --- 2. the pack as package `cad_pack` ---------------------------------------------------
PACK_INIT = pack_bootstrap.PACK_INIT
CAD_PACK_IMPORT_ERROR = None
if os.path.isfile(PACK_INIT):
    try:
        pack_bootstrap.load_pack()
    except Exception:  # keep collecting; the header and the `cad_pack` fixture show why
        CAD_PACK_IMPORT_ERROR = traceback.format_exc()


def pytest_addoption(parser):
    parser.addoption("--browser", action="store_true",
                     help="also run the tests marked `browser` (need Chromium and Node: scripts/setup_browser.sh)")


def pytest_collection_modifyitems(config, items):
    """Browser tests stay out of every run without --browser, whatever -m says."""
    if config.getoption("--browser"):
        return
    skipped = [item for item in items if item.get_closest_marker("browser")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]


def pytest_report_header(config):
    lines = [f"ComfyUI: {COMFYUI_PATH}"]
    if not os.path.isfile(PACK_INIT):
        lines.append("cad_pack: __init__.py not present yet (not registered)")
    elif CAD_PACK_IMPORT_ERROR:
        lines.append("cad_pack: IMPORT FAILED\n" + CAD_PACK_IMPORT_ERROR)
    return lines


@pytest.fixture(scope="session")
def cad_pack():
    """The imported pack module; fails with the original traceback if its import failed."""
    if not os.path.isfile(PACK_INIT):
        pytest.skip("pack __init__.py not present")
    if CAD_PACK_IMPORT_ERROR:
        pytest.fail("importing the pack failed:\n" + CAD_PACK_IMPORT_ERROR)
    return sys.modules["cad_pack"]


# --- 3. fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sd15_test_checkpoint():
    """Path of the cached random SD1.5 checkpoint (built on first use, ~10 s, ~440 MiB)."""
    from scripts.make_test_checkpoint import DEFAULT_PATH, make_sd15_test_checkpoint
    return make_sd15_test_checkpoint(DEFAULT_PATH)


def running_server(name, checkpoint):
    """A real `main.py --cpu` server with the pack and `checkpoint` installed, in tests/.artifacts/<name>/ (emptied
    first), logging to tests/.artifacts/comfy_<name>.log; a context manager."""
    from scripts.comfy_server import ComfyServer, reset_dir
    base = os.path.join(ARTIFACTS, name)
    reset_dir(base)
    return ComfyServer(base, checkpoint=checkpoint, log_path=os.path.join(ARTIFACTS, f"comfy_{name}.log"))


@pytest.fixture(scope="session")
def comfy_server(sd15_test_checkpoint):
    """A real `main.py --cpu` server with the pack and the test checkpoint installed."""
    with running_server("server", sd15_test_checkpoint) as srv:
        yield srv

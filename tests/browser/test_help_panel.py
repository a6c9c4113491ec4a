"""A node's help page in the real frontend: CAD Erase Mask on the canvas, selected with a click, then the selection
toolbox's info button; the help panel (frontend 1.32.9: the node library's; 1.49.6: the properties panel's Info tab)
must show web/docs/CADEraseMask.md, fetched from /extensions/comfyui-cad/docs/. Screenshot:
tests/.artifacts/browser/help_panel/frontend-<version>/help.png. Runs with --browser (make test-browser)."""
import json
import os
import subprocess

import pytest

from scripts.comfy_server import PACK_DIR_NAME, REPO, ComfyServer, reset_dir
from test_browser import BROWSER_DIR, CHROMIUM, FRONTEND_VERSION, require_browser_tools

pytestmark = pytest.mark.browser

NODE_ID = "CADEraseMask"
# beside test_browser.py's frontend-<version>/ folder, which its session empties
ARTIFACTS = os.path.join(REPO, "tests", ".artifacts", "browser", "help_panel", f"frontend-{FRONTEND_VERSION}")


def test_help_panel_shows_the_pack_help_page():
    require_browser_tools()
    reset_dir(ARTIFACTS)
    with open(os.path.join(REPO, "web", "docs", f"{NODE_ID}.md"), encoding="utf-8") as f:
        first_paragraph = f.read().split("\n\n")[1]
    expect = first_paragraph.split(":")[0]          # "Turns an attribution into a mask": plain text, no markup
    with ComfyServer(os.path.join(ARTIFACTS, "server"), log_path=os.path.join(ARTIFACTS, "comfy_server.log")) as server:
        plan = {"url": server.url, "chromium": CHROMIUM, "nodeId": NODE_ID, "expectText": expect,
                "screenshot": os.path.join(ARTIFACTS, "help.png")}
        plan_path, result_path = os.path.join(ARTIFACTS, "plan.json"), os.path.join(ARTIFACTS, "result.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f, indent=1)
        driver = subprocess.run(["node", "help_panel.mjs", plan_path, result_path], cwd=BROWSER_DIR,
                                capture_output=True, text=True, timeout=300)
    if not os.path.exists(result_path):
        pytest.fail(f"the driver wrote no result (exit {driver.returncode}):\n{driver.stdout}\n{driver.stderr}")
    with open(result_path) as f:
        result = json.load(f)
    assert result["frontend"] == FRONTEND_VERSION, result
    assert not result.get("error") and result["shown"], f"the help panel did not show {expect!r}: {result}"
    page = f"/extensions/{PACK_DIR_NAME}/docs/{NODE_ID}.md"
    assert any(r["url"].endswith(page) and r["status"] == 200 for r in result["fetched"]), result["fetched"]

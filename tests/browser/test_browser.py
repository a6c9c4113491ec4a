"""Every example workflow, opened from ComfyUI's template browser in a real Chromium, run with the Run
button on a real `main.py --cpu` server; what the page shows is checked against GET /history.

The same checks pass on both legs: ComfyUI 0.3.75 with frontend 1.32.9 (`make test-browser`) and
ComfyUI 0.33.0 with frontend 1.49.6 (`make test-browser-0.33`); drive_workflows.mjs lists how the two
frontends differ and how it meets each difference. Chromium and playwright-core come from
scripts/setup_browser.sh; every run without --browser leaves these out (marker `browser`, tests/conftest.py).

Artifacts go to a folder per frontend, so both legs' are kept side by side:
tests/.artifacts/browser/frontend-<version>/ holds plan.json, results.json, comfy_server.log, the server's
base directory (server/) and, per workflow, <workflow>/loaded.png, finished.png and node_<id>.png.
"""
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from scripts.comfy_server import PACK_DIR_NAME, REPO, ComfyServer, reset_dir
from scripts.workflow_format import ui_to_api

pytestmark = pytest.mark.browser

BROWSER_DIR = os.path.dirname(os.path.abspath(__file__))
# The frontend the server serves is the comfyui-frontend-package installed next to ComfyUI (main.py runs
# with this interpreter, as ComfyServer starts it); the page's own version must agree (session()).
FRONTEND_VERSION = importlib.metadata.version("comfyui-frontend-package")
ARTIFACTS = os.path.join(REPO, "tests", ".artifacts", "browser", f"frontend-{FRONTEND_VERSION}")
EXAMPLES_DIR = os.path.join(REPO, "example_workflows")
# Sorted names put cad_4a (saves the attribution) before cad_4b (loads it).
EXAMPLES = sorted(os.path.splitext(f)[0] for f in os.listdir(EXAMPLES_DIR) if f.endswith(".json"))
CHROMIUM = os.environ.get("CAD_CHROMIUM", "/usr/bin/chromium")
# Examples that show the edit applied by core nodes alone (cad_5b: core's LoRA loader on cad_5a's export)
CORE_NODES_ONLY = {"cad_5b_load_lora"}
RUN_TIMEOUT_S = 600


def load_example(name):
    with open(os.path.join(EXAMPLES_DIR, name + ".json")) as f:
        return json.load(f)


def require_browser_tools():
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")) or not os.path.exists(CHROMIUM) \
            or shutil.which("node") is None:
        pytest.fail("Chromium, node or playwright-core is missing: run `make test-browser` "
                    "(or bash scripts/setup_browser.sh)")


@pytest.fixture(scope="module")
def session():
    """Drive all examples in one browser session; returns the recorded page state and server replies."""
    require_browser_tools()
    reset_dir(ARTIFACTS)
    base = os.path.join(ARTIFACTS, "server")
    with ComfyServer(base, log_path=os.path.join(ARTIFACTS, "comfy_server.log")) as server:
        plan = {"url": server.url, "pack": PACK_DIR_NAME, "screenshotsDir": ARTIFACTS, "chromium": CHROMIUM,
                "runTimeoutMs": RUN_TIMEOUT_S * 1000,
                "workflows": [{"name": name, "nodeIds": [n["id"] for n in load_example(name)["nodes"]]}
                              for name in EXAMPLES]}
        plan_path, results_path = os.path.join(ARTIFACTS, "plan.json"), os.path.join(ARTIFACTS, "results.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f, indent=1)
        driver = subprocess.run(["node", "drive_workflows.mjs", plan_path, results_path], cwd=BROWSER_DIR,
                                capture_output=True, text=True, timeout=RUN_TIMEOUT_S * len(EXAMPLES))
        if not os.path.exists(results_path):
            pytest.fail(f"the browser driver wrote no results (exit {driver.returncode}):\n"
                        f"{driver.stdout}\n{driver.stderr}")
        with open(results_path) as f:
            results = json.load(f)
        if (results.get("frontend") or {}).get("version") != FRONTEND_VERSION:  # read once from the page
            pytest.fail(f"the page runs frontend {results.get('frontend')}, not the installed {FRONTEND_VERSION} "
                        f"(its screenshots would be filed under the wrong version):\n{driver.stdout}\n{driver.stderr}")
        runs = {run["name"]: run for run in results["workflows"]}
        histories = {name: server.history(run["promptId"]) for name, run in runs.items() if run.get("promptId")}
        images = {name: {nid: [server.view(i["filename"], i["subfolder"], i["type"]) for i in out["images"]]
                         for nid, out in history.get("outputs", {}).items() if out.get("images")}
                  for name, history in histories.items()}
        yield {"runs": runs, "histories": histories, "images": images, "object_info": server.object_info(),
               "page_problems": results["pageProblems"], "template_responses": results["templateResponses"]}


def run_of(session, name):
    run = session["runs"].get(name)
    assert run is not None, f"{name} was not driven"
    assert "failure" not in run, f"{name}: the browser driver failed:\n{run['failure']}"
    # 1.32.9 keeps node ids as numbers, 1.49.6 as strings; the driver records numbers, as in the workflow JSON
    assert all(type(node["id"]) is int for node in run.get("nodes", [])), [node["id"] for node in run["nodes"]]
    return run


def finished_run(session, name):
    run = run_of(session, name)
    assert run["queue"]["status"] == 200, f"{name}: /prompt refused the graph: {json.dumps(run['queue']['body'])}"
    history = session["histories"][name]
    messages = dict(history["status"]["messages"])
    assert history["status"]["status_str"] == "success", json.dumps(messages)[-3000:]
    assert messages["execution_cached"]["nodes"] == [], "nodes were served from an earlier run's cache"
    return run, history


def strip_meta(graph):
    return {nid: {"class_type": node["class_type"], "inputs": node["inputs"]} for nid, node in graph.items()}


@pytest.mark.parametrize("name", EXAMPLES)
def test_opens_from_the_template_browser_with_its_thumbnail(session, name):
    run = session["runs"].get(name)
    assert run is not None, f"{name} was not driven"
    # What the page showed on opening is checked before the run's outcome: a missing-nodes dialog (1.32.9)
    # also blocks the Run button, and would otherwise only show up as the driver's timeout.
    assert "load" in run, f"{name}: the browser driver failed:\n{run.get('failure')}"
    load = run["load"]
    assert load["unregisteredTypes"] == [], f"missing node types: {load['unregisteredTypes']}"
    assert load["dialogs"] == [], (f"a dialog (1.32.9) or error overlay (1.49.6) opened on load (missing nodes "
                                   f"or models?): {load['dialogs']}")
    thumbnail_url = f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg"
    served = {urllib.parse.urlparse(r["url"]).path: r["status"] for r in session["template_responses"]}
    assert served.get(thumbnail_url) == 200, f"{thumbnail_url} was not served: {served}"
    with Image.open(os.path.join(EXAMPLES_DIR, name + ".jpg")) as picture:
        expected_size = picture.size
    thumbnail = load["thumbnail"]
    assert thumbnail["present"] and (thumbnail["width"], thumbnail["height"]) == expected_size, (
        f"the card shows another picture (the frontend's default?): {thumbnail}")
    run_of(session, name)  # and the rest of its run went through


@pytest.mark.parametrize("name", EXAMPLES)
def test_run_button_queues_what_the_converter_predicts(session, name):
    """scripts/workflow_format.py (used by `make demo` and the tests) agrees with the real frontend."""
    run = run_of(session, name)
    assert run["queue"]["status"] == 200, json.dumps(run["queue"]["body"])
    predicted = ui_to_api(load_example(name), session["object_info"])
    assert strip_meta(run["queue"]["graph"]) == strip_meta(predicted)


def expect_chart(shown, blocks, node_type):
    charts = [c for c in shown["charts"] if c["cadNode"] == node_type]
    assert len(charts) == 1, f"node {shown['id']}: expected one .cad-chart[data-cad-node={node_type}], got {shown['charts']}"
    chart = charts[0]
    assert chart["caption"], "the chart has no .cad-chart-caption"
    assert [(b["block"], b["positive"], b["negative"]) for b in chart["blocks"]] == \
        [(b["block"], b["positive_mass"], b["negative_mass"]) for b in blocks]


def expect_mask_count(shown, mask):
    assert [(m["selected"], m["scoped"], m["percent"]) for m in shown["maskCounts"]] == \
        [(mask["selected"], mask["scoped_weights"], mask["percent_of_scope"])]


def expect_images(shown, images):
    loaded = [i for i in shown["images"] if i["complete"] and i["width"] > 0]
    assert len(loaded) == len(shown["images"]), f"node {shown['id']}: images failed to load: {shown['images']}"
    shown_files = [urllib.parse.parse_qs(urllib.parse.urlparse(i["src"]).query)["filename"][0] for i in loaded]
    assert shown_files == [i["filename"] for i in images]


@pytest.mark.parametrize("name", EXAMPLES)
def test_nodes_show_what_the_backend_sent(session, name):
    run, history = finished_run(session, name)
    assert run["notShownInTime"] == [], f"nodes whose output never appeared on the page: {run['notShownInTime']}"
    shown_by_id = {str(node["id"]): node for node in run["nodes"]}
    checked = set()
    for nid, output in history["outputs"].items():
        shown = shown_by_id[nid]
        assert shown["domWidgetsConnected"], f"node {nid}: a DOM widget is not attached to the page"
        if "cad_summary" in output:
            expect_chart(shown, output["cad_summary"][0]["blocks"], shown["type"])
        if "cad_map" in output:
            expect_chart(shown, output["cad_map"][0]["rows"], shown["type"])
            if output["cad_map"][0].get("mask"):
                expect_mask_count(shown, output["cad_map"][0]["mask"])
        if "cad_mask" in output:
            expect_mask_count(shown, output["cad_mask"][0])
        if "text" in output:
            assert shown["summaryTexts"] == output["text"]
        if "images" in output:
            expect_images(shown, output["images"])
        checked.update(key for key in output if key in ("cad_summary", "cad_map", "cad_mask", "images"))
    assert "images" in checked, "the workflow previews no images"
    if name not in CORE_NODES_ONLY:
        assert checked & {"cad_summary", "cad_map"}, "no CAD node showed an attribution"


def fed_by(workflow, node_type):
    """Ids of the nodes of `node_type` and of the nodes their outputs feed."""
    sources = {node["id"] for node in workflow["nodes"] if node["type"] == node_type}
    return sources, {link[3] for link in workflow["links"] if link[1] in sources}


WITH_MAP = [name for name in EXAMPLES if fed_by(load_example(name), "CADAttributionMap")[0]]


@pytest.mark.parametrize("name", WITH_MAP)
def test_attribution_map_and_its_preview_show_the_picture(session, name):
    run, history = finished_run(session, name)
    maps, fed = fed_by(load_example(name), "CADAttributionMap")
    shown_by_id = {node["id"]: node for node in run["nodes"]}
    assert any(shown_by_id[nid]["type"] == "PreviewImage" for nid in fed), "the map feeds no Preview Image"
    for nid in maps | fed:
        pictures = shown_by_id[nid]["images"]
        assert pictures and all(p["width"] > 0 for p in pictures), f"node {nid} shows no picture"
        assert len(pictures) == len(history["outputs"][str(nid)]["images"])


def test_loaded_attribution_reproduces_the_saved_run(session):
    """cad_4b loads what cad_4a saved: same scores on the node, same erased pictures."""
    _, saved = finished_run(session, "cad_4a_save_attribution")
    _, loaded = finished_run(session, "cad_4b_load_attribution")
    assert loaded["outputs"]["10"]["cad_summary"][0]["blocks"] == saved["outputs"]["10"]["cad_summary"][0]["blocks"]
    erased = [node["id"] for node in load_example("cad_4a_save_attribution")["nodes"]
              if node["type"] == "PreviewImage" and node.get("title", "").startswith("erased")]
    assert erased
    for nid in map(str, erased):
        pictures = [[np.asarray(Image.open(io.BytesIO(png))) for png in session["images"][name][nid]]
                    for name in ("cad_4a_save_attribution", "cad_4b_load_attribution")]
        assert all(np.array_equal(a, b) for a, b in zip(*pictures)) and len(pictures[0]) == len(pictures[1])


def test_exported_lora_reproduces_the_erase_with_core_nodes(session):
    """cad_5b applies, with core's LoraLoaderModelOnly, the LoRA that cad_5a's Save CAD Mask as LoRA wrote: the
    erased pictures are pixel for pixel those of Apply CAD Mask in cad_5a."""
    _, exported = finished_run(session, "cad_5a_export_lora")
    saved = exported["outputs"]["17"]["cad_saved"][0]
    assert saved["folder"] == "loras" and saved["file"].endswith("_00001_.safetensors")
    finished_run(session, "cad_5b_load_lora")
    erased = [node["id"] for node in load_example("cad_5a_export_lora")["nodes"]
              if node["type"] == "PreviewImage" and node.get("title", "").startswith("erased")]
    assert erased and erased == [node["id"] for node in load_example("cad_5b_load_lora")["nodes"]
                                 if node["type"] == "PreviewImage" and node.get("title", "").startswith("erased")]
    for nid in map(str, erased):
        pictures = [[np.asarray(Image.open(io.BytesIO(png))) for png in session["images"][name][nid]]
                    for name in ("cad_5a_export_lora", "cad_5b_load_lora")]
        assert len(pictures[0]) == len(pictures[1]) > 0
        assert all(np.array_equal(a, b) for a, b in zip(*pictures))


def test_the_pack_raises_no_errors_on_the_page(session):
    """Errors the frontend itself logs offline (blocked api.comfy.org calls, absent user.css) are not ours."""
    ours = [p for p in session["page_problems"]
            if f"/extensions/{PACK_DIR_NAME}/" in p["text"] + p.get("url", "")
            or f"/workflow_templates/{PACK_DIR_NAME}/" in p.get("url", "")]
    assert ours == []

"""The shipped example workflows (UI format) and the converter between UI and API formats, checked
against the real server's /object_info. That they run, opened in a real browser, is `make test-browser`."""
import glob
import json
import os

import pytest
from PIL import Image

from scripts.comfy_server import PACK_DIR_NAME
from scripts.example_workflows import DEMO_NAME, demo_graph
from scripts.make_example_workflows import workflow_path

UI_FILE = workflow_path(DEMO_NAME)
from scripts.example_workflows import all_examples
from scripts.make_example_workflows import EXAMPLES_DIR, thumbnail_path, workflow_path
from scripts.workflow_format import api_to_ui, ui_to_api

pytestmark = pytest.mark.server


def strip_meta(graph):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in graph.items()}


def with_defaults(graph, info):
    """The graph as the frontend would queue it: widgets the builder left out take their defaults."""
    out = strip_meta(graph)
    for node in out.values():
        spec = info[node["class_type"]]["input"]
        for section in ("required", "optional"):
            for name, (kind, *rest) in spec.get(section, {}).items():
                if name not in node["inputs"] and rest and "default" in rest[0]:
                    node["inputs"][name] = rest[0]["default"]
    return out


def test_ui_and_api_formats_round_trip(comfy_server):
    info = comfy_server.object_info()
    graph, _ = demo_graph()
    ui = api_to_ui(graph, info)
    assert len(ui["nodes"]) == len(graph)
    assert all(len(link) == 6 for link in ui["links"])
    ksampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert ksampler["widgets_values"][1] == "fixed"  # the seed's control widget, as the frontend stores it
    assert strip_meta(ui_to_api(ui, info)) == with_defaults(graph, info)


def test_shipped_example_workflow_is_current(comfy_server):
    with open(UI_FILE) as f:
        shipped = json.load(f)
    graph, _ = demo_graph()
    info = comfy_server.object_info()
    assert strip_meta(ui_to_api(shipped, info)) == with_defaults(graph, info), (
        "example_workflows/ is stale: run `make examples`")


def test_unknown_node_types_are_named(comfy_server):
    ui = {"nodes": [{"id": 1, "type": "NoSuchNode", "inputs": [], "widgets_values": []}], "links": []}
    with pytest.raises(ValueError, match="NoSuchNode"):
        ui_to_api(ui, comfy_server.object_info())


def test_seed_widgets_get_the_control_the_frontend_adds(comfy_server):
    """The frontend puts a 'control after generate' widget after any INT named seed, flagged or not."""
    graph, _ = demo_graph()
    attribute = next(n for n in api_to_ui(graph, comfy_server.object_info())["nodes"] if n["type"] == "CADAttribute")
    seed_at = 3  # objective, steps, guidance, seed
    assert attribute["widgets_values"][seed_at:seed_at + 3] == [0, "fixed", 2]


SHIPPED = sorted(glob.glob(os.path.join(EXAMPLES_DIR, "*.json")))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_example_workflow_uses_only_installed_nodes(comfy_server, path):
    with open(path) as f:
        ui = json.load(f)
    graph = ui_to_api(ui, comfy_server.object_info())  # raises on node types the server does not know
    assert any(node["class_type"].startswith("CAD") for node in graph.values())


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_example_workflow_has_a_small_thumbnail(path):
    """ComfyUI's template browser shows <name>.jpg next to <name>.json for custom-node packs."""
    thumbnail = os.path.splitext(path)[0] + ".jpg"
    assert os.path.isfile(thumbnail), f"{os.path.basename(thumbnail)} missing: run make examples"
    assert os.path.getsize(thumbnail) < 60_000
    with Image.open(thumbnail) as picture:
        assert picture.format == "JPEG" and max(picture.size) <= 512


def test_shipped_examples_are_current(comfy_server):
    info = comfy_server.object_info()
    examples = all_examples()
    assert sorted(workflow_path(e.name) for e in examples) == SHIPPED, "an example_workflows/ file has no builder"
    for example in examples:
        with open(workflow_path(example.name)) as f:
            shipped = json.load(f)
        assert strip_meta(ui_to_api(shipped, info)) == with_defaults(example.graph, info), (
            f"{example.name} is stale: run make examples")
        assert any(node["type"] == "MarkdownNote" for node in shipped["nodes"]), f"{example.name} has no note"


def test_server_offers_the_examples_as_templates(comfy_server):
    listed = comfy_server.client.get_json("/workflow_templates")
    names = sorted(os.path.splitext(os.path.basename(p))[0] for p in SHIPPED)
    assert sorted(listed[PACK_DIR_NAME]) == names
    for name in names:
        status, thumbnail = comfy_server.client.request(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg")
        with open(thumbnail_path(name), "rb") as f:
            assert status == 200 and thumbnail == f.read()

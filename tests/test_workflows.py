"""The shipped example workflow (UI format) and the converter between UI and API formats, checked
against the real server's /object_info."""
import json

import pytest

from demo_workflow import UI_FILE, build_api_graph
from workflow_format import api_to_ui, ui_to_api

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
    graph, _ = build_api_graph()
    ui = api_to_ui(graph, info)
    assert len(ui["nodes"]) == len(graph)
    assert all(len(link) == 6 for link in ui["links"])
    ksampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert ksampler["widgets_values"][1] == "fixed"  # the seed's control widget, as the frontend stores it
    assert strip_meta(ui_to_api(ui, info)) == with_defaults(graph, info)


def test_shipped_example_workflow_is_current(comfy_server):
    with open(UI_FILE) as f:
        shipped = json.load(f)
    graph, _ = build_api_graph()
    info = comfy_server.object_info()
    assert strip_meta(ui_to_api(shipped, info)) == with_defaults(graph, info), (
        "example_workflows/ is stale: run .venv/bin/python scripts/demo_workflow.py")


def test_unknown_node_types_are_named(comfy_server):
    ui = {"nodes": [{"id": 1, "type": "NoSuchNode", "inputs": [], "widgets_values": []}], "links": []}
    with pytest.raises(ValueError, match="NoSuchNode"):
        ui_to_api(ui, comfy_server.object_info())

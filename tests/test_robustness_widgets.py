"""Widget values out of range or of the wrong type in API-format prompts, through the real server.

Each must be refused at validation, with ComfyUI's own 400 format (error.type
prompt_outputs_failed_validation, node_errors[id].errors[*] with type/message/details/extra_info),
never an execution traceback from inside torch. Values at the edge of the range must run.
"""
import math

import pytest

from robustness_graphs import with_branches

pytestmark = pytest.mark.server

COMFY_VALIDATION_TYPES = {"invalid_input_type", "value_smaller_than_min", "value_bigger_than_max",
                          "custom_validation_failed", "value_not_in_list", "bad_linked_input", "return_type_mismatch"}


def full_graph(ckpt, outputs=("image", "verify")):
    """Attribute -> Erase -> Apply -> KSampler -> SaveLatent ("image"), and Verify -> PreviewAny ("verify").

    ComfyUI runs the outputs that validate and only reports the others, so a test of one widget keeps
    just the output that depends on it: then a refusal is a 400 for the whole prompt.
    """
    nodes = {
        "5": {"class_type": "CADAttribute", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "base": ["3", 0], "latent": ["4", 0],
            "objective": "concept_gap", "steps": 2, "guidance": 3.0, "seed": 0, "samples": 1,
            "scope": "ff", "schedule": "single", "scope_regex": ""}},
        "6": {"class_type": "CADEraseMask", "inputs": {"attribution": ["5", 0], "ratio": 0.01,
                                                       "granularity": "per_matrix"}},
        "7": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": ["6", 0], "strength": 1.0}},
    }
    graph = with_branches(ckpt, {"erased": nodes}, output="latent")  # no VAE decode: these tests need no pixels
    graph["9"] = {"class_type": "CADVerify", "inputs": {"model": ["1", 0], "positive": ["2", 0], "base": ["3", 0],
                                                        "attribution": ["5", 0], "mask": ["6", 0], "strength": 0.05}}
    graph["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["9", 0]}}
    if "image" not in outputs:
        for node in ("7", "erased_k", "erased_s"):
            del graph[node]
    if "verify" not in outputs:
        del graph["9"], graph["10"]
    return graph


BAD_WIDGETS = [
    ("5", "steps", "abc"), ("5", "steps", 0), ("5", "steps", 1001), ("5", "steps", None), ("5", "steps", [1, 2, 3]),
    ("5", "steps", math.nan), ("5", "steps", math.inf),
    ("5", "seed", -1), ("5", "seed", 2**64), ("5", "samples", 0), ("5", "samples", "many"),
    ("5", "guidance", "x"), ("5", "guidance", -1.0), ("5", "guidance", 31.0), ("5", "guidance", "nan"),
    ("5", "guidance", math.nan), ("5", "guidance", "inf"),
    ("5", "scope", 123), ("5", "scope", "everything"), ("5", "scope", {"a": 1}), ("5", "objective", ""),
    ("5", "objective", ["a", "b", "c"]), ("5", "schedule", 1.5),
    ("6", "ratio", "x"), ("6", "ratio", 0.0), ("6", "ratio", 1.5), ("6", "ratio", -0.5), ("6", "ratio", "nan"),
    ("6", "ratio", math.nan), ("6", "ratio", math.inf), ("6", "granularity", "per_pixel"), ("6", "granularity", 3),
    ("7", "strength", 5), ("7", "strength", -0.1), ("7", "strength", "nan"), ("7", "strength", math.nan),
    ("7", "strength", "strong"), ("9", "strength", "nan"), ("9", "strength", 2.0),
]


@pytest.mark.parametrize("node,field,value", BAD_WIDGETS, ids=[f"{n}.{f}={v!r}" for n, f, v in BAD_WIDGETS])
def test_bad_widget_values_fail_validation_in_comfyui_format(comfy_server, node, field, value):
    graph = full_graph(comfy_server.ckpt_name, outputs=("verify",) if node == "9" else ("image",))
    graph[node]["inputs"][field] = value
    status, body = comfy_server.post_prompt(graph)  # json.dumps writes NaN/Infinity literals, as some clients do
    assert status == 400, f"accepted {field}={value!r}: {body}"
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = body["node_errors"][node]["errors"]
    assert errors and all(e["type"] in COMFY_VALIDATION_TYPES for e in errors), errors
    assert all({"type", "message", "details", "extra_info"} <= set(e) for e in errors)
    assert any(field in e["details"] or e["extra_info"].get("input_name") == field for e in errors), errors
    assert not any("Traceback" in e["details"] or "torch" in e["details"] for e in errors), errors


@pytest.mark.parametrize("node,field,phrase", [("5", "scope", "Unknown scope 'None'"),
                                               ("5", "objective", "Unknown objective 'None'"),
                                               ("5", "schedule", "Unknown schedule 'None'"),
                                               ("6", "granularity", "Unknown granularity 'None'")])
def test_null_choice_is_a_clear_cad_error(comfy_server, node, field, phrase):
    """A JSON null reaches validate_inputs as None, exactly like a linked input, so it cannot be refused
    there without refusing links; the node refuses it with its own message instead of failing in torch."""
    graph = full_graph(comfy_server.ckpt_name, outputs=("image",))
    graph[node]["inputs"][field] = None
    result = comfy_server.run(graph, timeout=300)
    assert result["status"] == "error" and result["error"]["node_id"] == node, result["status"]
    assert result["error"]["exception_type"].endswith("CADError"), result["error"]["exception_type"]
    assert phrase in result["error"]["exception_message"], result["error"]["exception_message"]


def test_linked_nan_strength_is_refused_before_it_reaches_the_weights(comfy_server):
    """A strength wired from another node is unknown at validation; Apply CAD Mask checks it when it runs
    (a NaN strength would otherwise turn every selected weight into NaN and the image into noise)."""
    graph = full_graph(comfy_server.ckpt_name, outputs=("image",))
    graph["f"] = {"class_type": "PrimitiveFloat", "inputs": {"value": "nan"}}
    graph["7"]["inputs"]["strength"] = ["f", 0]
    result = comfy_server.run(graph, timeout=300)
    assert result["status"] == "error" and result["error"]["node_id"] == "7", result["status"]
    assert result["error"]["exception_type"].endswith("CADError"), result["error"]["exception_type"]
    assert "strength must be a finite number" in result["error"]["exception_message"]


def test_values_at_the_edges_of_their_ranges_run(comfy_server):
    graph = full_graph(comfy_server.ckpt_name)
    # the largest seed with a second sample (seed + 1 once overflowed torch's generator); steps as a string,
    # which ComfyUI itself converts for every INT widget
    graph["5"]["inputs"].update(steps="1", seed=2**64 - 1, samples=2, guidance=0.0)
    graph["6"]["inputs"]["ratio"] = 1.0
    graph["7"]["inputs"]["strength"] = 0.0
    graph["9"]["inputs"]["strength"] = 1.0
    result = comfy_server.run(graph, timeout=300)
    assert result["status"] == "success", result["error"]
    assert result["outputs"]["5"]["cad_summary"][0]["unet_calls"]["forward_backward"] == 2

"""The CAD nodes inside ComfyUI's real server: the full erase workflow over HTTP + websocket, and a
clear error (validation or execution) for each kind of bad input."""
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, Mask, MaskInfo, save_attribution, save_mask

from robustness_graphs import image_pixels, sample_graph

pytestmark = pytest.mark.server

# The test checkpoint's UNet: 320 channels, one transformer block in input_blocks.1, middle_block,
# output_blocks.0 and output_blocks.1, each with ff.net.0.proj [2560, 320] and ff.net.2 [320, 1280].
FF_MATRICES = 8
FF_WEIGHTS = 4 * (2560 * 320 + 320 * 1280)
RATIO = 0.01
MAX_PER_ROW_SELECTION = 4 * (2560 * int(RATIO * 320) + 320 * int(RATIO * 1280))


def erase_graph(ckpt, steps=3, ratio=RATIO, scope="ff", regex=""):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "CADAttribute", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "base": ["3", 0], "latent": ["4", 0],
            "objective": "concept_gap", "steps": steps, "guidance": 3.0, "seed": 0, "samples": 1,
            "scope": scope, "schedule": "single", "scope_regex": regex}},
        "6": {"class_type": "CADEraseMask", "inputs": {"attribution": ["5", 0], "ratio": ratio,
                                                       "granularity": "per_row"}},
        "7": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": ["6", 0], "strength": 1.0}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 0, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "cad_e2e/erase"}},
    }


def test_erase_workflow_end_to_end(comfy_server):
    from PIL import Image

    # The original MODEL sampled before and after the erase workflow (new latent multipliers: ComfyUI samples
    # again instead of serving its cache), with the erase graph's KSampler settings.
    def original_image(multiplier):
        tag = f"e2e_original_{multiplier:g}"
        done = comfy_server.run(sample_graph(comfy_server.ckpt_name, latent_multiplier=multiplier, tag=tag))
        assert done["status"] == "success", done["error"]
        return image_pixels(comfy_server, done["outputs"], tag)

    before = original_image(5.0)
    result = comfy_server.run(erase_graph(comfy_server.ckpt_name), timeout=600)
    assert result["status"] == "success", f"{result['error']}\n{comfy_server.log_tail()}"
    out = result["outputs"]
    image = out["10"]["images"][0]
    png = Image.open(io.BytesIO(comfy_server.view(image["filename"], image["subfolder"], image["type"])))
    assert png.size == (64, 64)
    erased = np.asarray(png.convert("RGB"))
    after = original_image(6.0)
    assert np.array_equal(before, after), "the original MODEL samples differently after the CAD nodes ran"
    assert np.abs(erased.astype(int) - before.astype(int)).max() > 0, "the erased MODEL samples like the original"

    summary = out["5"]["cad_summary"][0]
    assert summary["matrices"] == FF_MATRICES and summary["weights"] == FF_WEIGHTS
    assert summary["positive"] + summary["negative"] <= FF_WEIGHTS and summary["positive"] > 0
    assert summary["positive_mass"] > 0 > summary["negative_mass"]
    assert [b["block"] for b in summary["blocks"]] == ["input_blocks.1", "middle_block", "output_blocks.0",
                                                        "output_blocks.1"]
    assert summary["unet_calls"]["forward_backward"] == 3 and summary["unet_calls"]["forward_no_grad"] == 3

    mask = out["6"]["cad_mask"][0]
    assert 0 < mask["selected"] <= MAX_PER_ROW_SELECTION
    assert math.isclose(mask["percent_of_scope"], 100 * mask["selected"] / FF_WEIGHTS)
    progress = [m for m in result["messages"] if m["type"] == "progress" and m["data"]["node"] == "5"]
    assert progress and progress[-1]["data"]["value"] == progress[-1]["data"]["max"] == 3


def test_attribution_map_sends_its_rows_and_a_preview_over_the_websocket(comfy_server):
    from PIL import Image

    graph = erase_graph(comfy_server.ckpt_name)
    # a seed no other test uses: cached nodes send no outputs, and this test reads node 5's and 6's
    graph["5"]["inputs"]["seed"] = 4242
    graph["11"] = {"class_type": "CADAttributionMap", "inputs": {"attribution": ["5", 0], "mask": ["6", 0],
                                                                 "width": 512, "height": 256}}
    result = comfy_server.run(graph, timeout=600)
    assert result["status"] == "success", f"{result['error']}\n{comfy_server.log_tail()}"
    out = result["outputs"]
    chart = out["11"]["cad_map"][0]
    assert [(r["block"], r["positive_mass"]) for r in chart["rows"]] == [
        (b["block"], b["positive_mass"]) for b in out["5"]["cad_summary"][0]["blocks"]]
    assert sum(r["selected"] for r in chart["rows"]) == out["6"]["cad_mask"][0]["selected"] == chart["mask"]["selected"]
    preview = out["11"]["images"][0]
    png = Image.open(io.BytesIO(comfy_server.view(preview["filename"], preview["subfolder"], preview["type"])))
    assert png.size == (512, 256)

def test_object_info_has_tooltips_and_display_names(comfy_server):
    info = comfy_server.object_info()
    expected = {"CADAttribute": "CAD Attribute", "CADEraseMask": "CAD Erase Mask",
                "CADAmplifyMask": "CAD Amplify Mask", "ApplyCADMask": "Apply CAD Mask",
                "CADAttributionMap": "CAD Attribution Map"}
    for node_id, name in expected.items():
        node = info[node_id]
        assert node["display_name"] == name and node["category"] == "CAD" and node["description"]
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{input_name} has no tooltip"
        assert all(node["output_tooltips"]), node_id


@pytest.mark.parametrize("node,field,value", [
    ("6", "ratio", 0.0), ("6", "ratio", 1.5), ("5", "steps", 0), ("5", "objective", "nonsense"),
    ("5", "scope", "everything"), ("6", "granularity", "per_pixel")])
def test_out_of_range_widgets_fail_validation(comfy_server, node, field, value):
    graph = erase_graph(comfy_server.ckpt_name)
    graph[node]["inputs"][field] = value
    status, body = comfy_server.post_prompt(graph)
    assert status == 400
    errors = body["node_errors"][node]["errors"]
    assert any(field in (e.get("extra_info", {}).get("input_name", "") + e["details"]) for e in errors)


def expect_execution_error(server, graph, node, phrase):
    result = server.run(graph, timeout=600)
    assert result["status"] == "error", result["status"]
    assert result["error"]["node_id"] == node
    assert phrase in result["error"]["exception_message"], result["error"]["exception_message"]
    return result["error"]["exception_message"]


def test_scope_matching_nothing_is_a_clear_error(comfy_server):
    message = expect_execution_error(comfy_server, erase_graph(comfy_server.ckpt_name, scope="regex",
                                                               regex="no_such_layer"),
                                     "5", "matched no weights")
    assert "examples:" in message  # it lists what the model does have


def cad_dir(server):
    path = os.path.join(server.base_dir, "models", "cad")
    os.makedirs(path, exist_ok=True)
    return path


def test_mask_for_another_model_is_refused(comfy_server):
    key = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
    foreign = Mask({key: torch.tensor([0, 1, 2])}, {key: (320, 1280)}, "0123456789abcdef", MaskInfo(mode="erase"))
    save_mask(foreign, os.path.join(cad_dir(comfy_server), "foreign_mask.safetensors"))
    graph = erase_graph(comfy_server.ckpt_name)
    graph["6"] = {"class_type": "CADLoadMask", "inputs": {"file": "foreign_mask.safetensors"}}
    message = expect_execution_error(comfy_server, graph, "7", "made for another model")
    assert "0123456789abcdef" in message


def test_nan_attribution_is_refused(comfy_server):
    key = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
    scores = torch.zeros(320, 1280)
    scores[3, 4] = float("nan")
    save_attribution(Attribution({key: scores}, "0123456789abcdef", AttributionInfo(objective="concept_gap")),
                     os.path.join(cad_dir(comfy_server), "nan_attribution.safetensors"))
    graph = erase_graph(comfy_server.ckpt_name)
    graph["5"] = {"class_type": "CADLoadAttribution", "inputs": {"file": "nan_attribution.safetensors"}}
    expect_execution_error(comfy_server, graph, "5", "non-finite")


def test_save_and_load_round_trip_through_the_server(comfy_server):
    graph = erase_graph(comfy_server.ckpt_name)
    graph = {k: graph[k] for k in ("1", "2", "3", "4", "5")}
    graph["11"] = {"class_type": "CADSaveAttribution", "inputs": {"attribution": ["5", 0],
                                                                  "filename_prefix": "cad/roundtrip"}}
    result = comfy_server.run(graph, timeout=600)
    assert result["status"] == "success", result["error"]
    saved = result["outputs"]["11"]["cad_saved"][0]["file"]
    assert os.path.isfile(os.path.join(cad_dir(comfy_server), saved))

    load = erase_graph(comfy_server.ckpt_name)
    load["5"] = {"class_type": "CADLoadAttribution", "inputs": {"file": saved, "model": ["1", 0]}}
    result = comfy_server.run(load, timeout=600)
    assert result["status"] == "success", result["error"]
    assert result["outputs"]["5"]["cad_summary"][0]["weights"] == FF_WEIGHTS


def test_save_refuses_paths_outside_the_cad_folder(comfy_server):
    graph = erase_graph(comfy_server.ckpt_name)
    graph = {k: graph[k] for k in ("1", "2", "3", "4", "5")}
    graph["11"] = {"class_type": "CADSaveAttribution", "inputs": {"attribution": ["5", 0],
                                                                  "filename_prefix": "../../escape"}}
    status, body = comfy_server.post_prompt(graph)          # refused when queued, before anything runs
    assert status == 400 and list(body["node_errors"]) == ["11"], body
    assert "must be a relative name inside models/cad" in json.dumps(body["node_errors"]["11"])
    assert not os.path.exists(os.path.join(comfy_server.base_dir, "escape_00001_.safetensors"))


def test_load_of_a_file_not_in_the_cad_folder_fails_validation(comfy_server):
    graph = erase_graph(comfy_server.ckpt_name)
    graph["6"] = {"class_type": "CADLoadMask", "inputs": {"file": "../../outside.safetensors"}}
    status, body = comfy_server.post_prompt(graph)
    assert status == 400
    assert any("not one of" in e["details"] for e in body["node_errors"]["6"]["errors"])

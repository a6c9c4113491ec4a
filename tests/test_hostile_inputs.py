"""Hostile inputs an outside test found (a shared workflow or file from a stranger), through the real server where
the harm was done there: a scope_regex that hung the server, saves that overwrote files, a 50 MB metadata field
echoed into /history, identical prompts giving an all-zero attribution. (The fingerprint that now covers every
tensor is tested in tests/test_core_fingerprint.py.)"""
import json
import os
import threading
import time

import pytest
import torch

import folder_paths
from cad_pack.cad_core import AttributionRequest, CADError, Mask, MaskInfo, save_mask
from cad_pack.cad_core.serialization import _metadata
from cad_pack.nodes.bridge import bounded_matcher
from cad_pack.nodes.bridge.files import prefix_problem, save_new_file
from cad_pack.nodes.ui_text import FIELD_LIMIT

from robustness_graphs import attribute_graph, server_model_fingerprint
from test_robustness_files import cad_dir, put

# Classic catastrophic-backtracking patterns; the first is the one that hung the server.
BACKTRACKING = [r"^([a-z_.0-9]+)+!", r"(a|aa)+$", r"(\w|\w\w)+!", r"((a+)+)+b", r"(.*a){20}!"]


# ------------------------------------------------------------------------------------------- 1. scope_regex
@pytest.mark.parametrize("pattern", BACKTRACKING)
def test_bounded_matcher_stops_backtracking_patterns_quickly(pattern):
    keys = ["diffusion_model." + "a" * 60, "a" * 80 + "!", "diffusion_model." + "a_" * 40 + "weight"]
    started = time.monotonic()
    try:
        bounded_matcher(pattern, budget_s=0.5)(keys)
    except CADError as e:
        assert "takes more than 0.5 s" in str(e) and "simpler pattern" in str(e)
    assert time.monotonic() - started < 2.0


def test_bounded_matcher_matches_like_re_and_explains_bad_patterns():
    keys = ["diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
            "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"]
    assert bounded_matcher(r"attn2\.to_[kv]\.weight$")(keys) == keys[:1]
    with pytest.raises(CADError, match="not a valid regular expression"):
        bounded_matcher("(unclosed")


@pytest.mark.server
def test_backtracking_scope_regex_cannot_hang_the_server(comfy_server):
    """Each pattern ends with a clear error within seconds, and GET /queue answers all the while."""
    slowest, stop = [0.0], threading.Event()

    def poll_queue():
        while not stop.is_set():
            started = time.monotonic()
            status, _ = comfy_server.client.request("/queue", timeout=30)
            assert status == 200
            slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_queue, daemon=True)
    poller.start()
    try:
        for i, pattern in enumerate(BACKTRACKING):
            graph = attribute_graph(comfy_server.ckpt_name, latent_multiplier=7.0 + 0.1 * i, scope="regex")
            graph["5"]["inputs"]["scope_regex"] = pattern
            started = time.monotonic()
            status, body = comfy_server.post_prompt(graph)
            if status == 200:   # passed validation: the run must fail fast with the same kind of message
                entry = comfy_server.wait(body["prompt_id"], timeout=60)
                messages = dict(entry["status"]["messages"])
                message = messages["execution_error"]["exception_message"]
            else:
                message = json.dumps(body["node_errors"])
            assert time.monotonic() - started < 30, pattern
            assert "scope_regex" in message or "matched no weights" in message, (pattern, message)
    finally:
        stop.set()
        poller.join()
    assert slowest[0] < 5.0, f"GET /queue took {slowest[0]:.1f} s while a pattern was being matched"


# --------------------------------------------------------------------------------------------- 2. saves
@pytest.mark.parametrize("prefix,phrase", [("", "no file name"), (".", "no file name"), ("...", "no file name"),
                                           ("cad/", "no file name"), ("cad/..", "relative name"),
                                           ("bad\x00name", "control characters"), ("tab\tname", "control characters")])
def test_prefixes_that_cannot_name_a_file_are_refused(prefix, phrase):
    assert phrase in prefix_problem(prefix)
    assert prefix_problem("cad/cat_erase") is None and prefix_problem("my mask") is None


def test_a_save_never_replaces_an_existing_file(monkeypatch, tmp_path):
    """Even when ComfyUI's counter points at a taken name, the save moves on and the old file keeps its bytes."""
    monkeypatch.setattr(folder_paths, "get_folder_paths", lambda name: [str(tmp_path)])
    monkeypatch.setattr(folder_paths, "get_save_image_path",
                        lambda prefix, root: (str(tmp_path), "cad", 1, "", prefix))   # always counter 1
    mask = Mask({"w": torch.tensor([0])}, {"w": (2, 2)}, "v2-0000000000000000", MaskInfo(mode="erase"))
    first = save_new_file("cad", lambda p: save_mask(mask, p))
    before = open(first, "rb").read()
    second = save_new_file("cad", lambda p: save_mask(mask, p))
    assert os.path.basename(first) == "cad_00001_.safetensors" and os.path.basename(second) == "cad_00002_.safetensors"
    assert open(first, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["cad_00001_.safetensors", "cad_00002_.safetensors"]  # no leftovers


@pytest.mark.server
def test_empty_and_control_character_prefixes_are_refused_at_queue_time(comfy_server):
    folder = cad_dir(comfy_server)
    put(save_mask, Mask({"w": torch.tensor([0])}, {"w": (2, 2)}, "v2-0000000000000000", MaskInfo(mode="erase")),
        folder, "source_mask.safetensors")
    before = sorted(os.listdir(folder))
    for saver, what in (("CADSaveMask", "mask"), ("CADSaveAttribution", "attribution")):
        for prefix in ("", "...", "cad/\x00x"):
            graph = {"L": {"class_type": "CADLoadMask", "inputs": {"file": "source_mask.safetensors"}},
                     "S": {"class_type": saver, "inputs": {what: ["L", 0], "filename_prefix": prefix}}}
            status, body = comfy_server.post_prompt(graph)
            assert status == 400, (saver, prefix, body)
            errors = json.dumps(body["node_errors"]["S"])
            assert "no file name" in errors or "control characters" in errors, errors
    assert sorted(os.listdir(folder)) == before


# ------------------------------------------------------------------------------------ 3. echoed metadata
@pytest.mark.server
def test_a_huge_metadata_field_is_not_echoed_into_history(comfy_server):
    fingerprint = server_model_fingerprint(comfy_server)
    huge = "x" * (50 * 2**20)
    mask = Mask({"diffusion_model.out.2.weight": torch.tensor([0, 1])}, {"diffusion_model.out.2.weight": (4, 320)},
                fingerprint, MaskInfo(mode="erase", ratio=0.1, granularity=huge))
    put(save_mask, mask, cad_dir(comfy_server), "huge_field_mask.safetensors")
    graph = {"L": {"class_type": "CADLoadMask", "inputs": {"file": "huge_field_mask.safetensors"}},
             "S": {"class_type": "CADSaveMask", "inputs": {"mask": ["L", 0], "filename_prefix": "robustness/huge"}}}
    result = comfy_server.run(graph, timeout=300)
    assert result["status"] == "success", result["error"]
    status, raw = comfy_server.client.request(f"/history/{result['prompt_id']}")
    assert status == 200 and len(raw) < 64 * 1024, f"/history entry of {len(raw):,} bytes"
    shown = json.loads(raw)[result["prompt_id"]]["outputs"]["L"]
    assert shown["cad_mask"][0]["granularity"].startswith("x" * FIELD_LIMIT + "… (52,428,800 characters, cut)")
    assert shown["text"][0].endswith("characters, cut)") and len(shown["text"][0]) < FIELD_LIMIT + 100


def test_metadata_fields_stay_whole_in_the_file():
    """Only what is shown is cut: the mask itself keeps its metadata."""
    assert "granularity" in _metadata("mask", "fp", {"granularity": "y" * 10_000})["cad.meta"]


# ------------------------------------------------------------------ 4. identical prompts, all-zero scores
@pytest.mark.server
def test_identical_concept_and_base_prompts_are_refused_with_advice(comfy_server):
    graph = attribute_graph(comfy_server.ckpt_name, latent_multiplier=8.5)
    graph["3"]["inputs"]["text"] = graph["2"]["inputs"]["text"]          # base = the concept's prompt
    result = comfy_server.run(graph, timeout=300)
    assert result["status"] == "error"
    message = result["error"]["exception_message"]
    assert "'positive' and 'base' are the same conditioning" in message and "empty prompt" in message


def test_an_attribution_whose_every_score_is_zero_is_refused():
    from scripts.family_models import build, conditioning, empty_latent
    from cad_pack.nodes.bridge import attribute_model

    with pytest.raises(CADError, match="Every score of this attribution is exactly 0.*steps >= 2"):
        with torch.inference_mode():   # a flow model at T = 1: its only visit is at sigma 1, where alpha is 0
            attribute_model(build("flux", seed=0), conditioning("flux", 1), conditioning("flux", 2), empty_latent(),
                            AttributionRequest(steps=1))

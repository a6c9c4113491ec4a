"""AttributionInfo, MaskInfo and EditInfo: the typed records behind the files' `cad.meta` JSON. Every field survives a
round trip, files of older packs load with the same JSON written back, keys this pack does not know survive a save and
load, and a known key of the wrong type is refused with its name."""
import dataclasses
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cad_pack.cad_core import (Attribution, AttributionInfo, CADError, CADFileError, EditInfo, Mask, MaskInfo,
                               load_attribution, load_mask, save_attribution, save_mask)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
KEY = "diffusion_model.single_blocks.1.linear2.weight"

# cad.meta of an attribution made through the ComfyUI bridge today (ComfyUI on a CPU, one pass), in file order
TODAY = {"objective": "concept_gap", "steps": 2, "guidance": 3.0, "schedule": "single", "samples": 1,
         "parameterization": "flow_matching", "loss_scale": 1.0,
         "unet_calls": {"forward_backward": 2, "forward_no_grad": 2, "visits": 2, "objective_total": 1.0e-4},
         "seconds": 0.046, "scope": "regex", "pack_version": "0.10.0",
         "sampler": "ddim (deterministic), scheduler normal", "gradient_checkpointing": True, "checkpointing_reason": "auto: on, as always on a CPU",
         "latent_shape": [1, 16, 8, 8], "scope_regex": "single_blocks\\.1\\.linear2\\.weight$", "seed": 3}
# cad.meta as pack 0.4.0 wrote it (tests/data/flux_comfyui_0.3.75_attribution.safetensors): other key order
PACK_0_4 = {"objective": "concept_gap", "steps": 2, "guidance": 3.0, "schedule": "single", "samples": 1,
            "parameterization": "flow_matching", "loss_scale": 1.0,
            "unet_calls": {"forward_backward": 2, "forward_no_grad": 2, "visits": 2,
                           "objective_total": 0.00010482883953955024},
            "seconds": 0.061, "pack_version": "0.4.0", "scope": "regex",
            "scope_regex": "single_blocks\\.1\\.linear2\\.weight$", "seed": 3,
            "sampler": "ddim (deterministic), scheduler normal", "latent_shape": [1, 16, 8, 8]}
MASK_0_4 = {"mode": "erase", "ratio": 0.05, "granularity": "per_row", "scoped_weights": 20480,
            "objective": "concept_gap", "scope": "regex"}


def every_field(record_type, **given):
    """A record with every field set (none left None), so a round trip that drops one is seen."""
    samples = {str: "text", int: 7, float: 0.25, bool: True}
    values = {}
    for f in dataclasses.fields(record_type):
        if f.name == "extra" or f.name in given:
            continue
        hint = str(f.type)
        kind = next((t for t in (bool, int, float, str) if hint.startswith(t.__name__)), None)
        values[f.name] = samples[kind] if kind else None
    record = record_type(**values, **given)
    assert all(getattr(record, f.name) is not None for f in dataclasses.fields(record_type)), record
    return record


def full_attribution_info():
    return every_field(AttributionInfo, unet_calls={"forward_backward": 4, "objective_total": 0.5},
                       latent_shape=(1, 4, 8, 8), chunk_sizes=(3, 2), extra={"from_a_newer_pack": {"x": [1, 2]}})


def full_mask_info():
    inner = every_field(MaskInfo, combined_from=(), extra={"note": "inner"})
    return every_field(MaskInfo, combined_from=(inner, MaskInfo(mode="amplify")), extra={"unknown": [1, "two"]})


def full_edit_info():
    return every_field(EditInfo, erase=("a cat",), guide=("an animal",), keep=("a dog", "a car"),
                       located=("k.weight",), extra={"later": None})


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("make", [full_attribution_info, full_mask_info, full_edit_info])
def test_every_field_survives_the_json_round_trip(make):
    info = make()
    as_json = info.to_json_dict()
    assert type(info).from_json_dict(as_json) == info
    assert type(info).from_json_dict(json.loads(json.dumps(as_json))) == info     # through the file's text


def test_a_file_written_today_reads_back_to_the_same_json_in_the_same_order():
    info = AttributionInfo.from_json_dict(TODAY)
    assert info.extra == {} and info.latent_shape == (1, 16, 8, 8) and info.gradient_checkpointing is True
    assert list(info.to_json_dict().items()) == list(TODAY.items())


def test_files_of_older_packs_load_typed_and_write_back_the_same_json():
    info = AttributionInfo.from_json_dict(PACK_0_4)
    assert (info.objective, info.steps, info.guidance, info.seed) == ("concept_gap", 2, 3.0, 3)
    assert info.unet_calls["forward_backward"] == 2 and info.pack_version == "0.4.0" and info.extra == {}
    assert info.passes is None and info.memory_budget_mb is None and info.scope_notice is None
    assert info.to_json_dict() == PACK_0_4
    mask = MaskInfo.from_json_dict(MASK_0_4)
    assert (mask.mode, mask.ratio, mask.scoped_weights) == ("erase", 0.05, 20480)
    assert mask.to_json_dict() == MASK_0_4


def test_the_committed_cross_version_files_load_typed():
    for name in ("flux_comfyui_0.3.75", "flux_comfyui_0.3.75_v2"):
        attribution = load_attribution(os.path.join(DATA, f"{name}_attribution.safetensors"))
        mask = load_mask(os.path.join(DATA, f"{name}_mask.safetensors"))
        assert attribution.info.objective == "concept_gap" and attribution.info.latent_shape == (1, 16, 8, 8)
        assert attribution.info.scope_regex == r"single_blocks\.1\.linear2\.weight$" and attribution.info.extra == {}
        assert mask.info.mode == "erase" and mask.info.scoped_weights == 20480 and mask.info.extra == {}


def test_unknown_keys_survive_saving_and_loading_a_file(tmp_path):
    info = AttributionInfo(objective="concept_gap", scope="ff",
                           extra={"from_a_newer_pack": {"nested": [1, 2.5]}, "note": "kept"})
    path = save_attribution(Attribution({KEY: torch.tensor([[1.0, -2.0]])}, "fp", info),
                            str(tmp_path / "a.safetensors"))
    with safe_open(path, framework="pt") as f:
        stored = json.loads(f.metadata()["cad.meta"])
    assert stored == {"objective": "concept_gap", "scope": "ff", "from_a_newer_pack": {"nested": [1, 2.5]},
                      "note": "kept"}
    assert load_attribution(path).info == info
    mask = Mask({KEY: torch.tensor([1])}, {KEY: (1, 2)}, "fp", MaskInfo(mode="erase", extra={"newer": True}))
    again = save_mask(load_mask(save_mask(mask, str(tmp_path / "m.safetensors"))), str(tmp_path / "m2.safetensors"))
    assert load_mask(again).info == mask.info


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("record,given,phrase", [
    (AttributionInfo, {"steps": "twenty"}, "'steps' must be a whole number, got 'twenty'"),
    (AttributionInfo, {"steps": True}, "'steps' must be a whole number"),
    (AttributionInfo, {"guidance": "3"}, "'guidance' must be a number"),
    (AttributionInfo, {"objective": 3}, "'objective' must be text"),
    (AttributionInfo, {"gradient_checkpointing": "yes"}, "'gradient_checkpointing' must be true or false"),
    (AttributionInfo, {"unet_calls": [2, 2]}, "'unet_calls' must be an object of numbers"),
    (AttributionInfo, {"unet_calls": {"visits": "two"}}, "'unet_calls.visits' must be a number"),
    (AttributionInfo, {"latent_shape": [1, "x"]}, r"'latent_shape\[1\]' must be a whole number"),
    (AttributionInfo, {"chunk_sizes": 3}, "'chunk_sizes' must be a list of whole numbers"),
    (MaskInfo, {"scoped_weights": 1.5}, "'scoped_weights' must be a whole number"),
    (MaskInfo, {"combined_from": [{"ratio": "half"}]}, "'ratio' must be a number"),
    (MaskInfo, {"combined_from": ["erase"]}, r"'combined_from\[0\]' must be a mask record"),
    (EditInfo, {"erase": "a cat"}, "'erase' must be a list of text entries"),
])
def test_a_known_key_of_the_wrong_type_is_refused_by_name(record, given, phrase):
    with pytest.raises(CADError, match=phrase):
        record.from_json_dict(given)


def test_a_long_wrong_value_is_not_repeated_in_full():
    with pytest.raises(CADError) as e:
        AttributionInfo.from_json_dict({"scope": ["x" * 10_000]})
    assert "'scope' must be text" in str(e.value) and len(str(e.value)) < 200


def test_a_file_with_a_wrong_type_is_refused_naming_the_file_and_the_key(tmp_path):
    path = str(tmp_path / "bad.safetensors")
    save_file({KEY: torch.zeros(1, 2)}, path, metadata={
        "cad.kind": "attribution", "cad.format_version": "1", "cad.fingerprint": "fp", "cad.pack_version": "0.4.0",
        "cad.meta": json.dumps({**PACK_0_4, "seed": "three"})})
    with pytest.raises(CADFileError, match=r"bad\.safetensors: The attribution's 'seed' must be a whole number"):
        load_attribution(path)


def test_a_mask_file_nested_too_deeply_for_python_is_refused(tmp_path):
    nested = {"mode": "erase"}
    for _ in range(450):                                          # the JSON parser manages; Python's stack would not
        nested = {"mode": "erase", "combined_from": [nested]}
    path = str(tmp_path / "deep.safetensors")
    save_file({KEY: torch.tensor([0], dtype=torch.int32)}, path, metadata={
        "cad.kind": "mask", "cad.format_version": "1", "cad.fingerprint": "fp", "cad.pack_version": "0.10.0",
        "cad.meta": json.dumps(nested), "cad.shapes": json.dumps({KEY: [1, 2]})})
    with pytest.raises(CADFileError, match="deep.safetensors"):
        load_mask(path)


def test_records_are_checked_when_built_and_replaced():
    info = AttributionInfo(objective="concept_gap", latent_shape=[1, 4, 8, 8])
    assert info.latent_shape == (1, 4, 8, 8)                           # a list becomes the tuple a file reads back
    assert info.replace(steps=3).steps == 3 and info.steps is None     # a copy
    with pytest.raises(CADError, match="'steps'"):
        info.replace(steps="3")
    with pytest.raises(TypeError):
        info.replace(stepz=3)
    with pytest.raises(CADError, match="repeat known fields"):
        AttributionInfo(extra={"objective": "concept_gap"})
    with pytest.raises(TypeError, match="AttributionInfo"):
        Attribution({KEY: torch.ones(1)}, "fp", {"objective": "concept_gap"})
    with pytest.raises(TypeError, match="MaskInfo"):
        Mask({KEY: torch.tensor([0])}, {KEY: (1, 1)}, "fp", {"mode": "erase"})


def test_a_lora_saved_from_a_mask_keeps_the_mask_keys_as_an_edits_extra():
    info = EditInfo.from_json_dict(MASK_0_4)
    assert info.mode == "erase" and info.objective == "concept_gap"
    assert info.extra == {"ratio": 0.05, "granularity": "per_row", "scoped_weights": 20480, "scope": "regex"}

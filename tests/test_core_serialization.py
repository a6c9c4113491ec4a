"""cad_core.serialization: attribution/mask files round-trip exactly, and every way a file can be
unusable gives a CADFileError that says what is wrong."""
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cad_pack.cad_core import (
    FORMAT_VERSION, Attribution, AttributionInfo, CADError, CADFileError, Mask, MaskInfo, load_attribution, load_mask,
    read_kind, save_attribution, save_mask,
)

K1 = "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"
K2 = "diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight"
META = {"objective": "concept_gap", "scope": "ff", "steps": 20, "guidance": 3.0,
        "unet_calls": {"forward_backward": 20, "forward_no_grad": 20}, "prompt": "a photo of a café, ünïcode"}


@pytest.fixture
def att():
    g = torch.Generator().manual_seed(0)
    scores = {K1: torch.randn(8, 32, generator=g), K2: torch.randn(64, 8, generator=g) * 1e-30}  # tiny values too
    return Attribution(scores, "0123456789abcdef", AttributionInfo.from_json_dict(META))


@pytest.fixture
def mask():
    return Mask({K1: torch.tensor([0, 5, 255]), K2: torch.tensor([], dtype=torch.int64)},
                {K1: (8, 32), K2: (64, 8)}, "0123456789abcdef",
                MaskInfo(mode="erase", ratio=0.001, granularity="per_row", scoped_weights=768))


def rewrite(src, dst, **changes):
    """Copy a CAD file with some metadata entries changed (value None = removed)."""
    with safe_open(src, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file(tensors, dst, metadata=meta)
    return dst


# ---------------------------------------------------------------------------------------------- round trips
def test_attribution_round_trip(att, tmp_path):
    path = save_attribution(att, str(tmp_path / "sub" / "dir" / "a.safetensors"))   # creates folders
    assert read_kind(path) == "attribution"
    back = load_attribution(path, expected_fingerprint="0123456789abcdef")
    assert set(back.scores) == set(att.scores)
    for k in att.scores:
        assert back.scores[k].dtype == torch.float32
        assert torch.equal(back.scores[k], att.scores[k])                  # bit-equal
    assert back.fingerprint == att.fingerprint
    assert back.info == att.info and back.info.to_json_dict() == META


def test_attribution_round_trip_from_other_dtype(tmp_path):
    scores = {K1: torch.randn(4, 4, dtype=torch.float64)}
    back = load_attribution(save_attribution(Attribution(scores, "fp"), str(tmp_path / "a.safetensors")))
    assert back.scores[K1].dtype == torch.float32 and torch.equal(back.scores[K1], scores[K1].float())


def test_mask_round_trip(mask, tmp_path):
    path = save_mask(mask, str(tmp_path / "m.safetensors"))
    assert read_kind(path) == "mask"
    back = load_mask(path, expected_fingerprint="0123456789abcdef")
    assert set(back.indices) == set(mask.indices)
    for k in mask.indices:
        assert back.indices[k].dtype == torch.int64
        assert torch.equal(back.indices[k], mask.indices[k])
    assert back.shapes == mask.shapes
    assert back.fingerprint == mask.fingerprint
    assert back.info == mask.info
    assert back.count == 3 and back.scoped_weights == 768


# ---------------------------------------------------------------------------------------------- unusable files
def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.safetensors")
    for load in (load_attribution, load_mask, read_kind):
        with pytest.raises(CADFileError, match="not found"):
            load(p)


def test_truncated_file(att, tmp_path):
    path = save_attribution(att, str(tmp_path / "a.safetensors"))
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    for size in (len(data) // 2, len(data) - 1, 6):
        cut.write_bytes(data[:size])
        with pytest.raises(CADFileError) as e:
            load_attribution(str(cut))
        assert "cut.safetensors" in str(e.value) and "truncated" in str(e.value)


@pytest.mark.parametrize("content", [os.urandom(4096), b"# a text file, not a CAD file\n" * 20, b""])
def test_not_a_safetensors_file(tmp_path, content):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(content)
    with pytest.raises(CADFileError) as e:
        load_mask(str(p))
    assert "junk.safetensors" in str(e.value) and "not a readable safetensors file" in str(e.value)


def test_safetensors_without_cad_metadata(tmp_path):
    p = str(tmp_path / "lora.safetensors")
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, p, metadata={"ss_network_module": "networks.lora"})
    for load in (load_attribution, load_mask):
        with pytest.raises(CADFileError) as e:
            load(p)
        assert "not a CAD attribution or mask" in str(e.value) and "cad.kind" in str(e.value)
    p2 = str(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, p2)                      # no metadata at all
    with pytest.raises(CADFileError, match="not a CAD attribution or mask"):
        load_attribution(p2)


def test_wrong_kind(att, mask, tmp_path):
    a = save_attribution(att, str(tmp_path / "a.safetensors"))
    m = save_mask(mask, str(tmp_path / "m.safetensors"))
    with pytest.raises(CADFileError) as e:
        load_attribution(m)
    assert "is a CAD mask file" in str(e.value) and "attribution was expected" in str(e.value)
    assert "Load CAD Mask" in str(e.value)
    with pytest.raises(CADFileError) as e:
        load_mask(a)
    assert "is a CAD attribution file" in str(e.value) and "mask was expected" in str(e.value)
    bad = rewrite(a, str(tmp_path / "k.safetensors"), cad__kind="lora")
    with pytest.raises(CADFileError, match="unknown CAD kind 'lora'"):
        load_attribution(bad)


def test_format_version(att, tmp_path):
    a = save_attribution(att, str(tmp_path / "a.safetensors"))
    future = rewrite(a, str(tmp_path / "f.safetensors"), cad__format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(CADFileError) as e:
        load_attribution(future)
    assert f"format {FORMAT_VERSION + 1}" in str(e.value) and "Update the CAD node pack" in str(e.value)
    for value in ("one", None):
        bad = rewrite(a, str(tmp_path / "v.safetensors"), cad__format_version=value)
        with pytest.raises(CADFileError, match="format_version"):
            load_attribution(bad)
    zero = rewrite(a, str(tmp_path / "z.safetensors"), cad__format_version="0")
    with pytest.raises(CADFileError, match="invalid CAD file format version 0"):
        load_attribution(zero)


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", '"a string"', "null"])
def test_malformed_meta(att, mask, tmp_path, value):
    a = rewrite(save_attribution(att, str(tmp_path / "a.safetensors")), str(tmp_path / "a2.safetensors"), cad__meta=value)
    with pytest.raises(CADFileError, match="malformed 'cad.meta'"):
        load_attribution(a)
    m = rewrite(save_mask(mask, str(tmp_path / "m.safetensors")), str(tmp_path / "m2.safetensors"), cad__meta=value)
    with pytest.raises(CADFileError, match="malformed 'cad.meta'"):
        load_mask(m)


@pytest.mark.parametrize("value", [None, "{bad", '{"k": "not a list"}', '[1]'])
def test_malformed_mask_shapes(mask, tmp_path, value):
    m = rewrite(save_mask(mask, str(tmp_path / "m.safetensors")), str(tmp_path / "m2.safetensors"), cad__shapes=value)
    with pytest.raises(CADFileError, match="cad.shapes"):
        load_mask(m)


def test_fingerprint_mismatch(att, mask, tmp_path):
    a = save_attribution(att, str(tmp_path / "a.safetensors"))
    m = save_mask(mask, str(tmp_path / "m.safetensors"))
    for load, path in ((load_attribution, a), (load_mask, m)):
        with pytest.raises(CADFileError) as e:
            load(path, expected_fingerprint="fedcba9876543210")
        msg = str(e.value)
        assert "0123456789abcdef" in msg and "fedcba9876543210" in msg and "another model" in msg
        load(path)   # no expectation: loads


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_in_attribution_file(att, tmp_path, bad):
    att.scores[K1][3, 4] = bad
    path = save_attribution(att, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CADFileError) as e:
        load_attribution(path)
    assert "nan.safetensors" in str(e.value) and "non-finite" in str(e.value) and K1 in str(e.value)


def test_integer_scores_in_attribution_file(att, tmp_path):
    a = save_attribution(att, str(tmp_path / "a.safetensors"))
    with safe_open(a, framework="pt") as f:
        meta = dict(f.metadata())
    p = str(tmp_path / "int.safetensors")
    save_file({K1: torch.zeros(2, 2, dtype=torch.int32)}, p, metadata=meta)
    with pytest.raises(CADFileError, match="expected floats"):
        load_attribution(p)


@pytest.mark.parametrize("indices,phrase", [
    (torch.tensor([0, 256]), "outside"),          # K1 has 8 * 32 = 256 entries
    (torch.tensor([-3, 2]), "outside"),
    (torch.tensor([9, 2]), "unsorted"),
])
def test_invalid_mask_indices(mask, tmp_path, indices, phrase):
    mask.indices[K1] = indices
    path = save_mask(mask, str(tmp_path / "bad.safetensors"))     # saving does not validate; loading must
    with pytest.raises(CADFileError) as e:
        load_mask(path)
    assert "bad.safetensors" in str(e.value) and phrase in str(e.value) and K1 in str(e.value)


def test_mask_index_without_shape(mask, tmp_path):
    path = save_mask(mask, str(tmp_path / "m.safetensors"))
    shapes = json.dumps({K1: [8, 32]})                     # K2 indices present, shape missing
    bad = rewrite(path, str(tmp_path / "m2.safetensors"), cad__shapes=shapes)
    with pytest.raises(CADFileError, match="no recorded weight shape"):
        load_mask(bad)


def test_errors_are_cad_errors():
    assert issubclass(CADFileError, CADError) and issubclass(CADError, ValueError)

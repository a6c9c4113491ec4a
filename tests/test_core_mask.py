"""cad_core.mask: union, protect, scale_selected, summaries and validation."""
import pytest
import torch

from cad_pack.cad_core import (Attribution, AttributionInfo, CADError, Mask, MaskInfo, block_of, protect,
                               scale_selected, union)

K_IN1 = "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.2.weight"
K_IN1_PROJ = "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"
K_IN10 = "diffusion_model.input_blocks.10.1.transformer_blocks.0.ff.net.2.weight"   # sorts after input_blocks.2
K_IN2 = "diffusion_model.input_blocks.2.1.transformer_blocks.0.ff.net.2.weight"
K_MID = "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.2.weight"
K_OUT = "diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.2.weight"
SHAPES = {K_IN1: (4, 8), K_IN1_PROJ: (16, 4), K_IN2: (4, 8), K_IN10: (4, 8), K_MID: (6, 5), K_OUT: (4, 8)}


def ix(*values):
    return torch.tensor(values, dtype=torch.int64)


def mask(indices, fingerprint="fp-A", shapes=None, mode="erase"):
    return Mask(dict(indices), dict(shapes or SHAPES), fingerprint,
                MaskInfo(mode=mode, ratio=0.1, granularity="per_row"))


# ---------------------------------------------------------------------------------------------- union
def test_union_is_set_union_with_merged_shapes():
    a = Mask({K_IN1: ix(1, 5, 9), K_MID: ix(0)}, {K_IN1: (4, 8), K_MID: (6, 5)}, "fp-A", MaskInfo(mode="erase"))
    b = Mask({K_IN1: ix(2, 5, 31), K_OUT: ix(3, 4)}, {K_IN1: (4, 8), K_OUT: (4, 8)}, "fp-A", MaskInfo(mode="amplify"))
    u = union([a, b])
    u.check_valid()
    assert u.indices[K_IN1].tolist() == [1, 2, 5, 9, 31]
    assert u.indices[K_MID].tolist() == [0] and u.indices[K_OUT].tolist() == [3, 4]
    assert u.shapes == {K_IN1: (4, 8), K_MID: (6, 5), K_OUT: (4, 8)}
    assert u.count == 8
    assert u.fingerprint == "fp-A"
    assert u.info.scoped_weights == 32 + 30 + 32
    assert u.info.combined_from == (a.info, b.info)
    assert u.info.mode == "amplify+erase"
    # inputs are not modified
    assert a.indices[K_IN1].tolist() == [1, 5, 9] and b.indices[K_IN1].tolist() == [2, 5, 31]


def test_union_of_one_mask_is_that_mask():
    a = mask({K_IN1: ix(0, 3), K_OUT: ix(7)})
    u = union([a])
    assert {k: v.tolist() for k, v in u.indices.items()} == {K_IN1: [0, 3], K_OUT: [7]}


def test_union_refuses_different_models_and_shapes():
    with pytest.raises(CADError) as e:
        union([mask({K_IN1: ix(0)}, "fp-A"), mask({K_IN1: ix(1)}, "fp-B")])
    assert "fp-A" in str(e.value) and "fp-B" in str(e.value) and "another model" in str(e.value)
    with pytest.raises(CADError, match="shape"):
        union([Mask({K_IN1: ix(0)}, {K_IN1: (4, 8)}, "fp"), Mask({K_IN1: ix(0)}, {K_IN1: (8, 4)}, "fp")])
    with pytest.raises(CADError, match="at least one"):
        union([])


# ---------------------------------------------------------------------------------------------- protect
def test_protect_drops_exactly_the_components_positive_for_the_reference():
    g = torch.Generator().manual_seed(0)
    ref_scores = {K_IN1: torch.randn(4, 8, generator=g), K_MID: torch.randn(6, 5, generator=g)}
    ref_scores[K_IN1].view(-1)[4] = 0.0           # zero: does not carry the reference concept -> kept
    ref = Attribution(ref_scores, "fp-A", AttributionInfo(objective="concept_gap"))
    m = mask({K_IN1: ix(*range(0, 32, 2)), K_MID: ix(1, 2, 3, 29), K_OUT: ix(5, 6)})
    p = protect(m, ref)
    p.check_valid()
    dropped = 0
    for key, idx in m.indices.items():
        if key in ref_scores:
            vals = ref_scores[key].reshape(-1)
            expected = [int(i) for i in idx if not vals[i] > 0]
            dropped += sum(1 for i in idx if vals[i] > 0)
        else:
            expected = idx.tolist()                # the reference does not score it: untouched
        assert p.indices[key].tolist() == expected, key
    assert 4 in p.indices[K_IN1].tolist()
    assert dropped > 0 and p.count == m.count - dropped
    assert p.info.protected_dropped == dropped and p.info.protect_objective == "concept_gap"
    assert p.info.mode == "erase" and p.shapes == m.shapes and p.fingerprint == "fp-A"
    assert m.count == 16 + 4 + 2                   # the input mask is untouched


def test_protect_refuses_other_model():
    ref = Attribution({K_IN1: torch.ones(4, 8)}, "fp-B")
    with pytest.raises(CADError) as e:
        protect(mask({K_IN1: ix(0)}, "fp-A"), ref)
    assert "fp-A" in str(e.value) and "fp-B" in str(e.value)


def test_protect_refuses_an_attribution_of_another_scope_instead_of_protecting_nothing():
    ref = Attribution({K_OUT: torch.ones(4, 8)}, "fp-A")
    with pytest.raises(CADError, match="scores none of the weights"):
        protect(mask({K_IN1: ix(0), K_MID: ix(1)}, "fp-A"), ref)


# ---------------------------------------------------------------------------------------------- scale_selected
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_selected(dtype):
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(5, 7, generator=g).to(dtype)
    idx = ix(0, 3, 11, 34)
    untouched = torch.ones(35, dtype=torch.bool)
    untouched[idx] = False

    w = w0.clone()
    out = scale_selected(w, idx, 1.0)
    assert out.data_ptr() == w.data_ptr()                      # in place
    assert bool((w.view(-1)[idx] == 0).all())
    assert torch.equal(w.view(-1)[untouched], w0.view(-1)[untouched])   # bit-identical elsewhere

    w = w0.clone()
    scale_selected(w, idx, 0.5)
    assert torch.equal(w.view(-1)[idx], w0.view(-1)[idx] / 2)
    assert torch.equal(w.view(-1)[untouched], w0.view(-1)[untouched])

    w = w0.clone()
    scale_selected(w, idx.to(torch.int32), -1.0)                # negative strength amplifies: x2
    assert torch.equal(w.view(-1)[idx], w0.view(-1)[idx] * 2)

    w = w0.clone()
    scale_selected(w, ix(), 1.0)                                # empty selection: no-op
    assert torch.equal(w, w0)


def test_scale_selected_conv_weight():
    w0 = torch.randn(2, 3, 3, 3)
    w = w0.clone()
    scale_selected(w, ix(0, 53), 1.0)
    assert w[0, 0, 0, 0] == 0 and w[1, 2, 2, 2] == 0
    assert int((w != w0).sum()) == 2


# ---------------------------------------------------------------------------------------------- summaries
def test_block_of_and_per_block_counts():
    assert block_of(K_IN1) == "input_blocks.1"
    assert block_of(K_IN10) == "input_blocks.10"
    assert block_of(K_MID) == "middle_block"
    assert block_of(K_OUT) == "output_blocks.11"
    assert block_of("diffusion_model.double_blocks.3.img_mlp.0.weight") == "double_blocks.3"
    m = mask({K_IN1: ix(0, 1, 2), K_IN1_PROJ: ix(5), K_IN10: ix(31), K_MID: ix(3, 4)})
    rows = m.per_block()
    assert [r["block"] for r in rows] == ["input_blocks.1", "input_blocks.2", "input_blocks.10",
                                          "middle_block", "output_blocks.11"]
    by = {r["block"]: r for r in rows}
    assert by["input_blocks.1"] == {"block": "input_blocks.1", "selected": 4, "weights": 32 + 64}
    assert by["input_blocks.2"]["selected"] == 0 and by["input_blocks.2"]["weights"] == 32
    assert by["input_blocks.10"]["selected"] == 1
    assert by["middle_block"] == {"block": "middle_block", "selected": 2, "weights": 30}
    s = m.summary()
    total = sum(SHAPES[k][0] * SHAPES[k][1] for k in SHAPES)
    assert s["selected"] == 7 and s["scoped_weights"] == total and s["matrices_touched"] == 4
    assert s["percent_of_scope"] == pytest.approx(100 * 7 / total)
    assert "7 of" in m.summary_text() and f"{total:,}" in m.summary_text()


def test_scoped_weights_prefers_the_recorded_count():
    m = Mask({K_IN1: ix(0)}, {K_IN1: (4, 8)}, "fp", MaskInfo(scoped_weights=1000))
    assert m.scoped_weights == 1000
    assert Mask({K_IN1: ix(0)}, {K_IN1: (4, 8)}, "fp").scoped_weights == 32


def test_attribution_summary_counts_per_block():
    scores = {K_IN1: torch.tensor([[1.0, -2.0], [0.0, 3.0]]), K_IN1_PROJ: torch.tensor([-1.0, -1.0, 0.5]),
              K_OUT: torch.tensor([[2.0, 2.0, -4.0]])}
    s = Attribution(scores, "fp", AttributionInfo(objective="concept_gap", scope="ff")).summary()
    assert s["weights"] == 10 and s["matrices"] == 3
    assert s["positive"] == 5 and s["negative"] == 4   # 1, 3, 0.5, 2, 2 positive; -2, -1, -1, -4 negative
    assert s["positive_mass"] == pytest.approx(8.5) and s["negative_mass"] == pytest.approx(-8.0)
    by = {r["block"]: r for r in s["blocks"]}
    assert [r["block"] for r in s["blocks"]] == ["input_blocks.1", "output_blocks.11"]
    assert by["input_blocks.1"]["positive"] == 3 and by["input_blocks.1"]["negative"] == 3
    assert by["input_blocks.1"]["weights"] == 7
    assert by["output_blocks.11"]["positive_mass"] == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------- check_valid
@pytest.mark.parametrize("indices,shapes,phrase", [
    ({K_IN1: ix(0, 32)}, {K_IN1: (4, 8)}, "outside"),
    ({K_IN1: ix(-1, 3)}, {K_IN1: (4, 8)}, "outside"),
    ({K_IN1: ix(3, 1)}, {K_IN1: (4, 8)}, "unsorted"),
    ({K_IN1: ix(1, 1)}, {K_IN1: (4, 8)}, "repeated"),
    ({K_IN1: ix(1)}, {}, "no recorded weight shape"),
    ({K_IN1: torch.tensor([1.0])}, {K_IN1: (4, 8)}, "integer"),
    ({K_IN1: ix(1, 2).reshape(1, 2)}, {K_IN1: (4, 8)}, "1-D"),
])
def test_check_valid_catches(indices, shapes, phrase):
    with pytest.raises(CADError) as e:
        Mask(indices, shapes, "fp").check_valid()
    assert phrase in str(e.value) and K_IN1 in str(e.value)


def test_check_valid_accepts_good_masks():
    Mask({K_IN1: ix(0, 5, 31), K_MID: ix()}, {K_IN1: (4, 8), K_MID: (6, 5)}, "fp").check_valid()
    Mask({K_IN1: ix(0, 31).to(torch.int32)}, {K_IN1: (4, 8)}, "fp").check_valid()


# ---------------------------------------------------------------------------------------------- helpers
def test_split_flat_indices():
    from cad_pack.cad_core.mask import split_flat_indices
    sizes = {"a": 4, "b": 0, "c": 6, "d": 3}
    flat = ix(0, 3, 4, 9, 10, 12)
    out = split_flat_indices(flat, sizes)
    assert {k: v.tolist() for k, v in out.items()} == {"a": [0, 3], "b": [], "c": [0, 5], "d": [0, 2]}
    assert {k: v.tolist() for k, v in split_flat_indices(ix(), sizes).items()} == {k: [] for k in sizes}


def test_check_nonempty():
    Mask({K_IN1: ix(3)}, {K_IN1: (4, 8)}, "fp", MaskInfo(mode="erase")).check_nonempty()
    with pytest.raises(CADError) as e:
        Mask({K_IN1: ix()}, {K_IN1: (4, 8)}, "fp", MaskInfo(mode="erase")).check_nonempty()
    assert "selects no weights" in str(e.value) and "ratio" in str(e.value)


def test_random_mask():
    from cad_pack.cad_core import random_mask
    att = Attribution({K_IN1: torch.zeros(4, 8), K_MID: torch.zeros(6, 5), K_OUT: torch.zeros(3)}, "fp-R")
    m = random_mask(att, 20, torch.Generator().manual_seed(0))
    m.check_valid()
    assert m.count == 20 and m.fingerprint == "fp-R" and m.scoped_weights == 65
    assert m.shapes == {K_IN1: (4, 8), K_MID: (6, 5), K_OUT: (3,)}
    again = random_mask(att, 20, torch.Generator().manual_seed(0))
    assert {k: v.tolist() for k, v in again.indices.items()} == {k: v.tolist() for k, v in m.indices.items()}
    everything = random_mask(att, 65, torch.Generator().manual_seed(1))
    assert {k: v.tolist() for k, v in everything.indices.items()} == \
        {K_IN1: list(range(32)), K_MID: list(range(30)), K_OUT: [0, 1, 2]}
    with pytest.raises(CADError, match="Cannot draw 66"):
        random_mask(att, 66, torch.Generator().manual_seed(0))

"""cad_core.select_components: per_row / per_matrix / global top-k with the sign guard, checked
against brute-force selections written here."""
import math

import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, CADError, contrast, select_components, select_protected

SIGN = {"erase": 1.0, "amplify": -1.0}


def attribution(scores):
    return Attribution({k: v.float() for k, v in scores.items()}, "fp-sel",
                       AttributionInfo(objective="concept_gap", scope="ff"))


def rand_scores(seed=0, shapes=(("a.weight", (6, 8)), ("b.weight", (5, 20)), ("c.weight", (3, 4, 3, 3)))):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes}


def as_set(mask):
    return {(k, int(i)) for k, idx in mask.indices.items() for i in idx}


def brute_row(scores, mode, ratio):
    sign = SIGN[mode]
    rows = scores.reshape(scores.shape[0], -1)
    k = int(ratio * rows.shape[1])
    chosen = set()
    for r in range(rows.shape[0]):
        vals = [(float(sign * rows[r, c]), c) for c in range(rows.shape[1])]
        vals.sort(reverse=True)
        chosen |= {r * rows.shape[1] + c for v, c in vals[:k] if v > 0}
    return chosen


def brute_top(entries, k):
    """entries: list of (signed value, id); the k largest, positives only."""
    return {i for v, i in sorted(entries, reverse=True)[:k] if v > 0}


def assert_well_formed(mask):
    mask.check_valid()
    for idx in mask.indices.values():
        assert idx.dtype == torch.int64


# ---------------------------------------------------------------------------------------------- per_row
@pytest.mark.parametrize("mode", ["erase", "amplify"])
@pytest.mark.parametrize("ratio", [0.25, 0.2, 0.5, 1.0])
def test_per_row_matches_brute_force(mode, ratio):
    scores = rand_scores(1)
    mask = select_components(attribution(scores), mode, ratio, "per_row")
    assert_well_formed(mask)
    for key, s in scores.items():
        assert set(mask.indices[key].tolist()) == brute_row(s, mode, ratio), key
    assert mask.shapes == {k: tuple(v.shape) for k, v in scores.items()}
    assert mask.info.mode == mode and mask.info.granularity == "per_row" and mask.info.ratio == ratio
    assert mask.info.scoped_weights == sum(v.numel() for v in scores.values())


def test_per_row_count_is_int_ratio_times_in_features_per_row():
    # all positive, so the sign guard never bites: exactly k per row
    g = torch.Generator().manual_seed(2)
    s = torch.rand(7, 8, generator=g) + 0.1
    for ratio, k in [(0.25, 2), (0.2, 1), (0.124, 0), (0.001, 0), (1.0, 8)]:
        assert int(ratio * 8) == k
        mask = select_components(attribution({"w": s}), "erase", ratio, "per_row")
        rows = mask.indices["w"] // 8
        assert mask.count == 7 * k
        assert all(int((rows == r).sum()) == k for r in range(7))


def test_per_row_small_ratio_selects_nothing():
    s = torch.rand(16, 8) + 1.0  # every score positive and large
    mask = select_components(attribution({"w": s}), "erase", 0.001, "per_row")
    assert mask.count == 0 and mask.indices["w"].numel() == 0
    assert mask.summary()["selected"] == 0 and mask.summary()["matrices_touched"] == 0


def test_per_row_conv_scores_use_flattened_fan_in():
    g = torch.Generator().manual_seed(3)
    s = torch.rand(4, 3, 3, 3, generator=g) + 0.01      # fan-in 27 per output channel
    mask = select_components(attribution({"conv.weight": s}), "erase", 0.1, "per_row")
    assert_well_formed(mask)
    k = int(0.1 * 27)
    assert k == 2 and mask.count == 4 * k
    flat = s.reshape(4, -1)
    expected = {r * 27 + int(c) for r in range(4) for c in flat[r].topk(k).indices}
    assert set(mask.indices["conv.weight"].tolist()) == expected
    assert mask.shapes["conv.weight"] == (4, 3, 3, 3)


# ---------------------------------------------------------------------------------------------- sign guard
@pytest.mark.parametrize("granularity", ["per_row", "per_matrix", "global"])
def test_sign_guard(granularity):
    scores = rand_scores(4)
    scores["a.weight"][0, :4] = 0.0            # zeros are never selected by either mode
    att = attribution(scores)
    for mode in ("erase", "amplify"):
        mask = select_components(att, mode, 1.0, granularity)
        assert_well_formed(mask)
        for key, idx in mask.indices.items():
            vals = att.scores[key].reshape(-1)[idx]
            assert bool((vals > 0).all()) if mode == "erase" else bool((vals < 0).all())
        # with ratio 1 every score of the right sign is selected, and nothing else
        expected = sum(int(((s > 0) if mode == "erase" else (s < 0)).sum()) for s in att.scores.values())
        assert mask.count == expected


@pytest.mark.parametrize("granularity", ["per_row", "per_matrix", "global"])
def test_all_negative_scores_give_empty_erase_and_full_amplify(granularity):
    s = -(torch.rand(5, 10) + 0.1)
    att = attribution({"neg.weight": s})
    erase = select_components(att, "erase", 0.5, granularity)
    assert erase.count == 0 and erase.indices["neg.weight"].numel() == 0
    assert_well_formed(erase)
    amplify = select_components(att, "amplify", 0.5, granularity)
    assert amplify.count == (25 if granularity != "per_row" else 5 * 5)
    # the most negative ones
    if granularity != "per_row":
        assert set(amplify.indices["neg.weight"].tolist()) == set((-s).reshape(-1).topk(25).indices.tolist())


def test_rows_with_few_positives_select_only_positives():
    s = torch.tensor([[3.0, -1.0, -2.0, -3.0], [1.0, 2.0, 3.0, 4.0]])
    mask = select_components(attribution({"w": s}), "erase", 0.5, "per_row")   # k = 2 per row
    assert mask.indices["w"].tolist() == [0, 6, 7]


# ---------------------------------------------------------------------------------------------- per_matrix
@pytest.mark.parametrize("mode", ["erase", "amplify"])
@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.3])
def test_per_matrix_matches_brute_force(mode, ratio):
    scores = rand_scores(5)
    mask = select_components(attribution(scores), mode, ratio, "per_matrix")
    assert_well_formed(mask)
    for key, s in scores.items():
        flat = (SIGN[mode] * s).reshape(-1)
        k = int(ratio * flat.numel())
        expected = brute_top([(float(v), i) for i, v in enumerate(flat)], k)
        assert set(mask.indices[key].tolist()) == expected
        if int((flat > 0).sum()) >= k:
            assert mask.indices[key].numel() == k


# ---------------------------------------------------------------------------------------------- global
@pytest.mark.parametrize("mode", ["erase", "amplify"])
@pytest.mark.parametrize("ratio", [0.01, 0.07, 0.25])
def test_global_matches_brute_force(mode, ratio):
    scores = rand_scores(6)
    scores["b.weight"] *= 3.0        # one matrix dominates: a per-matrix rule would pick differently
    mask = select_components(attribution(scores), mode, ratio, "global")
    assert_well_formed(mask)
    total = sum(v.numel() for v in scores.values())
    entries = [(float(SIGN[mode] * v), (k, i)) for k, s in scores.items() for i, v in enumerate(s.reshape(-1))]
    k = int(ratio * total)
    assert as_set(mask) == brute_top(entries, k)
    assert mask.count == k          # plenty of scores of each sign here
    assert set(mask.indices) == set(scores)


def test_global_all_negative_erase_is_empty():
    att = attribution({"x": -torch.rand(3, 3) - 0.1, "y": -torch.rand(4) - 0.1})
    mask = select_components(att, "erase", 0.5, "global")
    assert mask.count == 0 and set(mask.indices) == {"x", "y"}
    assert_well_formed(mask)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("ratio", [0, 0.0, -1, 1.5, float("nan"), float("inf")])
def test_invalid_ratio(ratio):
    with pytest.raises(CADError) as e:
        select_components(attribution(rand_scores()), "erase", ratio, "per_row")
    assert "(0, 1]" in str(e.value) and "ratio" in str(e.value)


def test_invalid_mode_and_granularity():
    att = attribution(rand_scores())
    with pytest.raises(CADError) as e:
        select_components(att, "remove", 0.1)
    assert "'remove'" in str(e.value) and "erase" in str(e.value) and "amplify" in str(e.value)
    with pytest.raises(CADError) as e:
        select_components(att, "erase", 0.1, "per_column")
    msg = str(e.value)
    assert "'per_column'" in msg and all(g in msg for g in ("per_row", "per_matrix", "global"))


def test_unusable_attribution_refused():
    with pytest.raises(CADError, match="non-finite"):
        select_components(attribution({"w": torch.tensor([[1.0, math.nan]])}), "erase", 0.5)
    with pytest.raises(CADError, match="scores no weights"):
        select_components(attribution({}), "erase", 0.5)


# --------------------------------------------------------------------------------------------- contrast
def test_contrast_takes_the_largest_protected_share_off_the_concepts_share():
    scores = rand_scores(3)
    kept = [rand_scores(4), rand_scores(5)]
    out = contrast(attribution(scores), [attribution(k) for k in kept], "erase", 0.7)
    mass = sum(float(v.clamp(min=0).sum()) for v in scores.values())
    kept_mass = [sum(float(v.clamp(min=0).sum()) for v in k.values()) for k in kept]
    for key, s in scores.items():
        largest = torch.maximum(kept[0][key].clamp(min=0) / kept_mass[0], kept[1][key].clamp(min=0) / kept_mass[1])
        torch.testing.assert_close(out.scores[key], s / mass - 0.7 * largest)
    assert out.info.protect_weight == 0.7 and out.info.protected_concepts == 2


def test_contrast_for_amplify_divides_by_the_negative_mass_and_pushes_kept_components_up():
    target = attribution({"a.weight": torch.tensor([[-4.0, -3.0, 1.0, -1.0]])})
    kept = attribution({"a.weight": torch.tensor([[3.0, 0.0, 0.0, 0.0]])})
    out = contrast(target, kept, "amplify")
    torch.testing.assert_close(out.scores["a.weight"], torch.tensor([[0.5, -0.375, 0.125, -0.125]]))
    assert select_components(out, "amplify", 0.5, "per_row").indices["a.weight"].tolist() == [1, 3]


def test_contrast_refuses_other_models_bad_weights_and_a_concept_with_nothing_to_select():
    target = attribution(rand_scores(1))
    other = Attribution(rand_scores(2), "fp-other", AttributionInfo(objective="concept_gap"))
    with pytest.raises(CADError, match="same model"):
        contrast(target, other)
    for weight in (-1.0, float("nan"), True, 1000.0):
        with pytest.raises(CADError, match="protect_weight"):
            contrast(target, attribution(rand_scores(2)), "erase", weight)
    negative = attribution({k: -v.abs() for k, v in rand_scores(1).items()})
    with pytest.raises(CADError, match="no positive scores"):
        contrast(negative, attribution(rand_scores(2)))


def test_contrast_refuses_a_protect_attribution_of_another_scope_instead_of_protecting_nothing():
    target = attribution(rand_scores(1))
    elsewhere = attribution({"z.weight": torch.randn(4, 4)})
    with pytest.raises(CADError, match="scores none of the weights"):
        contrast(target, [attribution(rand_scores(2)), elsewhere])


def test_select_protected_applies_each_protect_mode_and_refuses_an_unknown_one():
    scores, kept = rand_scores(6), [rand_scores(7), rand_scores(8)]
    keep = [attribution(k) for k in kept]
    subtract = select_protected(attribution(scores), "erase", 0.25, "per_matrix", keep)
    assert as_set(subtract) == as_set(select_components(contrast(attribution(scores), keep), "erase", 0.25,
                                                        "per_matrix"))
    drop = select_protected(attribution(scores), "erase", 0.25, "per_matrix", keep, protect_mode="drop")
    vetoed = {(k, int(i)) for k, i in as_set(select_components(attribution(scores), "erase", 0.25, "per_matrix"))
              if not any(float(x[k].reshape(-1)[i]) > 0 for x in kept)}
    assert as_set(drop) == vetoed and subtract.info.protect_mode == "subtract" and drop.info.protected == 2
    assert as_set(select_protected(attribution(scores), "erase", 0.25)) == \
        as_set(select_components(attribution(scores), "erase", 0.25))
    with pytest.raises(CADError, match="Unknown protect_mode"):
        select_protected(attribution(scores), "erase", 0.25, keep=keep, protect_mode="veto")

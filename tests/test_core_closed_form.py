"""cad_core.closed_form: the closed-form edit against the normal equations written out here, what it maps and keeps,
its refusals, and located_keys' choice of matrices by CAD mass."""
import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, CADError
from cad_pack.cad_core.closed_form import closed_form_delta, closed_form_edit, located_keys


def rows(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_change_solves_the_normal_equations_of_the_objective():
    w, e, g, k = rows(7, 5, 0), rows(3, 5, 1), rows(3, 5, 2), rows(4, 5, 3)
    preserve, ridge, overshoot = 0.7, 0.05, 0.5
    t = g + overshoot * (g - e)
    # W' (E^T E + p K^T K + r I) = W (T^T E + p K^T K + r I), written out without the factored form
    a = e.T @ e + preserve * k.T @ k + ridge * torch.eye(5, dtype=torch.float64)
    expected = (w @ t.T @ e + preserve * w @ k.T @ k + ridge * w) @ torch.linalg.inv(a)
    delta = closed_form_delta(w.float(), e.float(), g.float(), k.float(), preserve, ridge, overshoot)
    assert delta.dtype == torch.float32
    torch.testing.assert_close(w + delta.double(), expected, atol=1e-5, rtol=1e-5)

    def objective(w_new):
        return float(((w_new @ e.T - w @ t.T) ** 2).sum() + preserve * ((w_new @ k.T - w @ k.T) ** 2).sum()
                     + ridge * ((w_new - w) ** 2).sum())
    # a minimum: any small step away from it costs more
    best = objective(w + delta.double())
    for seed in range(5):
        assert objective(w + delta.double() + 1e-3 * rows(7, 5, 10 + seed)) > best


def test_concept_rows_go_to_the_guide_and_kept_rows_stay_when_they_do_not_overlap():
    # concept rows span the first 2 input directions, kept rows the last 3: both can be met exactly
    w = rows(6, 5, 0).float()
    e = torch.zeros(2, 5)
    e[0, 0], e[1, 1] = 1.0, 1.0
    g = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.0], [0.2, 0.0, 0.0, 0.0, 0.0]])
    k = torch.cat([torch.zeros(3, 2), torch.eye(3)], dim=1)
    edited = w + closed_form_delta(w, e, g, k, preserve=1.0, ridge=1e-9, overshoot=0.0)
    torch.testing.assert_close(edited @ e.T, w @ g.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(edited @ k.T, w @ k.T, atol=1e-5, rtol=0)


def test_the_change_has_rank_at_most_the_number_of_concept_rows():
    w, e, g, k = rows(20, 12, 0).float(), rows(2, 12, 1).float(), rows(2, 12, 2).float(), rows(30, 12, 3).float()
    delta = closed_form_delta(w, e, g, k)
    assert int(torch.linalg.matrix_rank(delta.double(), atol=1e-6)) == 2


def test_overshoot_aims_past_the_guide():
    w = torch.eye(3)
    e, g = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    edited = w + closed_form_delta(w, e, g, None, ridge=1e-9, overshoot=1.0)
    torch.testing.assert_close(edited @ e.T, torch.tensor([[-1.0], [2.0], [0.0]]), atol=1e-5, rtol=0)


def test_an_edit_of_several_weights_solves_each_with_the_same_inputs():
    weights = {"a.weight": rows(4, 3, 0).float(), "b.weight": rows(6, 3, 1).float()}
    e, g, k = rows(2, 3, 2).float(), rows(2, 3, 3).float(), rows(2, 3, 4).float()
    out = closed_form_edit(weights, e, g, k, preserve=0.5)
    assert set(out) == set(weights)
    for key, w in weights.items():
        torch.testing.assert_close(out[key], closed_form_delta(w, e, g, k, preserve=0.5))


@pytest.mark.parametrize("case, message", [
    ("weight_1d", "2-D weight"), ("wrong_width", "rows of width 5"), ("unpaired_guide", "row for row"),
    ("nan", "NaN or inf"), ("negative_preserve", "preserve must be"), ("nan_overshoot", "overshoot must be"),
    ("no_keep_no_ridge", "ridge must be > 0"), ("kept_wrong_width", "kept concepts' inputs"),
])
def test_bad_inputs_are_refused_with_what_was_expected(case, message):
    w, e, g, k = rows(4, 5, 0).float(), rows(2, 5, 1).float(), rows(2, 5, 2).float(), rows(3, 5, 3).float()
    kwargs = {}
    if case == "weight_1d":
        w = w[0]
    elif case == "wrong_width":
        e = rows(2, 4, 1).float()
    elif case == "unpaired_guide":
        g = rows(3, 5, 2).float()
    elif case == "nan":
        e[0, 0] = float("nan")
    elif case == "negative_preserve":
        kwargs["preserve"] = -1.0
    elif case == "nan_overshoot":
        kwargs["overshoot"] = float("nan")
    elif case == "no_keep_no_ridge":
        k, kwargs["ridge"] = None, 0.0
    elif case == "kept_wrong_width":
        k = rows(3, 6, 3).float()
    with pytest.raises(CADError, match=message):
        closed_form_delta(w, e, g, k, **kwargs)
    with pytest.raises(CADError, match="no matrices"):
        closed_form_edit({}, e, g, k)


def attribution(masses):
    """One matrix per entry, with that much positive mass (and some negative mass that must not count)."""
    return Attribution({k: torch.tensor([[m, -5.0]]) for k, m in masses.items()}, "fp", AttributionInfo(objective="concept_gap"))


def test_located_keys_takes_the_fewest_matrices_that_hold_the_share_largest_first():
    att = attribution({"a": 1.0, "b": 6.0, "c": 3.0, "d": 0.0})
    assert located_keys(att, ["a", "b", "c", "d"], 0.6) == ["b"]
    assert located_keys(att, ["a", "b", "c", "d"], 0.9) == ["b", "c"]
    assert located_keys(att, ["a", "b", "c", "d"], 1.0) == ["b", "c", "a"]
    # only the keys offered compete
    assert located_keys(att, ["a", "d"], 0.5) == ["a"]


def test_located_keys_refuses_what_cannot_locate_anything():
    att = attribution({"a": 0.0, "b": 0.0})
    with pytest.raises(CADError, match="no positive scores"):
        located_keys(att, ["a", "b"])
    with pytest.raises(CADError, match="does not score"):
        located_keys(attribution({"a": 1.0}), ["a", "z"])
    with pytest.raises(CADError, match="mass_share"):
        located_keys(attribution({"a": 1.0}), ["a"], 0.0)

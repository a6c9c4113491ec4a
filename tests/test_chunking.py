"""Memory budget: what one differentiated step keeps for backward is measured first; a scope whose per-pass state
(8 bytes per weight) exceeds what that leaves of memory_budget_mb is attributed in chunks, one pass per chunk over
the same trajectories; the joined alpha equals the one-pass alpha."""
import math
import re

import pytest
import torch

from cad_pack.cad_core import Attribution, AttributionInfo, AttributionRequest, CADError, resolve_scope
from cad_pack.cad_core.budget import BYTES_PER_SCOPED_WEIGHT, MB, join_chunks, plan_chunks, scope_bytes
from cad_pack.nodes.attribute_node import CADAttribute
from cad_pack.nodes.bridge import attribute_model, patchable_weights

from scripts.family_models import build, conditioning, empty_latent

STEPS = 2


# ------------------------------------------------------------------------------------------ planning
def shapes(*sizes):
    return [(f"w{i}", (n, 1)) for i, n in enumerate(sizes)]


def test_plan_without_budget_is_one_chunk():
    assert plan_chunks(shapes(10, 20, 30), 0) == [["w0", "w1", "w2"]]
    assert plan_chunks(shapes(10, 20, 30), None) == [["w0", "w1", "w2"]]


def test_plan_fills_chunks_in_model_order():
    b = BYTES_PER_SCOPED_WEIGHT
    # budget of 40 weights: [10, 20] | [30] | [25, 5, 10] | [40]
    assert plan_chunks(shapes(10, 20, 30, 25, 5, 10, 40), 40 * b) == [["w0", "w1"], ["w2"], ["w3", "w4", "w5"], ["w6"]]
    assert scope_bytes([(10, 1), (2, 3)]) == 16 * b


def test_plan_refuses_a_budget_below_the_largest_matrix():
    with pytest.raises(CADError, match=r"too small.*'w1' \(3000000, 1\).*at least 23 MB"):
        plan_chunks(shapes(10, 3_000_000), 5 * MB)


def test_join_refuses_overlap_and_other_models():
    a = Attribution({"k": torch.ones(2)}, "f1", AttributionInfo(unet_calls={}))
    with pytest.raises(CADError, match="overlap"):
        join_chunks([a, Attribution({"k": torch.ones(2)}, "f1")])
    with pytest.raises(CADError, match="disagree about the model"):
        join_chunks([a, Attribution({"j": torch.ones(2)}, "f2")])


# ------------------------------------------------------------------------------------------ passes
def scoped(mp, scope):
    """The (key, shape) pairs `scope` selects, in model order."""
    shapes = dict(patchable_weights(mp))
    return [(k, shapes[k]) for k in resolve_scope(patchable_weights(mp), scope)]


def expected_passes(mp, scope, budget_bytes):
    """Greedy count written out independently: start a new pass when the next matrix would overflow."""
    sizes = [math.prod(s) * 8 for k, s in patchable_weights(mp) if k in set(resolve_scope(patchable_weights(mp), scope))]
    passes, used = 1, 0
    for n in sizes:
        if used and used + n > budget_bytes:
            passes, used = passes + 1, 0
        used += n
    return passes


def run(mp, family, budget_mb, objective="concept_gap", progress=None, **fields):
    """fields: more of the request's fields (scope, scope_regex, gradient_checkpointing)."""
    request = AttributionRequest(objective=objective, steps=STEPS, seed=5, memory_budget_mb=budget_mb, **fields)
    with torch.inference_mode():
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), empty_latent(), request,
                               on_progress=progress)


def activation_mb(mp, family, objective="concept_gap", **kw):
    """What the budgeted run measured one differentiated step to keep for backward (a budget that fits anything)."""
    return run(mp, family, 1_000_000, objective, **kw).info.activation_mb


@pytest.mark.parametrize("family,scope,objective", [("sd15", "ff", "concept_gap"), ("flux", "ff+attention", "concept_likelihood")])
def test_chunked_alpha_equals_unchunked_alpha(family, scope, objective):
    mp = build(family, seed=2, scale=0.1)
    whole = run(mp, family, 0, objective, scope=scope)
    total = scope_bytes([s.shape for s in whole.scores.values()])
    activation = activation_mb(mp, family, objective, scope=scope)
    assert activation > 0
    budget_mb = activation + total / MB / 3.5            # about four passes
    seen = []
    chunked = run(mp, family, budget_mb, objective, progress=lambda d, t: seen.append((d, t)), scope=scope)
    assert chunked.info.activation_mb == activation   # the same measurement, and checkpointing on either way
    room = (budget_mb - activation) * MB
    passes = expected_passes(mp, scope, room)
    assert passes >= 3
    assert chunked.info.passes == passes == len(plan_chunks(scoped(mp, scope), budget_mb * MB, activation * MB))
    assert list(chunked.scores) == list(whole.scores)          # model order, same keys
    for k, s in whole.scores.items():
        torch.testing.assert_close(chunked.scores[k], s, rtol=1e-6, atol=0)
    calls, one = chunked.info.unet_calls, whole.info.unet_calls
    assert calls["forward_backward"] == passes * one["forward_backward"]
    assert calls["forward_no_grad"] == passes * one["forward_no_grad"]
    assert calls["objective_total"] == pytest.approx(one["objective_total"], rel=1e-6)
    assert chunked.info.scope == scope and chunked.info.peak_scope_mb + activation <= budget_mb
    assert len(chunked.points) == len(whole.points)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == seen[-1][1]


def test_budget_that_fits_runs_once_and_bad_budgets_are_refused():
    mp = build("sd15", seed=2)
    once = run(mp, "sd15", 10_000)
    assert once.info.passes is None and once.info.unet_calls["forward_backward"] == STEPS
    assert once.info.activation_mb > 0 and once.info.memory_budget_mb == 10_000
    with pytest.raises(CADError, match="too small"):
        run(mp, "sd15", 0.01)
    with pytest.raises(CADError, match="memory_budget_mb must be 0"):
        run(mp, "sd15", -1)


def test_a_budget_the_scope_fits_but_the_activations_do_not_is_refused():
    """One matrix's state fits the budget (the budget before it covered activations ran this), but not together
    with what a step keeps for backward."""
    mp = build("sd15", seed=2)
    key, shape = max(((k, s) for k, s in patchable_weights(mp) if ".ff." in k), key=lambda ks: math.prod(ks[1]))
    one_matrix = dict(scope="regex", scope_regex=re.escape(key.removeprefix("diffusion_model.")))
    state_mb = math.prod(shape) * BYTES_PER_SCOPED_WEIGHT / MB
    activation = activation_mb(mp, "sd15", gradient_checkpointing="on", **one_matrix)
    budget = activation + state_mb / 2
    assert state_mb < budget < activation + state_mb
    with pytest.raises(CADError, match=r"keeps [\d.]+ MB for its backward pass.*Set at least"):
        run(mp, "sd15", budget, gradient_checkpointing="on", **one_matrix)


def test_node_passes_the_budget_through():
    mp = build("sd15", seed=2)
    per_weight = sum(math.prod(s) for k, s in patchable_weights(mp)
                     if k in set(resolve_scope(patchable_weights(mp), "ff"))) * BYTES_PER_SCOPED_WEIGHT
    assert 1 * MB < per_weight < 2 * MB
    activation = activation_mb(mp, "sd15")
    budget = math.ceil(activation + 0.5)    # the node takes whole MB; leaves 0.5-1.5 MB for the scope: 2 passes or more
    with torch.inference_mode():
        out = CADAttribute.execute(model=mp, positive=conditioning("sd15", 1), base=conditioning("sd15", 2),
                                   latent=empty_latent(), objective="concept_gap", steps=STEPS, guidance=3.0, seed=5,
                                   samples=1, scope="ff", schedule="single", memory_budget_mb=budget)
    info = out.args[0].info
    assert info.passes == expected_passes(mp, "ff", (budget - activation) * MB) >= 2
    assert info.memory_budget_mb == budget and info.activation_mb == activation

"""cad_core.request and cad_core.driver without ComfyUI: a request's defaults and checks, and the driver carrying one
request to one attribution on a plain torch backend (one pass, or chunks under a budget that join to the one-pass
scores), the scope resolved once, progress over all passes, and the refusals."""
import math

import pytest
import torch
from torch import nn

from cad_pack.cad_core import AttributionRequest, CADError, attribute
from cad_pack.cad_core.driver import TorchModuleBackend, attribute_request, scoped_keys
from cad_pack.cad_core.request import DEFAULT_REQUEST, default

SIGMAS = [4.0, 2.0, 0.8, 0.0]


class Denoiser(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)

    def forward(self, x, sigma, cond):
        s = torch.as_tensor(sigma).to(x).reshape(1, 1).expand(x.shape[0], 1)
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(torch.cat([x, s, cond.expand(x.shape[0], 2)], 1))))))


CONCEPT, BASE = torch.tensor([[1.0, -0.5]]), torch.zeros(1, 2)


def backend_for(module, request, passes, measure=None, zero=False):
    """A TorchModuleBackend whose passes run cad_core.attribute on `module`; `passes` records each pass's keys."""
    def run(keys, checkpointing, on_progress):
        passes.append(list(keys))
        concept = (lambda x, s: 0 * module(x, s, CONCEPT)) if zero else (lambda x, s: module(x, s, CONCEPT))
        return attribute(module, concept, lambda x, s: module(x, s, BASE), sigmas=torch.tensor(SIGMAS),
                         parameterization="variance_exploding", objective=request.objective, scope=keys,
                         guidance=request.guidance, samples=request.samples, seed=request.seed, noise_shape=(1, 3),
                         on_progress=on_progress, refuse_all_zero=False)
    backend = TorchModuleBackend(module, run, measure)
    backend.checkpointing = lambda setting: {"auto": "auto", "on": True, "off": False}[setting]  # as a UNet's
    return backend


class Measured:
    """What a differentiated step keeps: a fixed number of bytes, more without checkpointing."""

    def __init__(self, nbytes):
        self.nbytes = nbytes

    def peak_bytes(self, checkpointed, forwards=1):
        return self.nbytes // (2 if checkpointed else 1)


def test_a_request_owns_the_defaults_the_node_shows():
    r = AttributionRequest()
    assert (r.objective, r.scope, r.steps, r.guidance, r.seed, r.samples, r.schedule) == \
        ("concept_gap", "ff", 20, 3.0, 0, 1, "single")
    assert r.memory_budget_mb == 0 and r.gradient_checkpointing == "auto" and r.scope_regex == ""
    assert default("steps") == DEFAULT_REQUEST.steps == 20
    from cad_pack.nodes.attribute_node import CADAttribute
    inputs = {**CADAttribute.INPUT_TYPES()["required"], **CADAttribute.INPUT_TYPES()["optional"]}
    for name in ("objective", "scope", "steps", "guidance", "seed", "samples", "schedule", "memory_budget_mb",
                 "gradient_checkpointing", "scope_regex"):
        assert inputs[name][1]["default"] == default(name), name


@pytest.mark.parametrize("field, value, message", [
    ("objective", "nope", "Unknown objective 'nope'. Expected one of"), ("scope", "everything", "Unknown scope 'ev"),
    ("schedule", "fast", "Unknown schedule 'fast'"), ("scope", None, "Unknown scope 'None'"),
    ("gradient_checkpointing", "maybe", "gradient_checkpointing must be one of auto, on, off, got 'maybe'"),
    ("steps", 0, "steps must be a whole number from 1"), ("steps", 2.5, "steps must be a whole number"),
    ("steps", True, "steps must be a whole number"), ("seed", -1, "seed must be a whole number from 0"),
    ("samples", 0, "samples must be"), ("guidance", float("nan"), "guidance must be a number from 0"),
    ("guidance", float("inf"), "guidance must be"), ("guidance", -1.0, "guidance must be"),
    ("memory_budget_mb", -5, "memory_budget_mb must be 0 \\(no limit\\)"), ("scope_regex", None, "scope_regex must be text"),
])
def test_a_request_refuses_a_bad_field_saying_what_was_expected(field, value, message):
    with pytest.raises(CADError, match=message):
        AttributionRequest(**{field: value})


def test_scope_regex_needs_a_pattern_and_replace_checks_again():
    with pytest.raises(CADError, match="needs a pattern in scope_regex"):
        AttributionRequest(scope="regex")
    r = AttributionRequest(scope="regex", scope_regex="fc1")
    assert r.replace(steps=3).steps == 3 and r.steps == 20      # frozen: replace makes a new one
    with pytest.raises(CADError, match="steps must be"):
        r.replace(steps=-1)
    with pytest.raises(Exception):
        r.steps = 5


def test_one_pass_without_a_budget_scores_the_scope_as_attribute_does():
    module, passes = Denoiser(), []
    request = AttributionRequest(scope="regex", scope_regex=r"fc[12]\.weight", steps=3, guidance=2.0, seed=4)
    result = attribute_request(backend_for(module, request, passes), request)
    assert passes == [["fc1.weight", "fc2.weight"]]
    direct = attribute(module, lambda x, s: module(x, s, CONCEPT), lambda x, s: module(x, s, BASE),
                       sigmas=torch.tensor(SIGMAS), parameterization="variance_exploding", scope=passes[0],
                       guidance=2.0, seed=4, noise_shape=(1, 3))
    for key in passes[0]:
        torch.testing.assert_close(result.scores[key], direct.scores[key])
    assert result.info.scope == "regex" and result.info.scope_regex == r"fc[12]\.weight"
    assert result.info.seed == 4 and result.info.memory_budget_mb is None


def test_a_budget_splits_the_scope_into_passes_that_join_to_the_one_pass_scores():
    module = Denoiser(1)
    request = AttributionRequest(scope="all_linear", steps=3)
    whole = attribute_request(backend_for(module, request, []), request)
    # each matrix needs 8 bytes per weight; 600 bytes of room fits fc1 (48 w) or fc2 (64 w) but not both
    passes, seen = [], []
    budgeted = request.replace(memory_budget_mb=(1000 + 600) / 2 ** 20)
    chunked = attribute_request(backend_for(module, budgeted, passes, measure=lambda keys: Measured(2000)), budgeted,
                                on_progress=lambda done, total: seen.append((done, total)))
    assert passes == [["fc1.weight"], ["fc2.weight"], ["fc3.weight"]]
    assert chunked.info.passes == 3 and chunked.info.chunk_sizes == (1, 1, 1)
    # auto planned both ways: with checkpointing the step keeps half, so it won
    assert "memory budget: on, 3 pass(es)" in chunked.info.checkpointing_reason
    assert list(chunked.scores) == list(whole.scores)
    for key, s in whole.scores.items():
        torch.testing.assert_close(chunked.scores[key], s)
    totals = {t for _, t in seen}
    assert len(totals) == 1 and seen[-1][0] == totals.pop()          # one progress bar over all passes
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_the_scope_is_resolved_once_per_request():
    module, calls = Denoiser(), []
    request = AttributionRequest(scope="all_linear", steps=2)
    backend = backend_for(module, request, [])
    listing = backend.patchable_weights
    backend.patchable_weights = lambda: calls.append(1) or listing()
    attribute_request(backend, request)
    assert len(calls) == 1


def test_refusals_all_zero_budget_too_small_and_empty_scope():
    module = Denoiser()
    request = AttributionRequest(scope="all_linear", steps=2)
    with pytest.raises(CADError, match="Every score of this attribution is exactly 0"):
        attribute_request(backend_for(module, request, [], zero=True), request)
    tight = request.replace(memory_budget_mb=100 / 2 ** 20)
    with pytest.raises(CADError, match="memory_budget_mb .* is too small"):
        attribute_request(backend_for(module, tight, [], measure=lambda keys: Measured(0)), tight)
    nothing = AttributionRequest(scope="regex", scope_regex="no_such_layer")
    with pytest.raises(CADError, match="no_such_layer"):
        scoped_keys(backend_for(module, nothing, []), nothing)
    budget_without_measure = request.replace(memory_budget_mb=1)
    with pytest.raises(CADError, match="cannot measure"):
        attribute_request(backend_for(module, budget_without_measure, []), budget_without_measure)


def test_every_field_has_a_place_in_the_record():
    assert math.isfinite(DEFAULT_REQUEST.guidance)
    assert set(DEFAULT_REQUEST.as_meta()) == {"objective", "scope", "scope_regex", "steps", "guidance", "seed",
                                               "samples", "schedule", "memory_budget_mb", "gradient_checkpointing"}

"""cad_core attribution: alpha = w * dJ/dw checked against finite differences on a toy denoiser,
ablation checks (verify_ablation / faithfulness), UNet call counts, gradient hygiene, fp32 scores.

Everything runs on a tiny MLP denoiser `(x_t, sigma, cond) -> x0` built here, in float64 where we
compare with finite differences. The reference quantities (trajectories, J) are computed by this
file's own code, not by cad_core's, so a mistake in cad_core's trajectory or objective shows up.
"""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from cad_pack.cad_core import (
    CADError, FlowMatching, TrajectoryPlan, VarianceExploding, attribute, faithfulness, predicted_change, scale_selected, select_components,
    verify_ablation,
)
from cad_pack.cad_core.trajectory import loss_scale_for

DIM, COND, HIDDEN = 4, 3, 10
SCOPE = ("fc1.weight", "fc2.weight", "fc3.weight")          # biases stay out of scope on purpose
GUIDANCE = 2.5
SIGMAS = {  # descending, last entry 0, as TrajectoryPlan expects
    "variance_exploding": [4.0, 2.0, 0.8, 0.3, 0.0],
    "flow_matching": [1.0, 0.75, 0.45, 0.2, 0.0],
}


# ----------------------------------------------------------------------------------------------
# the toy model and an independent re-implementation of the sampling/objective maths
# ----------------------------------------------------------------------------------------------
class ToyDenoiser(nn.Module):
    """x0 = MLP([x_t * c_in, sigma, cond]); cond is a vector (the 'prompt'), zeros = empty prompt."""

    def __init__(self, seed=0, dtype=torch.float64, ve=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.ve = ve
        self.fc1 = nn.Linear(DIM + 1 + COND, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, HIDDEN)
        self.fc3 = nn.Linear(HIDDEN, DIM)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.8 if p.ndim == 2 else 0.2))
        self.to(dtype)

    def forward(self, x_t, sigma, cond):
        sigma = torch.as_tensor(sigma).to(x_t)
        c_in = 1.0 / torch.sqrt(sigma ** 2 + 1.0) if self.ve else torch.ones_like(sigma)
        feats = torch.cat([x_t * c_in, sigma.expand(x_t.shape[0], 1), cond.to(x_t).expand(x_t.shape[0], COND)], dim=1)
        h = torch.tanh(self.fc1(feats))
        h = torch.tanh(self.fc2(h))
        return self.fc3(h)


CONCEPT_COND = torch.tensor([[1.0, -0.5, 0.7]], dtype=torch.float64)
BASE_COND = torch.zeros(1, COND, dtype=torch.float64)


def make_noise(sample, restart, dtype=torch.float64):
    g = torch.Generator().manual_seed(7919 * sample + 31 * restart + 1)
    return torch.randn(1, DIM, generator=g, dtype=torch.float64).to(dtype)


# Independent formulas (deliberately not cad_core.noise):
def add_noise(kind, x0, eps, s):
    return x0 + s * eps if kind == "variance_exploding" else (1 - s) * x0 + s * eps


def eps_of(kind, x_t, x0, s):
    return (x_t - x0) / s if kind == "variance_exploding" else (x_t - (1 - s) * x0) / s


def guided_step(kind, x, x0c, x0b, s, s_next, guidance=GUIDANCE):
    x0 = x0b + guidance * (x0c - x0b)
    return add_noise(kind, x0, eps_of(kind, x, x0, s), s_next)


def run(model, params, x, s, cond):
    return functional_call(model, params, (x, s, cond))


def gap_visits(model, params, kind, sigmas, schedule, samples):
    """The (x_t, sigma) points the concept-gap objective is evaluated at, from our own sampler."""
    visits = []
    T = len(sigmas) - 1
    with torch.no_grad():
        for n in range(samples):
            if schedule == "single":
                x = add_noise(kind, torch.zeros(1, DIM, dtype=torch.float64), make_noise(n, 0), sigmas[0])
                for i in range(T):
                    visits.append((x, sigmas[i]))
                    c, b = run(model, params, x, sigmas[i], CONCEPT_COND), run(model, params, x, sigmas[i], BASE_COND)
                    x = guided_step(kind, x, c, b, sigmas[i], sigmas[i + 1])
            else:  # reference: a fresh trajectory for every t, sampled t steps, then visited at sigma_t
                for i in range(T):
                    x = add_noise(kind, torch.zeros(1, DIM, dtype=torch.float64), make_noise(n, i), sigmas[0])
                    for j in range(i):
                        c, b = run(model, params, x, sigmas[j], CONCEPT_COND), run(model, params, x, sigmas[j], BASE_COND)
                        x = guided_step(kind, x, c, b, sigmas[j], sigmas[j + 1])
                    visits.append((x, sigmas[i]))
    return visits


def own_samples(model, params, kind, sigmas, samples):
    """The model's own guided samples (what likelihood-without-images scores)."""
    out = []
    with torch.no_grad():
        for n in range(samples):
            x = add_noise(kind, torch.zeros(1, DIM, dtype=torch.float64), make_noise(n, 0), sigmas[0])
            for j in range(len(sigmas) - 1):
                c, b = run(model, params, x, sigmas[j], CONCEPT_COND), run(model, params, x, sigmas[j], BASE_COND)
                x = guided_step(kind, x, c, b, sigmas[j], sigmas[j + 1])
            out.append(x)
    return torch.cat(out)


def lik_visits(kind, sigmas, images, samples):
    """(x_t, sigma, eps) for J_lik: each sample's image noised with eps_i = make_noise(sample, 1 + i)."""
    visits = []
    for n in range(samples):
        img = images[n % images.shape[0]].unsqueeze(0)
        for i in range(len(sigmas) - 1):
            if sigmas[i] > 0:
                eps = make_noise(n, 1 + i)
                visits.append((add_noise(kind, img, eps, sigmas[i]), sigmas[i], eps))
    return visits


def j_gap_fixed(model, params, base_params, kind, visits):
    """J_gap at fixed visited x_t, with the base prediction held at the ORIGINAL weights (the stop-gradient
    sg[eps(x_t, c_base)]): this is the function whose w-derivative CAD's alpha is, because the trajectory
    and the base branch are not differentiated through."""
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for x, s in visits:
            c = run(model, params, x, s, CONCEPT_COND)
            b = run(model, base_params, x, s, BASE_COND)
            total += (eps_of(kind, x, c, s) - eps_of(kind, x, b, s)).pow(2).mean()
    return float(total)


def j_lik_fixed(model, params, kind, visits):
    """J_lik = -sum_t mean((eps - eps_hat)^2) at fixed noised images (own samples held fixed)."""
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for x, s, eps in visits:
            total -= (eps - eps_of(kind, x, run(model, params, x, s, CONCEPT_COND), s)).pow(2).mean()
    return float(total)


class Recorder:
    """Wraps a denoiser; records inputs of calls made with grad enabled (the visits) and counts calls."""

    def __init__(self, fn):
        self.fn, self.visits, self.grad_calls, self.nograd_calls = fn, [], 0, 0

    def __call__(self, x, s):
        if torch.is_grad_enabled():
            self.grad_calls += 1
            self.visits.append((x.detach().clone(), float(s)))
        else:
            self.nograd_calls += 1
        return self.fn(x, s)


def parameterization(kind):
    return VarianceExploding() if kind == "variance_exploding" else FlowMatching()


def run_attribute(model, kind, objective, schedule="single", samples=1, images=None, sigmas=None,
                  dtype=torch.float64, on_progress=None, keys=SCOPE, loss_scale=1.0):
    """Attribute with the one call cad_core offers a plain torch module: attribute(model, concept, base, ...)."""
    sigmas = SIGMAS[kind] if sigmas is None else sigmas
    concept = Recorder(lambda x, s: model(x.to(dtype), s, CONCEPT_COND))
    base = Recorder(lambda x, s: model(x.to(dtype), s, BASE_COND))
    result = attribute(model, concept, base, scope=keys, sigmas=torch.tensor(sigmas, dtype=torch.float64),
                       parameterization=kind if kind == "variance_exploding" else "flow", objective=objective,
                       guidance=GUIDANCE, schedule=schedule, samples=samples, images=images,
                       make_noise=lambda n, r: make_noise(n, r, dtype), loss_scale=loss_scale,
                       on_progress=on_progress, fingerprint="toyfp", info_fields={"scope": "toy"})
    return result, concept, base


def detached_params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def scaled(params, key, flat_index, factor):
    out = dict(params)
    w = params[key].clone()
    w.view(-1)[flat_index] *= factor
    out[key] = w
    return out


# ----------------------------------------------------------------------------------------------
# 1. alpha equals the first-order change of J
# ----------------------------------------------------------------------------------------------
CASES = [(obj, kind, sched)
         for obj in ("concept_gap", "concept_gap_full", "likelihood_images", "likelihood_own")
         for kind in ("variance_exploding", "flow_matching")
         for sched in ("single", "reference")]


@pytest.mark.parametrize("case,kind,schedule", CASES)
def test_alpha_matches_finite_difference(case, kind, schedule):
    model = ToyDenoiser(seed=3, ve=kind == "variance_exploding")
    w0 = detached_params(model)
    sigmas = SIGMAS[kind]
    if case in ("concept_gap", "concept_gap_full"):
        samples, images = 2, None
        result, concept, base = run_attribute(model, kind, case, schedule, samples=samples)
        visits = gap_visits(model, w0, kind, sigmas, schedule, samples)
        # cad_core visited exactly the points our own sampler reaches, each with the sigma it was sampled at
        assert len(concept.visits) == len(visits) == samples * (len(sigmas) - 1)
        for (xr, sr), (x, s) in zip(concept.visits, visits):
            assert sr == s
            torch.testing.assert_close(xr, x, rtol=1e-5, atol=1e-6)

        if case == "concept_gap_full":  # both branches differentiated: the base moves with the weights too
            assert len(base.visits) == len(visits)

            def J(p):
                return j_gap_fixed(model, p, p, kind, visits)
        else:                           # the base branch held at the original weights (stop-gradient)
            assert base.visits == []

            def J(p):
                return j_gap_fixed(model, p, w0, kind, visits)
    else:
        if case == "likelihood_images":
            samples = 2
            images = torch.randn(2, DIM, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
            result, concept, _ = run_attribute(model, kind, "concept_likelihood", schedule, samples=samples, images=images)
            used = images
        else:
            samples, images = 1, None
            result, concept, _ = run_attribute(model, kind, "concept_likelihood", schedule, samples=samples)
            used = own_samples(model, w0, kind, sigmas, samples)  # generated once, then held fixed
        visits = lik_visits(kind, sigmas, used, samples)
        assert len(concept.visits) == len(visits)
        for (xr, sr), (x, s, _) in zip(concept.visits, visits):
            assert sr == s
            torch.testing.assert_close(xr, x, rtol=1e-5, atol=1e-6)

        def J(p):
            return j_lik_fixed(model, p, kind, visits)

    # the objective total cad_core reports is J at the unedited weights
    assert result.info.unet_calls["objective_total"] == pytest.approx(J(w0), rel=1e-5)
    assert result.info.objective == (case if case.startswith("concept_gap") else "concept_likelihood")
    assert set(result.scores) == set(SCOPE)

    # alpha_i = w_i * dJ/dw_i = d/dh J(w_i * (1 + h)) at h = 0: central difference in float64
    h = 1e-5
    g = torch.Generator().manual_seed(5)
    checked = 0
    for key in SCOPE:
        alpha = result.scores[key]
        assert alpha.dtype == torch.float32 and alpha.shape == w0[key].shape
        flat = alpha.reshape(-1)
        picks = {int(flat.abs().argmax()), *torch.randint(0, flat.numel(), (3,), generator=g).tolist()}
        for i in picks:
            fd = (J(scaled(w0, key, i, 1 + h)) - J(scaled(w0, key, i, 1 - h))) / (2 * h)
            scale = float(alpha.abs().max())
            assert abs(float(flat[i]) - fd) <= 1e-4 * abs(fd) + 1e-5 * scale, (key, i, float(flat[i]), fd)
            checked += 1
        # and the forward difference of zeroing a tiny fraction of w_i: (J(w) - J(w_i*(1-eps)))/eps
        i = int(flat.abs().argmax())
        eps = 1e-4
        fwd = (J(w0) - J(scaled(w0, key, i, 1 - eps))) / eps
        assert float(flat[i]) == pytest.approx(fwd, rel=1e-3)
    assert checked >= 6
    # scores are not trivially zero
    assert any(float(s.abs().max()) > 1e-6 for s in result.scores.values())


def test_likelihood_alpha_has_the_sign_of_minus_loss_gradient():
    """J_lik = -loss: alpha must be -w * dL/dw (docs/method.md, section 2), not +w * dL/dw."""
    kind = "variance_exploding"
    model = ToyDenoiser(seed=4)
    w0 = detached_params(model)
    images = torch.randn(1, DIM, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result, _, _ = run_attribute(model, kind, "concept_likelihood", images=images)
    visits = lik_visits(kind, SIGMAS[kind], images, 1)
    params = {k: v.clone().requires_grad_(k in SCOPE) for k, v in w0.items()}
    loss = sum((eps - eps_of(kind, x, run(model, params, x, s, CONCEPT_COND), s)).pow(2).mean() for x, s, eps in visits)
    loss.backward()
    for key in SCOPE:
        expected = -(w0[key] * params[key].grad).float()
        torch.testing.assert_close(result.scores[key], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


# ----------------------------------------------------------------------------------------------
# 2. ablation really changes J as predicted
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gap_setup():
    kind = "variance_exploding"
    model = ToyDenoiser(seed=8)
    w0 = detached_params(model)
    result, _, _ = run_attribute(model, kind, "concept_gap", "single", samples=2)
    visits = gap_visits(model, w0, kind, SIGMAS[kind], "single", 2)

    def measure(mask, strength):
        """J at the recorded x_t (trajectory and base branch fixed) with the mask applied to copies."""
        p = dict(w0)
        if mask is not None:
            for key, idx in mask.indices.items():
                p[key] = scale_selected(w0[key].clone(), idx, strength)
        return j_gap_fixed(model, p, w0, kind, visits)

    return result, measure, w0


@pytest.mark.parametrize("mode", ["erase", "amplify"])
def test_verify_small_strength_matches_prediction(gap_setup, mode):
    result, measure, _ = gap_setup
    mask = select_components(result, mode, 0.03, "global")
    assert mask.count == int(0.03 * result.total_weights) > 0  # enough scores of each sign here
    check = verify_ablation(measure, result, mask, strength=0.01)
    expected_pred = -0.01 * sum(float(result.scores[k].reshape(-1)[i].double().sum()) for k, i in mask.indices.items())
    assert check.predicted_change == pytest.approx(expected_pred, rel=1e-9)
    assert check.selected == mask.count
    assert check.objective_before == pytest.approx(measure(None, 0.0), rel=1e-12)
    assert check.measured_change == pytest.approx(check.objective_after - check.objective_before, rel=1e-12)
    # erase lowers the concept, amplify raises it
    assert (check.predicted_change < 0) == (mode == "erase")
    # tolerance: relative error below 5% at strength 0.01 (second-order terms are O(strength^2))
    assert abs(check.measured_change - check.predicted_change) < 0.05 * abs(check.predicted_change)


def test_verify_full_ablation_of_tiny_selection_has_predicted_sign(gap_setup):
    result, measure, _ = gap_setup
    for mode in ("erase", "amplify"):
        mask = select_components(result, mode, 2 / result.total_weights + 1e-12, "global")  # the top 2
        assert mask.count == 2
        check = verify_ablation(measure, result, mask, strength=1.0)
        assert check.predicted_change != 0
        assert math.copysign(1, check.measured_change) == math.copysign(1, check.predicted_change), (mode, check)


def test_faithfulness_high_for_small_strength_random_sets(gap_setup):
    result, measure, _ = gap_setup
    out = faithfulness(measure, result, sets=25, set_size=6, seed=1, strength=0.02)
    assert out["sets"] == 25 and len(out["predicted"]) == len(out["measured"]) == 25
    x = torch.tensor(out["predicted"], dtype=torch.float64)
    y = torch.tensor(out["measured"], dtype=torch.float64)
    r = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert out["pearson_r"] == pytest.approx(r, abs=1e-9)
    assert out["pearson_r"] > 0.9


def test_predicted_change_refuses_unscored_keys(gap_setup):
    result, _, _ = gap_setup
    mask = select_components(result, "erase", 0.1, "per_matrix")
    mask.indices["other.weight"] = torch.tensor([0])
    mask.shapes["other.weight"] = (3,)
    with pytest.raises(CADError, match="does not score"):
        predicted_change(result, mask)


# ----------------------------------------------------------------------------------------------
# 3. UNet call counts and progress
# ----------------------------------------------------------------------------------------------
def _sigmas(T):
    return [4.0 * (T - i) / T for i in range(T)] + [0.0]


def _gap_expected(T, schedule):
    """(forward_backward, forward_no_grad, progress units) per sample, as trajectory.py documents them."""
    if schedule == "single":
        return T, T, T                                   # T guided steps whose concept forward also serves J
    return T, T + T * (T - 1), T * (T + 1) // 2          # restart i: i guided batch-2 steps, then one visit


@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("schedule", ["single", "reference"])
def test_concept_gap_call_counts_and_progress(T, schedule):
    model = ToyDenoiser(seed=1)
    progress = []
    result, concept, base = run_attribute(model, "variance_exploding", "concept_gap", schedule,
                                          sigmas=_sigmas(T), on_progress=lambda d, t: progress.append((d, t)))
    fb, ng, units = _gap_expected(T, schedule)
    calls = result.info.unet_calls
    assert calls["forward_backward"] == fb
    assert calls["forward_no_grad"] == ng
    assert calls["visits"] == T
    # the reported counts are the calls really made
    assert concept.grad_calls == fb
    assert concept.nograd_calls + base.nograd_calls + base.grad_calls == ng
    assert base.grad_calls == 0  # the base branch is never differentiated (stop-gradient)
    # progress: 1, 2, ..., total, total = units of work
    assert progress == [(d, units) for d in range(1, units + 1)]
    assert result.info.steps == T and result.info.schedule == schedule and result.info.samples == 1


@pytest.mark.parametrize("schedule", ["single", "reference"])
def test_several_samples_multiply_the_counts_and_progress_runs_once(schedule):
    """Counts scale with samples. Progress must go 1..total once over the whole run (a UI progress bar
    fed with update_absolute(done, total)); currently it restarts at 1 for every sample (fails)."""
    T, samples = 3, 3
    progress = []
    result, concept, base = run_attribute(ToyDenoiser(seed=1), "variance_exploding", "concept_gap", schedule,
                                          samples=samples, sigmas=_sigmas(T),
                                          on_progress=lambda d, t: progress.append((d, t)))
    fb, ng, units = _gap_expected(T, schedule)
    calls = result.info.unet_calls
    assert calls["forward_backward"] == samples * fb == concept.grad_calls
    assert calls["forward_no_grad"] == samples * ng == concept.nograd_calls + base.nograd_calls
    assert calls["visits"] == samples * T
    assert progress[-1][0] == progress[-1][1] == samples * units
    assert [d for d, _ in progress] == list(range(1, samples * units + 1))
    assert all(t == samples * units for _, t in progress)


@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("with_images", [True, False])
def test_concept_likelihood_call_counts_and_progress(T, with_images):
    model = ToyDenoiser(seed=1)
    progress = []
    images = torch.randn(1, DIM, dtype=torch.float64) if with_images else None
    result, concept, base = run_attribute(model, "variance_exploding", "concept_likelihood", images=images,
                                          sigmas=_sigmas(T), on_progress=lambda d, t: progress.append((d, t)))
    calls = result.info.unet_calls
    assert calls["forward_backward"] == T == concept.grad_calls
    expected_ng = 0 if with_images else 2 * T   # own samples: T guided (batch-2) steps
    assert calls["forward_no_grad"] == expected_ng == concept.nograd_calls + base.nograd_calls
    total = T + (0 if with_images else T)
    assert progress == [(d, total) for d in range(1, total + 1)]


# ----------------------------------------------------------------------------------------------
# 4. only scoped weights get gradients; state restored
# ----------------------------------------------------------------------------------------------
def test_only_scoped_weights_require_grad_and_state_is_restored():
    model = ToyDenoiser(seed=2)
    model.fc2.bias.requires_grad_(False)          # a mixed starting state that must come back as it was
    before = {k: p.requires_grad for k, p in model.named_parameters()}
    seen = []

    def spy(x, s):
        if torch.is_grad_enabled():
            seen.append({k: p.requires_grad for k, p in model.named_parameters()})
        return model(x, s, CONCEPT_COND)

    result = attribute(model, spy, lambda x, s: model(x, s, BASE_COND), scope=SCOPE,
                       sigmas=torch.tensor(_sigmas(3), dtype=torch.float64), parameterization="variance_exploding",
                       make_noise=make_noise)
    assert seen and all(state == {k: k in SCOPE for k in before} for state in seen)
    assert {k: p.requires_grad for k, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    # the capture's hooks are gone: a later backward leaves ordinary .grad on the scoped weights (the hooks
    # would have moved it into the accumulator and cleared it)
    model(torch.randn(1, DIM, dtype=torch.float64), torch.tensor(1.0), CONCEPT_COND).sum().backward()
    assert all(model.get_parameter(k).grad is not None for k in SCOPE)
    assert any(float(s.abs().max()) > 0 for s in result.scores.values())


def test_stale_grad_on_scoped_weight_does_not_leak_into_alpha():
    """A scoped parameter that already holds a .grad (e.g. after a training step) must not add that
    stale gradient to the first visit's dJ/dw (the post-accumulate hook sees autograd's sum), and
    gets it back afterwards like requires_grad."""
    clean, _, _ = run_attribute(ToyDenoiser(seed=2), "variance_exploding", "concept_gap")
    model = ToyDenoiser(seed=2)
    stale = {key: torch.full_like(model.get_parameter(key), 5.0) for key in SCOPE}
    for key in SCOPE:
        model.get_parameter(key).grad = stale[key].clone()
    dirty, _, _ = run_attribute(model, "variance_exploding", "concept_gap")
    for key in SCOPE:
        torch.testing.assert_close(dirty.scores[key], clean.scores[key])
        assert torch.equal(model.get_parameter(key).grad, stale[key])


def test_capture_rejects_unknown_and_empty_scopes():
    model = ToyDenoiser()
    denoise = lambda x, s: model(x, s, CONCEPT_COND)  # noqa: E731
    with pytest.raises(CADError, match="nope.weight"):
        attribute(model, denoise, denoise, scope=["nope.weight"], sigmas=_sigmas(2),
                  parameterization="variance_exploding", make_noise=make_noise)
    with pytest.raises(CADError, match="scope is empty"):
        attribute(model, denoise, denoise, scope=[], sigmas=_sigmas(2), parameterization="variance_exploding",
                  make_noise=make_noise)
    with pytest.raises(CADError, match="Unknown parameterization 'eps'"):
        attribute(model, denoise, denoise, scope=SCOPE, sigmas=_sigmas(2), parameterization="eps",
                  make_noise=make_noise)


# ----------------------------------------------------------------------------------------------
# 5. scores are fp32 whatever the model computes in
# ----------------------------------------------------------------------------------------------
def _low_precision_supported(dtype):
    try:
        lin = nn.Linear(3, 2).to(dtype)
        lin(torch.randn(1, 3, dtype=dtype)).sum().backward()
        return True
    except RuntimeError:
        return False


def _attribute_in(dtype, fc3_scale):
    """The same toy model attributed in fp32 and in `dtype` (fc3 weights scaled down: tiny products)."""
    ref_model = ToyDenoiser(seed=6, dtype=torch.float32)
    with torch.no_grad():
        ref_model.fc3.weight.mul_(fc3_scale)
    low_model = ToyDenoiser(seed=6, dtype=torch.float32)
    low_model.load_state_dict(ref_model.state_dict())
    low_model.to(dtype)
    ref, _, _ = run_attribute(ref_model, "variance_exploding", "concept_gap", dtype=torch.float32)
    low, _, _ = run_attribute(low_model, "variance_exploding", "concept_gap", dtype=dtype)
    return ref, low


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_model_gives_fp32_scores(dtype):
    if not _low_precision_supported(dtype):
        pytest.skip(f"{dtype} linear layers unsupported on this CPU")
    ref, low = _attribute_in(dtype, 1e-3)
    for key in SCOPE:
        assert low.scores[key].dtype == torch.float32
        nonzero = ref.scores[key] != 0
        assert nonzero.float().mean() > 0.9
        kept = (low.scores[key][nonzero] != 0).float().mean()
        assert kept > 0.9, (key, float(kept))
        r = torch.corrcoef(torch.stack([ref.scores[key].flatten(), low.scores[key].flatten()]))[0, 1]
        assert r > 0.98, (key, float(r))


def test_fp16_model_scores_are_not_flushed_to_zero():
    """fc3's gradient (dJ/dx0 times O(1) activations) is representable in fp16, but w * dJ/dw is not:
    alpha formed in fp16, like the reference code does, would be exactly 0 for most entries."""
    if not _low_precision_supported(torch.float16):
        pytest.skip("float16 linear layers unsupported on this CPU")
    ref, low = _attribute_in(torch.float16, 1e-4)
    a, b = ref.scores["fc3.weight"], low.scores["fc3.weight"]
    assert float((a.half() == 0).float().mean()) > 0.5          # the setup has teeth
    assert b.dtype == torch.float32
    assert float((b[a != 0] != 0).float().mean()) > 0.95
    r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]     # fp16 compute noise aside, the same scores
    assert r > 0.95, float(r)


# ----------------------------------------------------------------------------------------------
# input errors
# ----------------------------------------------------------------------------------------------
def test_attribute_input_errors():
    model = ToyDenoiser()
    f = lambda x, s: model(x, s, CONCEPT_COND)  # noqa: E731
    call = dict(scope=SCOPE, sigmas=_sigmas(2), parameterization="variance_exploding", make_noise=make_noise)
    with pytest.raises(CADError, match="concept_gap"):
        attribute(model, f, f, objective="concept_nope", **call)
    with pytest.raises(CADError, match="at least 1"):
        attribute(model, f, f, samples=0, **call)
    with pytest.raises(CADError, match="noise_shape"):
        attribute(model, f, f, **{**call, "make_noise": None})
    with pytest.raises(CADError, match="single"):
        TrajectoryPlan(torch.tensor([1.0, 0.0]), VarianceExploding(), schedule="fast")
    with pytest.raises(CADError, match="steps >= 1"):
        TrajectoryPlan(torch.tensor([1.0]), VarianceExploding())


@pytest.mark.parametrize("objective", ["concept_gap", "concept_likelihood"])
def test_loss_scale_is_divided_out_again(objective):
    """Scaling J before backward (for fp16 models) must not change alpha: the accumulator unscales."""
    plain, _, _ = run_attribute(ToyDenoiser(seed=5), "variance_exploding", objective)
    scaled, _, _ = run_attribute(ToyDenoiser(seed=5), "variance_exploding", objective, loss_scale=4096.0)
    assert scaled.info.loss_scale == 4096.0 and plain.info.loss_scale == 1.0
    for k, s in plain.scores.items():
        torch.testing.assert_close(scaled.scores[k], s, rtol=1e-6, atol=1e-6 * s.abs().max().item())


def test_loss_scale_only_for_fp16_and_a_power_of_two_covering_the_latent():
    assert loss_scale_for(torch.float32, 16384) == 1.0 and loss_scale_for(torch.bfloat16, 16384) == 1.0
    assert loss_scale_for(torch.float16, 16384) == 16384.0  # SD1.5 at 512 px: 4 x 64 x 64
    assert loss_scale_for(torch.float16, 3 * 48 * 48) == 8192.0
    assert loss_scale_for(torch.float16, 1) == 1.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CADError, match="loss_scale"):
            TrajectoryPlan(torch.tensor([1.0, 0.0]), VarianceExploding(), make_noise=lambda s, r: torch.zeros(1),
                           loss_scale=bad)


def test_nan_model_raises_helpful_error():
    model = ToyDenoiser()
    with torch.no_grad():
        model.fc3.bias.fill_(float("nan"))
    with pytest.raises(CADError, match="NaN"):
        run_attribute(model, "variance_exploding", "concept_gap")


def test_plan_refuses_zero_sigma_before_the_end_and_missing_noise():
    ve = VarianceExploding()
    with pytest.raises(CADError, match="must be positive"):
        TrajectoryPlan(torch.tensor([2.0, 0.0, 0.0]), ve, make_noise=lambda s, r: torch.zeros(1))
    with pytest.raises(CADError, match="make_noise"):
        TrajectoryPlan(torch.tensor([2.0, 1.0, 0.0]), ve)


def test_sum_attributions_adds_scores_and_refuses_mixed_models():
    from cad_pack.cad_core import Attribution, AttributionInfo, sum_attributions
    a = Attribution({"w": torch.tensor([1.0, -2.0])}, "f1", AttributionInfo(objective="concept_gap"))
    b = Attribution({"w": torch.tensor([0.5, 3.0])}, "f1", AttributionInfo(objective="concept_gap"))
    total = sum_attributions([a, b])
    assert total.scores["w"].tolist() == [1.5, 1.0] and total.info.summed_from == 2
    with pytest.raises(CADError, match="another model"):
        sum_attributions([a, Attribution({"w": torch.zeros(2)}, "f2")])
    with pytest.raises(CADError, match="different weights"):
        sum_attributions([a, Attribution({"v": torch.zeros(2)}, "f1", AttributionInfo(objective="concept_gap"))])
    with pytest.raises(CADError, match="different objectives"):
        sum_attributions([a, Attribution({"w": torch.zeros(2)}, "f1", AttributionInfo(objective="concept_likelihood"))])
    # sums of sums count every part; a sum keeps no visited latents (they belong to one prompt pair each)
    assert sum_attributions([total, a]).info.summed_from == 3
    assert sum_attributions([total, a]).points == []
    assert sum_attributions([a]) is a

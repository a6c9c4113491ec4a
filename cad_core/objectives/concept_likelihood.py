"""concept_likelihood: J = -sum_t || eps - eps_hat(sqrt(abar) x0 + sqrt(1-abar) eps, c, t) ||^2 over images of the
concept: the negated denoising loss, a proxy for log p(x | c). Ablating its most negative components raises
it: the objective for amplifying. Without concept images the model's own guided samples stand in for them.
"""
import torch

from ..trajectory import CallCounts, TrajectoryPlan, Visit, at_least_fp32, guided_step
from .record import Objective


def concept_likelihood(parameterization, x_t, sigma, x0_pred, eps_true) -> torch.Tensor:
    """-|| eps - eps_hat(x_t, c) ||^2 (mean over elements)."""
    eps_pred = parameterization.eps_from_x0(x_t, at_least_fp32(x0_pred), sigma)
    return -(at_least_fp32(eps_true) - eps_pred).pow(2).mean()


def visit(concept, base, plan: TrajectoryPlan, counts: CallCounts, images=None, sample: int = 0) -> None:
    p, sig = plan.parameterization, plan.sigmas
    total, done = units_of_work(plan, images is None), 0
    if images is None:
        noise = plan.make_noise(sample, 0)
        x = p.add_noise(torch.zeros_like(noise), noise, sig[0])
        for j in range(plan.steps):
            x = guided_step(concept, base, plan, x, j, counts)
            done += 1
            plan.on_progress(done, total)
        images = x
    for i in range(plan.steps):
        eps = plan.make_noise(sample, 1 + i).to(images)
        x_t = p.add_noise(images, eps, sig[i])
        with torch.enable_grad():
            j = concept_likelihood(p, x_t, sig[i], concept(x_t, sig[i]), eps)
            (j * plan.loss_scale).backward()
        counts.forward_backward += 1
        counts.record(Visit(x_t.detach().cpu(), sig[i].detach().cpu(), eps.detach().cpu()), j)
        done += 1
        plan.on_progress(done, total)


def measure(parameterization, v: Visit, concept, base, held_base=None) -> torch.Tensor:
    return concept_likelihood(parameterization, v.x_t, v.sigma, concept(v.x_t, v.sigma), v.eps)


def units_of_work(plan: TrajectoryPlan, generates_samples: bool) -> int:
    return plan.steps + (plan.steps if generates_samples else 0)


CONCEPT_LIKELIHOOD = Objective(
    name="concept_likelihood",
    purpose="amplifying",
    formula="`J = −Σ_t ‖ε − ε̂(√ᾱ x₀ + √(1−ᾱ) ε, c, t)‖²` over images of the concept: `concept_latent` "
            "(VAE-encoded) or, without it, the model's own samples for the concept",
    effect="Ablating the most negative components raises it.",
    visit=visit, measure=measure, units_of_work=units_of_work, holds_base=False, takes_images=True,
    contrasts_base=False)

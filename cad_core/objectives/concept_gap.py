"""concept_gap: J = sum_t || eps(x_t, c) - sg[eps(x_t, c_base)] ||^2 along the model's own guided trajectory
for the concept. Ablating its positive components shrinks the gap, so guidance can no longer steer toward
the concept: the objective for erasing. Its negative components widen the gap when ablated: on the toy world
that raised a shape the model draws weakly without guidance where concept_likelihood did not
(benchmarks/results/selective_erase.md, amplify section).

Schedules: "single" visits one guided trajectory per sample once, its concept forward also serving J (T
forward+backward passes plus T base forwards, O(T)); "reference" restarts a fresh trajectory for every t and
samples t guided steps to reach x_t, as the reference code does (O(T^2)). The reference code labels the latent
after step t with timestep t-1; here x_t is always paired with the sigma it was sampled at.
"""
import torch

from ..trajectory import CallCounts, TrajectoryPlan, Visit, at_least_fp32, ddim_step, guided, guided_step
from .record import Objective


def concept_gap(parameterization, x_t, sigma, x0_concept, x0_base) -> torch.Tensor:
    """|| eps(x_t, c) - sg[eps(x_t, c_base)] ||^2 (mean over elements): how far the concept moves the prediction."""
    return _gap(parameterization, x_t, sigma, x0_concept, x0_base.detach())


def _gap(parameterization, x_t, sigma, x0_concept, x0_base) -> torch.Tensor:
    eps_concept = parameterization.eps_from_x0(x_t, at_least_fp32(x0_concept), sigma)
    eps_base = parameterization.eps_from_x0(x_t, at_least_fp32(x0_base), sigma)
    return (eps_concept - eps_base).pow(2).mean()


def visit(concept, base, plan: TrajectoryPlan, counts: CallCounts, images=None, sample: int = 0) -> None:
    visit_gap(concept, base, plan, counts, sample, hold_base=True)


def visit_gap(concept, base, plan: TrajectoryPlan, counts: CallCounts, sample: int, hold_base: bool) -> None:
    """The gap's visiting loop. hold_base: the base branch runs without gradients (concept_gap's stop-gradient);
    otherwise J is differentiated through both branches (concept_gap_full)."""
    p, sig = plan.parameterization, plan.sigmas
    total, done = units_of_work(plan, False), 0

    def differentiate_at(x_t, i):
        with torch.enable_grad():
            x0_c = concept(x_t, sig[i])
        with torch.set_grad_enabled(not hold_base):
            x0_b = base(x_t, sig[i])
        with torch.enable_grad():
            j = concept_gap(p, x_t, sig[i], x0_c, x0_b) if hold_base else _gap(p, x_t, sig[i], x0_c, x0_b)
            (j * plan.loss_scale).backward()
        counts.forward_backward += 1 if hold_base else 2
        counts.forward_no_grad += 1 if hold_base else 0
        counts.record(Visit(x_t.detach().cpu(), sig[i].detach().cpu()), j)
        return x0_c.detach(), x0_b.detach()

    def start(restart):
        noise = plan.make_noise(sample, restart)
        return p.add_noise(torch.zeros_like(noise), noise, sig[0])

    if plan.schedule == "single":
        x = start(0)
        for i in range(plan.steps):
            x0_c, x0_b = differentiate_at(x, i)
            x = ddim_step(p, x, guided(x0_c, x0_b, plan.guidance), sig[i], sig[i + 1])
            done += 1
            plan.on_progress(done, total)
        return

    for i in range(plan.steps):
        x = start(i)
        for j in range(i):
            x = guided_step(concept, base, plan, x, j, counts)
            done += 1
            plan.on_progress(done, total)
        differentiate_at(x, i)
        done += 1
        plan.on_progress(done, total)


def measure(parameterization, v: Visit, concept, base, held_base=None) -> torch.Tensor:
    x0_base = held_base if held_base is not None else base(v.x_t, v.sigma)
    return concept_gap(parameterization, v.x_t, v.sigma, concept(v.x_t, v.sigma), x0_base)


def units_of_work(plan: TrajectoryPlan, generates_samples: bool) -> int:
    t = plan.steps
    return t if plan.schedule == "single" else t * (t + 1) // 2


CONCEPT_GAP = Objective(
    name="concept_gap",
    purpose="erasing",
    formula="`J = Σ_t ‖ε(x_t, c) − sg[ε(x_t, c_base)]‖²` along the model's own guided trajectory for the concept",
    effect="Ablating positive components shrinks the gap, so guidance can no longer steer toward the concept; "
           "ablating negative ones (CAD Amplify Mask) widens it, so the concept comes through with less guidance.",
    visit=visit, measure=measure, units_of_work=units_of_work, holds_base=True, takes_images=False,
    contrasts_base=True)

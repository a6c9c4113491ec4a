"""Visiting sampling timesteps and backpropagating J at each visit.

The denoiser is any callable (x_t, sigma) -> x0 prediction; gradient capture is the caller's
business (hooks on the scoped weights), so this module never needs to know what the model is.

Schedules for the concept-gap objective:
- "single": one guided trajectory per sample, visited once. T guided steps whose concept forward
  also serves J: T forward+backward passes of the concept branch plus T base forwards. O(T).
- "reference": the reference code's schedule, kept for comparisons: for every t, restart a fresh
  trajectory and sample t guided steps to reach x_t, then take one forward+backward there. O(T^2).
  (The reference code labels the latent after step t with timestep t-1; here x_t is always paired
  with the sigma it was sampled at.)
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .errors import CADError
from .noise import ddim_step
from .objectives import concept_gap, concept_likelihood

SCHEDULES = ("single", "reference")

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Visit:
    """One point where J was differentiated, kept so J can be re-measured there after an edit."""

    x_t: torch.Tensor
    sigma: torch.Tensor
    eps: torch.Tensor | None = None  # the true noise, for the likelihood objective


@dataclass
class CallCounts:
    """UNet work done, counted per batch call: the figure the cost targets are stated in."""

    forward_backward: int = 0
    forward_no_grad: int = 0
    objective_total: float = 0.0
    visits: int = 0
    points: list = field(default_factory=list)  # Visit records (CPU), not part of as_dict()

    def as_dict(self) -> dict:
        return {"forward_backward": self.forward_backward, "forward_no_grad": self.forward_no_grad,
                "visits": self.visits, "objective_total": self.objective_total}


@dataclass
class TrajectoryPlan:
    """Everything the visiting loop needs besides the denoisers."""

    sigmas: torch.Tensor                 # descending, last entry 0 (or the final sigma), length T+1
    parameterization: object             # noise.VarianceExploding() or noise.FlowMatching()
    guidance: float = 3.0
    schedule: str = "single"
    make_noise: Callable[[int, int], torch.Tensor] = field(default=None)  # (sample, restart) -> noise like the latent
    on_progress: Callable[[int, int], None] = field(default=lambda done, total: None)
    # J is multiplied by this before each backward pass and the gradient sums are divided by it again
    # (GradientAccumulator.unscale): fp16 backward passes lose the tiny gradients of a mean over a whole
    # latent to underflow otherwise. 1 for fp32/bf16 models; see loss_scale_for.
    loss_scale: float = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise CADError(f"Unknown schedule '{self.schedule}'. Expected one of: {', '.join(SCHEDULES)}.")
        if len(self.sigmas) < 2:
            raise CADError("Attribution needs at least one sampling step (steps >= 1).")
        if not bool((self.sigmas[:-1] > 0).all()):
            raise CADError("Every sigma but the last must be positive: the objectives divide by sigma.")
        if self.make_noise is None:
            raise CADError("TrajectoryPlan needs make_noise(sample, restart) to draw the trajectories' noise.")
        if not (math.isfinite(self.loss_scale) and self.loss_scale > 0):
            raise CADError(f"loss_scale must be a positive finite number, got {self.loss_scale}.")

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def units_of_work(self, objective: str, generate_samples: bool) -> int:
        """Progress units: one per UNet step taken (guided or differentiated)."""
        t = self.steps
        if objective == "concept_gap":
            return t if self.schedule == "single" else t * (t + 1) // 2
        return t + (t if generate_samples else 0)


def visit_concept_gap(concept: Denoise, base: Denoise, plan: TrajectoryPlan, counts: CallCounts, sample: int = 0) -> None:
    """Backpropagate J_gap at every sigma of the plan along guided trajectories for the concept."""
    p, sig = plan.parameterization, plan.sigmas
    total, done = plan.units_of_work("concept_gap", False), 0

    def differentiate_at(x_t, i):
        with torch.enable_grad():
            x0_c = concept(x_t, sig[i])
        with torch.no_grad():
            x0_b = base(x_t, sig[i])
        with torch.enable_grad():
            j = concept_gap(p, x_t, sig[i], x0_c, x0_b)
            (j * plan.loss_scale).backward()
        counts.forward_backward += 1
        counts.forward_no_grad += 1
        counts.visits += 1
        counts.points.append(Visit(x_t.detach().cpu(), sig[i].detach().cpu()))
        counts.objective_total += float(j.detach())
        return x0_c.detach(), x0_b

    def start(restart):
        noise = plan.make_noise(sample, restart)
        return p.add_noise(torch.zeros_like(noise), noise, sig[0])

    if plan.schedule == "single":
        x = start(0)
        for i in range(plan.steps):
            x0_c, x0_b = differentiate_at(x, i)
            x = ddim_step(p, x, _guided(x0_c, x0_b, plan.guidance), sig[i], sig[i + 1])
            done += 1
            plan.on_progress(done, total)
        return

    for i in range(plan.steps):
        x = start(i)
        for j in range(i):
            x = _guided_step(concept, base, plan, x, j, counts)
            done += 1
            plan.on_progress(done, total)
        differentiate_at(x, i)
        done += 1
        plan.on_progress(done, total)


def visit_concept_likelihood(concept: Denoise, base: Denoise, plan: TrajectoryPlan, counts: CallCounts,
                             images: torch.Tensor | None, sample: int = 0) -> None:
    """Backpropagate J_lik at every sigma of the plan on noised concept images.

    Without images, the model's own guided samples for the concept stand in for them.
    """
    p, sig = plan.parameterization, plan.sigmas
    total, done = plan.units_of_work("concept_likelihood", images is None), 0
    if images is None:
        noise = plan.make_noise(sample, 0)
        x = p.add_noise(torch.zeros_like(noise), noise, sig[0])
        for j in range(plan.steps):
            x = _guided_step(concept, base, plan, x, j, counts)
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
        counts.visits += 1
        counts.points.append(Visit(x_t.detach().cpu(), sig[i].detach().cpu(), eps.detach().cpu()))
        counts.objective_total += float(j.detach())
        done += 1
        plan.on_progress(done, total)


def measure_objective(objective: str, concept: Denoise, base: Denoise, parameterization, points,
                      held_base: Sequence[torch.Tensor] | None = None) -> float:
    """J summed over recorded visits, without gradients: the same latents before and after an edit.

    held_base: base predictions to use instead of calling `base` (see base_predictions): J_gap with the
    base branch held where the attribution's stop-gradient holds it.
    """
    total = 0.0
    with torch.no_grad():
        for i, v in enumerate(points):
            if objective == "concept_gap":
                x0_base = held_base[i] if held_base is not None else base(v.x_t, v.sigma)
                j = concept_gap(parameterization, v.x_t, v.sigma, concept(v.x_t, v.sigma), x0_base)
            else:
                j = concept_likelihood(parameterization, v.x_t, v.sigma, concept(v.x_t, v.sigma), v.eps)
            total += float(j)
    return total


def loss_scale_for(compute_dtype: torch.dtype, latent_numel: int) -> float:
    """fp16 computes: 2**k >= the number of latent elements, so that J (a mean) backpropagates like a sum,
    whose gradients sit in fp16's normal range; a power of two keeps the division exact. Otherwise 1."""
    if compute_dtype != torch.float16:
        return 1.0
    return float(2 ** max(0, math.ceil(math.log2(max(latent_numel, 1)))))


def base_predictions(base: Denoise, points) -> list[torch.Tensor]:
    """The base branch's predictions at recorded visits, to hold them fixed while the model is edited."""
    with torch.no_grad():
        return [base(v.x_t, v.sigma).detach() for v in points]


def _guided(x0_concept, x0_base, guidance):
    return x0_base + guidance * (x0_concept - x0_base)


def _guided_step(concept, base, plan, x, j, counts):
    """One classifier-free-guided DDIM step without gradients (a step to sigma 0 lands on x0)."""
    with torch.no_grad():
        x0 = _guided(concept(x, plan.sigmas[j]), base(x, plan.sigmas[j]), plan.guidance)
    counts.forward_no_grad += 2
    return ddim_step(plan.parameterization, x, x0, plan.sigmas[j], plan.sigmas[j + 1])


def check_sigmas(sigmas: Sequence[float]) -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float32)
    if s.ndim != 1 or len(s) < 2 or not torch.all(s[:-1] >= s[1:]):
        raise CADError("Sigmas must be a descending list with at least two entries.")
    return s

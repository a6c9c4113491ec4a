"""What every objective's visiting loop shares: the plan (sigmas, noising form, guidance, schedule, noise),
the record of UNet work and visited points, and guided DDIM steps without gradients.

The denoiser is any callable (x_t, sigma) -> x0 prediction; gradient capture is the caller's business
(attribution.GradientCapture), so this module never needs to know what the model is. The objectives'
own loops live in objectives/.
"""
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import CADError
from .noise import ddim_step

SCHEDULES = ("single", "reference")

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["SCHEDULES", "Denoise", "Visit", "CallCounts", "TrajectoryPlan", "guided", "guided_step", "ddim_step",
           "at_least_fp32", "loss_scale_for"]


@dataclass
class Visit:
    """One point where J was differentiated, kept so J can be re-measured there after an edit."""

    x_t: torch.Tensor
    sigma: torch.Tensor
    eps: torch.Tensor | None = None  # the true noise, for objectives measured on noised images


@dataclass
class CallCounts:
    """UNet work done, counted per batch call: the figure the cost targets are stated in."""

    forward_backward: int = 0
    forward_no_grad: int = 0
    objective_total: float = 0.0
    visits: int = 0
    points: list = field(default_factory=list)  # Visit records (CPU), not part of as_dict()

    def record(self, visit: Visit, j: torch.Tensor) -> None:
        """One differentiated point: where it was and the J it contributed."""
        self.visits += 1
        self.points.append(visit)
        self.objective_total += float(j.detach())

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


def guided(x0_concept, x0_base, guidance):
    return x0_base + guidance * (x0_concept - x0_base)


def guided_step(concept, base, plan, x, j, counts):
    """One classifier-free-guided DDIM step without gradients (a step to sigma 0 lands on x0)."""
    with torch.no_grad():
        x0 = guided(concept(x, plan.sigmas[j]), base(x, plan.sigmas[j]), plan.guidance)
    counts.forward_no_grad += 2
    return ddim_step(plan.parameterization, x, x0, plan.sigmas[j], plan.sigmas[j + 1])


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 predictions are lifted to fp32 for the loss; fp64 stays fp64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def loss_scale_for(compute_dtype: torch.dtype, latent_numel: int) -> float:
    """fp16 computes: 2**k >= the number of latent elements, so that J (a mean) backpropagates like a sum,
    whose gradients sit in fp16's normal range; a power of two keeps the division exact. Otherwise 1."""
    if compute_dtype != torch.float16:
        return 1.0
    return float(2 ** max(0, math.ceil(math.log2(max(latent_numel, 1)))))


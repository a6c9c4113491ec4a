"""Attribution scores alpha = w * dJ/dw, accumulated in fp32, and the one-call `attribute()` API."""
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import torch

from .attribution_info import AttributionInfo
from .blocks import block_of, block_sort_key, short_block_name
from .errors import CADError
from .fingerprint import require_same_model
from .noise import FlowMatching, VarianceExploding
from .objectives import objective_named
from .trajectory import CallCounts, TrajectoryPlan
from .version import PACK_VERSION


@dataclass
class Attribution:
    """Per-weight scores for one concept, shaped like the weights they score (fp32, CPU).

    alpha > 0: zeroing the weight is predicted to weaken the concept (a positive component);
    alpha < 0: zeroing it is predicted to strengthen the concept (a negative component).
    """

    scores: dict[str, torch.Tensor]
    fingerprint: str
    info: AttributionInfo = field(default_factory=AttributionInfo)
    # Where J was differentiated (trajectory.Visit records). Kept in memory for verification only;
    # files do not store them.
    points: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not isinstance(self.info, AttributionInfo):
            raise TypeError(f"Attribution.info must be an AttributionInfo (the record that replaced the meta dict), "
                            f"got {type(self.info).__name__}.")

    @property
    def total_weights(self) -> int:
        return sum(s.numel() for s in self.scores.values())

    def check_usable(self) -> None:
        if not self.scores:
            raise CADError("This attribution scores no weights; re-run CAD Attribute with a non-empty scope.")
        for key, s in self.scores.items():
            if not torch.isfinite(s).all():
                bad = int((~torch.isfinite(s)).sum())
                raise CADError(
                    f"The attribution has {bad} non-finite (NaN/inf) scores in '{key}'. This usually means the "
                    f"model produced NaN/inf during attribution (fp16 overflow, broken weights). Re-run CAD "
                    f"Attribute, e.g. with fewer steps or an fp32/bf16 model; a file like this cannot be used.")

    def summary(self) -> dict:
        """Positive/negative mass and counts, overall and per block, for UIs and logs."""
        blocks = defaultdict(lambda: {"positive_mass": 0.0, "negative_mass": 0.0, "positive": 0,
                                      "negative": 0, "weights": 0})
        for key, s in self.scores.items():
            b = blocks[block_of(key)]
            b["positive_mass"] += float(s.clamp(min=0).sum())
            b["negative_mass"] += float(s.clamp(max=0).sum())
            b["positive"] += int((s > 0).sum())
            b["negative"] += int((s < 0).sum())
            b["weights"] += s.numel()
        rows = [{"block": name, "label": short_block_name(name), **v}
                for name, v in sorted(blocks.items(), key=lambda kv: block_sort_key(kv[0]))]
        return {
            "objective": self.info.objective, "scope": self.info.scope,
            "matrices": len(self.scores), "weights": self.total_weights,
            "positive_mass": sum(r["positive_mass"] for r in rows),
            "negative_mass": sum(r["negative_mass"] for r in rows),
            "positive": sum(r["positive"] for r in rows), "negative": sum(r["negative"] for r in rows),
            "blocks": rows, "unet_calls": self.info.unet_calls, "seconds": self.info.seconds,
        }

    def summary_text(self) -> str:
        s = self.summary()
        lines = [f"CAD attribution ({s['objective']}, scope {s['scope']}): {s['weights']:,} weights in "
                 f"{s['matrices']} matrices; {s['positive']:,} positive (mass {s['positive_mass']:.4g}), "
                 f"{s['negative']:,} negative (mass {s['negative_mass']:.4g})."]
        if self.info.scope_notice:
            lines.append(f"Note: {self.info.scope_notice}")
        for r in s["blocks"]:
            lines.append(f"  {r['block']:<18} +{r['positive_mass']:.4g} / {r['negative_mass']:.4g}  "
                         f"({r['weights']:,} weights)")
        return "\n".join(lines)


def sum_attributions(attributions: list["Attribution"]) -> "Attribution":
    """Scores added key by key: one attribution for several prompts of a concept (e.g. every colour of
    a shape), or several concepts to erase together."""
    if not attributions:
        raise CADError("Nothing to sum: give at least one attribution.")
    first = attributions[0]
    for other in attributions[1:]:
        require_same_model(other.fingerprint, first.fingerprint, "One of these attributions", "the first one",
                           "Only attributions of the same model can be summed.")
        if set(other.scores) != set(first.scores):
            raise CADError("These attributions score different weights (different scopes); attribute them "
                           "with the same scope to sum them.")
        if other.info.objective != first.info.objective:
            raise CADError(f"These attributions use different objectives ({first.info.objective} and "
                           f"{other.info.objective}), whose scores are on different scales; sum "
                           f"attributions made with the same objective.")
    if len(attributions) == 1:
        return first
    scores = {k: sum(a.scores[k] for a in attributions) for k in first.scores}
    info = first.info.replace(summed_from=sum(a.info.summed_from or 1 for a in attributions))
    # Visited latents belong to one prompt pair each: a sum has no single J to re-measure them with.
    return Attribution(scores, first.fingerprint, info, [])


class GradientAccumulator:
    """fp32 sums of dJ/dw for the scoped weights only, whatever dtype the model computes in."""

    def __init__(self, shapes: Mapping[str, tuple], device: torch.device | str = "cpu"):
        self.sums = {k: torch.zeros(tuple(shape), dtype=torch.float32, device=device) for k, shape in shapes.items()}
        self.unscale = 1.0  # the loss scale the gradients arrive multiplied by (TrajectoryPlan.loss_scale)

    def add(self, key: str, grad: torch.Tensor) -> None:
        target = self.sums[key]
        target.add_(grad.detach().to(device=target.device, dtype=torch.float32), alpha=1.0 / self.unscale)

    def alpha(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """alpha = w * sum_t dJ_t/dw; J is a sum over visits, so one multiply at the end suffices."""
        return {k: weights[k].detach().float().cpu() * g.cpu() for k, g in self.sums.items()}


class ParameterGradientCapture:
    """Routes gradients of a plain torch module's scoped parameters into an accumulator.

    Only the scoped parameters require grad while it is active; the others get no gradient buffer,
    and the scoped ones give theirs up right after accumulation. Use as a context manager.
    """

    def __init__(self, module: torch.nn.Module, keys, accumulator: GradientAccumulator):
        self.params = dict(module.named_parameters())
        missing = [k for k in keys if k not in self.params]
        if missing:
            raise CADError(f"These scoped weights are not parameters of the module: {missing[:5]}")
        self.keys, self.acc = list(keys), accumulator
        self._saved, self._saved_grads, self._handles = {}, {}, []

    def __enter__(self):
        self._saved = {k: p.requires_grad for k, p in self.params.items()}
        # A .grad left over from earlier work would be summed into the first captured gradient.
        self._saved_grads = {k: self.params[k].grad for k in self.keys}
        for k, p in self.params.items():
            p.requires_grad_(k in self.keys)
        for k in self.keys:
            self.params[k].grad = None
        for k in self.keys:
            self._handles.append(self.params[k].register_post_accumulate_grad_hook(self._sink(k)))
        return self

    def _sink(self, key):
        def hook(p):
            self.acc.add(key, p.grad)
            p.grad = None
        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        for k, p in self.params.items():
            p.requires_grad_(self._saved[k])
        for k, grad in self._saved_grads.items():
            self.params[k].grad = grad
        return False


class GradientCapture:
    """Where attribute() gets dJ/dw of the scoped weights from, and the weights alpha multiplies.

    ModuleCapture does it for a plain torch module (its parameters' gradients); the ComfyUI bridge's
    ProbeCapture does it with weight wrappers on a ComfyUI model. attribute() owns the accumulator and hands it
    to capturing() for the run.
    """

    shapes: Mapping[str, tuple]          # the scoped weights: name -> shape
    device: torch.device | str = "cpu"   # where the fp32 gradient sums live

    def capturing(self, accumulator: "GradientAccumulator"):
        """A context manager inside which backward passes add dJ/dw of every scoped weight to `accumulator`."""
        raise NotImplementedError

    def weights(self) -> Mapping[str, torch.Tensor]:
        """The weights alpha multiplies, read after the run (the values the forward passes used)."""
        raise NotImplementedError


class ModuleCapture(GradientCapture):
    """The scoped parameters (names as in module.named_parameters()) of a plain torch module."""

    def __init__(self, module: torch.nn.Module, scope: Sequence[str]):
        params = dict(module.named_parameters())
        missing = [k for k in scope if k not in params]
        if missing:
            raise CADError(f"These scoped weights are not parameters of the module: {missing[:5]}")
        if not scope:
            raise CADError("The scope is empty: name at least one parameter to attribute.")
        self.module, self.scope = module, list(scope)
        self.shapes = {k: tuple(params[k].shape) for k in self.scope}
        self.device = params[self.scope[0]].device

    def capturing(self, accumulator):
        return ParameterGradientCapture(self.module, self.scope, accumulator)

    def weights(self):
        params = dict(self.module.named_parameters())
        return {k: params[k] for k in self.scope}


PARAMETERIZATIONS = {"variance_exploding": VarianceExploding, "flow": FlowMatching}


def attribute(model: "torch.nn.Module | GradientCapture", concept: Callable, base: Callable, *,
              sigmas, parameterization, objective: str = "concept_gap", scope: Sequence[str] | None = None,
              guidance: float = 3.0, schedule: str = "single", samples: int = 1, seed: int = 0,
              noise_shape: Sequence[int] | None = None, make_noise: Callable | None = None,
              images: torch.Tensor | None = None, loss_scale: float = 1.0,
              on_progress: Callable[[int, int], None] | None = None, fingerprint: str = "",
              info_fields: dict | None = None, refuse_all_zero: bool = True) -> Attribution:
    """Score every scoped weight for a concept: alpha = w * dJ/dw, summed over the visited timesteps.

    model: a torch module whose parameters named in `scope` are scored, or a GradientCapture.
    concept, base: (x_t, sigma) -> x0 prediction with the concept's and the base conditioning.
    sigmas: descending noise levels, last one 0 (T steps = len(sigmas) - 1).
    parameterization: how latents are noised: "variance_exploding" (x0 + sigma*eps: eps/v models),
        "flow" ((1-sigma)*x0 + sigma*eps), or a noise.* object.
    objective: a name in cad_core.OBJECTIVES. With one that takes_images, `images` are clean concept latents
        (one per sample, reused round-robin); without them the model's own guided samples stand in.
    Noise: make_noise(sample, restart) -> a noise latent, or noise_shape and seed for seeded normal noise.
    info_fields: AttributionInfo fields to record besides the run's own (the ComfyUI bridge's sampler and latent).
    refuse_all_zero: an attribution whose every score is 0 is an error (check_not_all_zero); callers that join
        several partial runs check the joined result instead.
    """
    record = objective_named(objective)
    if samples < 1:
        raise CADError(f"samples must be at least 1, got {samples}.")
    capture = model if isinstance(model, GradientCapture) else ModuleCapture(model, scope or [])
    if isinstance(parameterization, str):
        if parameterization not in PARAMETERIZATIONS:
            raise CADError(f"Unknown parameterization '{parameterization}'. Expected one of: "
                           f"{', '.join(PARAMETERIZATIONS)}.")
        parameterization = PARAMETERIZATIONS[parameterization]()
    if make_noise is None:
        if noise_shape is None:
            raise CADError("attribute() needs the latent's shape (noise_shape) or make_noise(sample, restart).")
        make_noise = seeded_noise(noise_shape, seed)
    plan = TrajectoryPlan(torch.as_tensor(sigmas), parameterization, guidance, schedule, make_noise,
                          on_progress or (lambda done, total: None), loss_scale=loss_scale)
    accumulator = GradientAccumulator(capture.shapes, device=capture.device)
    accumulator.unscale = plan.loss_scale
    counts, started = CallCounts(), time.perf_counter()
    per_sample = record.units_of_work(plan, images is None)
    with capture.capturing(accumulator):
        for sample in range(samples):
            # Progress runs once from 0 to the total over all samples, not once per sample.
            sample_plan = replace(plan, on_progress=lambda done, total, offset=sample * per_sample:
                                  plan.on_progress(offset + done, samples * per_sample))
            image = None if images is None else images[sample % images.shape[0]].unsqueeze(0)
            record.visit(concept, base, sample_plan, counts, image, sample)
    if not math.isfinite(counts.objective_total):
        raise CADError(
            f"The objective became {counts.objective_total} during attribution: the model produced NaN/inf "
            f"predictions. Check the model (a broken or fp16-overflowing checkpoint?) and try again.")
    scores = accumulator.alpha(capture.weights())
    info = AttributionInfo(objective=record.name, steps=plan.steps, guidance=plan.guidance, schedule=plan.schedule,
                           samples=samples, parameterization=plan.parameterization.name, loss_scale=plan.loss_scale,
                           unet_calls=counts.as_dict(), seconds=round(time.perf_counter() - started, 3),
                           scope=", ".join(capture.shapes), pack_version=PACK_VERSION).replace(**(info_fields or {}))
    result = Attribution(scores, fingerprint, info, counts.points)
    result.check_usable()
    if refuse_all_zero:
        check_not_all_zero(result)
    return result


def check_not_all_zero(attribution: Attribution) -> None:
    """Every score exactly 0 means J never depended on the scoped weights: no mask could be chosen from it."""
    if all(not bool(s.any()) for s in attribution.scores.values()):
        raise CADError(
            f"Every score of this attribution is exactly 0 ({attribution.total_weights:,} weights): the objective "
            f"did not depend on these weights at any visited step, so no erase or amplify mask can be chosen from "
            f"it. Common causes: 'positive' and 'base' are the same prompt (the concept gap is then 0); a flow model "
            f"(SD3, Flux) attributed with steps=1 (at the first noise level its predicted noise does not depend on "
            f"the weights: use steps >= 2); a scope of weights the prompts never reach. Change that and run CAD "
            f"Attribute again.")


def seeded_noise(shape: Sequence[int], seed: int) -> Callable[[int, int], torch.Tensor]:
    """make_noise for attribute(): standard normal noise of `shape`, one stream per (sample, restart)."""
    def make_noise(sample: int, restart: int) -> torch.Tensor:
        # Wrapped to 64 bits: seeds may be up to 2**64 - 1, which torch refuses to go past.
        g = torch.Generator().manual_seed((seed + sample + 100_003 * restart) % 2**64)
        return torch.randn(tuple(shape), generator=g)
    return make_noise

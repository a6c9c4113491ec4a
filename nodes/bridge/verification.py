"""CAD Verify: J re-measured at the latents CAD Attribute visited, on the MODEL as it is or with a mask really
applied, with both denoisers prepared exactly as KSampler prepares them."""
import torch

import comfy.samplers

from ...cad_core import Attribution, CADError, Mask, verify_ablation
from ...cad_core.objectives import base_predictions, measure_objective
from .guided_run import AttributionSampler
from .masks import apply_mask
from .model_info import check_fingerprint, parameterization_of


def measure_on(model, positive, base, attribution: Attribution, mask: Mask | None = None, strength: float = 1.0,
               held_base: list[torch.Tensor] | None = None):
    """J at the attribution's own visited latents, on `model` or on `model` with `mask` applied.

    held_base (concept_gap only; from held_base_on): the unedited model's base predictions, used instead of
    the edited model's, as the attribution's stop-gradient holds them, so the measured change is the one
    alpha estimates to first order.
    """
    _check_measurable(model, attribution)
    objective, parameterization = attribution.info.objective, parameterization_of(model)
    target = model if mask is None else apply_mask(model, mask, strength)
    return _at_visited_points(target, positive, base, attribution, lambda concept, base_fn: measure_objective(
        objective, concept, base_fn, parameterization, attribution.points, held_base=held_base))


def held_base_on(model, positive, base, attribution: Attribution) -> list[torch.Tensor]:
    """`model`'s base predictions at the attribution's visited latents, computed once for many measure_on."""
    _check_measurable(model, attribution)
    return _at_visited_points(model, positive, base, attribution,
                              lambda concept, base_fn: base_predictions(base_fn, attribution.points))


def _check_measurable(model, attribution: Attribution) -> None:
    if not attribution.points:
        raise CADError("This attribution carries no visited latents (attributions loaded from files or summed "
                       "from several do not), so its prediction cannot be checked. Verify an attribution straight "
                       "from CAD Attribute.")
    check_fingerprint(model, attribution.fingerprint, "attribution")


def _at_visited_points(model, positive, base, attribution: Attribution, measure):
    """measure(concept, base) with both denoisers prepared exactly as KSampler prepares them."""
    result = {}

    def run(concept, base_fn, sigmas, noise, latent):
        result["value"] = measure(concept, base_fn)
        return latent

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, base)
    guider.set_cfg(1.0 if attribution.info.guidance is None else attribution.info.guidance)
    start = torch.zeros(attribution.points[0].x_t.shape)
    sigmas = torch.stack([attribution.points[0].sigma.float(), torch.zeros(())])
    guider.sample(start, start, AttributionSampler(run), sigmas, seed=0, disable_pbar=True)
    return result["value"]


def verify_on(model, positive, base, attribution: Attribution, mask: Mask, strength: float = 1.0):
    """Really ablate `mask` and compare the measured change of J with the attribution's prediction."""
    return verify_ablation(lambda m, s: measure_on(model, positive, base, attribution, m, s),
                           attribution, mask, strength)

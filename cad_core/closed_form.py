"""A closed-form weight edit for a linear layer: make the layer answer the concept's inputs as it answers a guide's,
while it keeps answering the inputs of the concepts to keep as before (docs/method.md, "Closed-form edit").

For a weight W (out x d) and input rows e_i (the concept), g_i (its guide, row for row) and k_j (kept concepts),
the edited W' minimises

    sum_i |W' e_i - W t_i|^2 + preserve * sum_j |W' k_j - W k_j|^2 + ridge * |W' - W|_F^2,
    t_i = g_i + overshoot * (g_i - e_i)

(with overshoot 0 this is UCE's objective, Gandikota et al., WACV 2024). The defaults are CAD Erase Concept's
(cad_core.EraseSettings); a caller after UCE's own objective passes overshoot=0. Setting the gradient to zero gives
W' A = W (T^T E + preserve K^T K + ridge I) with A = E^T E + preserve K^T K + ridge I, so the change is

    dW = W' - W = W (T - E)^T E A^-1,

a product of an (out x n) and an (n x d) factor: at most rank n, the number of concept rows. `overshoot` > 0 aims
past the guide, away from the concept (what negative guidance does at sampling time), for a guide that still
shows the concept (on the toy world, 'a red' draws a circle).

For cross-attention K/V the inputs are the text encoder's rows for the prompts, so the edit needs no pictures.
Which matrices to edit is the caller's choice; `located_keys` takes them from a CAD attribution.
"""
import math
import numbers
from typing import Mapping

import torch

from .attribution import Attribution
from .erase_settings import DEFAULT_ERASE
from .errors import CADError


def closed_form_delta(weight: torch.Tensor, erase: torch.Tensor, guide: torch.Tensor, keep: torch.Tensor | None,
                      preserve: float = DEFAULT_ERASE.preserve, ridge: float = DEFAULT_ERASE.ridge,
                      overshoot: float = DEFAULT_ERASE.overshoot) -> torch.Tensor:
    """dW for one weight (out x d), in fp32 on the weight's device, from input rows erase (n x d), guide (n x d,
    row i is where row i of erase should go) and keep (m x d, may be None or empty). Solved in fp64."""
    _check_inputs(weight, erase, guide, keep)
    for name, value, low in (("preserve", preserve, 0.0), ("ridge", ridge, 0.0), ("overshoot", overshoot, 0.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < low:
            raise CADError(f"{name} must be a finite number >= {low:g}, got {value!r}.")
    if ridge == 0 and (keep is None or not keep.numel()):
        raise CADError("With no concepts to keep, ridge must be > 0: otherwise nothing holds the rest of the layer "
                       "in place and the solve is ill-posed.")
    w = weight.detach().to(torch.float64)
    e = erase.detach().to(w.device, torch.float64)
    g = guide.detach().to(w.device, torch.float64)
    target = g + float(overshoot) * (g - e)
    a = e.T @ e + float(ridge) * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    if keep is not None and keep.numel():
        k = keep.detach().to(w.device, torch.float64)
        a = a + float(preserve) * (k.T @ k)
    # dW A = W (T - E)^T E; A is symmetric positive (semi)definite, so solve A X = (W (T - E)^T E)^T
    rhs = (w @ (target - e).T) @ e
    delta = torch.linalg.solve(a, rhs.T).T
    if not torch.isfinite(delta).all():
        raise CADError("The closed-form edit came out non-finite (the inputs span too little of the layer for the "
                       "ridge given). Raise ridge, or give more concepts to keep.")
    return delta.to(torch.float32)


def closed_form_edit(weights: Mapping[str, torch.Tensor], erase: torch.Tensor, guide: torch.Tensor,
                     keep: torch.Tensor | None, preserve: float = DEFAULT_ERASE.preserve,
                     ridge: float = DEFAULT_ERASE.ridge, overshoot: float = DEFAULT_ERASE.overshoot
                     ) -> dict[str, torch.Tensor]:
    """closed_form_delta for each weight of `weights` (all fed by the same inputs, e.g. every cross-attention K
    and V of a UNet, which all read the text encoder's rows)."""
    if not weights:
        raise CADError("There is no weight to edit: the scope selected no matrices.")
    return {key: closed_form_delta(w, erase, guide, keep, preserve, ridge, overshoot) for key, w in weights.items()}


def located_keys(attribution: Attribution, keys, mass_share: float = DEFAULT_ERASE.mass_share) -> list[str]:
    """The fewest of `keys` that together hold `mass_share` of the attribution's positive mass over `keys`,
    largest first: where CAD says the concept lives."""
    if isinstance(mass_share, bool) or not isinstance(mass_share, numbers.Real) or not 0.0 < mass_share <= 1.0:
        raise CADError(f"mass_share must be a number in (0, 1], got {mass_share!r}.")
    keys = list(keys)
    missing = [k for k in keys if k not in attribution.scores]
    if missing:
        raise CADError(f"The attribution does not score {len(missing)} of the matrices to choose from, e.g. "
                       f"'{missing[0]}': attribute the concept with a scope that covers them.")
    mass = {k: float(attribution.scores[k].float().clamp(min=0).sum()) for k in keys}
    total = sum(mass.values())
    if total <= 0:
        raise CADError("The attribution has no positive scores in these matrices, so it cannot say where the "
                       "concept lives. Check the prompts of CAD Attribute (the concept and its base).")
    chosen, held = [], 0.0
    for key in sorted(keys, key=lambda k: -mass[k]):
        chosen.append(key)
        held += mass[key]
        if held >= mass_share * total - 1e-12:
            break
    return chosen


def _check_inputs(weight, erase, guide, keep) -> None:
    if weight.ndim != 2:
        raise CADError(f"A closed-form edit needs a linear layer's 2-D weight, got shape {tuple(weight.shape)}.")
    d = weight.shape[1]
    if erase.ndim != 2 or erase.shape[1] != d or not erase.shape[0]:
        raise CADError(f"The concept's inputs must be rows of width {d} (the layer's input size), got "
                       f"{tuple(erase.shape)}.")
    if guide.shape != erase.shape:
        raise CADError(f"The guide's inputs must pair up row for row with the concept's: {tuple(guide.shape)} vs "
                       f"{tuple(erase.shape)}.")
    if keep is not None and keep.numel() and (keep.ndim != 2 or keep.shape[1] != d):
        raise CADError(f"The kept concepts' inputs must be rows of width {d}, got {tuple(keep.shape)}.")
    for name, t in (("concept", erase), ("guide", guide), ("kept", keep)):
        if t is not None and t.numel() and not torch.isfinite(t).all():
            raise CADError(f"The {name} inputs hold NaN or inf values.")

"""Choosing which components to ablate from an attribution (docs/method.md, section 5).

Erase ablates the most positive scores, Amplify the most negative. A component is only ever
selected when its score has the right sign (the sign guard), so a ratio can select fewer than k.
"""
import numbers

import torch

from .attribution import Attribution
from .errors import CADError
from .fingerprint import require_same_model
from .mask import Mask, protect, require_shared_weights, split_flat_indices
from .mask_info import MaskInfo

GRANULARITIES = ("per_row", "per_matrix", "global")
PROTECT_MODES = ("subtract", "drop")
DIRECTIONS = {"erase": 1.0, "amplify": -1.0}


def select_components(attribution: Attribution, mode: str, ratio: float, granularity: str = "per_row") -> Mask:
    """Select components to ablate.

    per_row    : in each output row, k = int(ratio * in_features) entries (the reference's default;
                 rows with k = 0 contribute nothing, so small ratios select little).
    per_matrix : in each weight, k = int(ratio * numel) entries.
    global     : k = int(ratio * total scoped weights) entries over the whole scope.
    """
    if mode not in DIRECTIONS:
        raise CADError(f"Unknown mask mode '{mode}'. Expected 'erase' or 'amplify'.")
    if granularity not in GRANULARITIES:
        raise CADError(f"Unknown granularity '{granularity}'. Expected one of: {', '.join(GRANULARITIES)}.")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0.0 < float(ratio) <= 1.0:
        raise CADError(f"ratio must be a number in (0, 1] (a fraction of weights, e.g. 0.001 = 0.1%), got {ratio!r}.")
    ratio = float(ratio)
    attribution.check_usable()
    sign = DIRECTIONS[mode]

    if granularity == "global":
        indices = _select_global(attribution.scores, sign, ratio)
    else:
        pick = _select_rows if granularity == "per_row" else _select_matrix
        indices = {k: pick(s, sign, ratio) for k, s in attribution.scores.items()}
    shapes = {k: tuple(s.shape) for k, s in attribution.scores.items()}
    info = MaskInfo(mode=mode, ratio=ratio, granularity=granularity, scoped_weights=attribution.total_weights,
                    objective=attribution.info.objective, scope=attribution.info.scope)
    return Mask(indices, shapes, attribution.fingerprint, info)


def _select_rows(scores: torch.Tensor, sign: float, ratio: float) -> torch.Tensor:
    rows = (scores * sign).reshape(scores.shape[0], -1) if scores.ndim > 1 else (scores * sign).reshape(1, -1)
    k = int(ratio * rows.shape[1])
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    values, cols = rows.topk(k, dim=1)
    row_ids = torch.arange(rows.shape[0]).unsqueeze(1).expand_as(cols)
    flat = (row_ids * rows.shape[1] + cols)[values > 0]
    return flat.sort().values


def _select_matrix(scores: torch.Tensor, sign: float, ratio: float) -> torch.Tensor:
    flat = (scores * sign).reshape(-1)
    return _top_positive(flat, int(ratio * flat.numel()))


def _select_global(scores: dict, sign: float, ratio: float) -> dict:
    flat = torch.cat([(s * sign).reshape(-1) for s in scores.values()])
    chosen = _top_positive(flat, int(ratio * flat.numel()))
    return split_flat_indices(chosen, {k: s.numel() for k, s in scores.items()})


def _top_positive(flat: torch.Tensor, k: int) -> torch.Tensor:
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    values, idx = flat.topk(min(k, flat.numel()))
    return idx[values > 0].sort().values


def select_protected(attribution: Attribution, mode: str, ratio: float, granularity: str = "per_row", keep=(),
                     protect_mode: str = "subtract", weight: float = 1.0) -> Mask:
    """select_components while keeping other concepts (one attribution each in `keep`).

    subtract: select on contrast() scores (a margin: the ratio is still reached). drop: select as usual, then
    remove every component positive for a kept concept (mask.protect; a veto). No `keep`: select_components.
    """
    if protect_mode not in PROTECT_MODES:
        raise CADError(f"Unknown protect_mode '{protect_mode}'. Expected one of: {', '.join(PROTECT_MODES)}.")
    keep = list(keep)
    if keep and protect_mode == "subtract":
        mask = select_components(contrast(attribution, keep, mode, weight), mode, ratio, granularity)
        mask.info = mask.info.replace(protect_mode="subtract", protect_weight=float(weight), protected=len(keep))
        return mask
    mask = select_components(attribution, mode, ratio, granularity)
    for reference in keep:
        mask = protect(mask, reference)
    if keep:
        mask.info = mask.info.replace(protect_mode="drop", protected=len(keep))
    return mask


def contrast(attribution: Attribution, protected, mode: str = "erase", weight: float = 1.0) -> Attribution:
    """Scores for selecting what carries the concept but none of the protected ones (docs/method.md, section 5).

    `protected` is one attribution or a list, one per concept to keep. Each attribution is divided by its own
    mass (the sum of its scores of the selected sign for the concept, of its positive scores for a protected
    one), so concepts of different loudness compare. From each component's share of the concept, `weight` x its
    largest share of any protected concept is taken off: a component that carries the concept and a protected
    one about equally drops out; one that carries only the concept stays on top. Protected concepts count one
    by one (the largest share), not summed: a sum dilutes a component that matters to one of them alone (on the
    toy world, summing the three other shapes first kept far less of them). This is "erase A, keep B" as a
    margin; the 'drop' rule (mask.protect) vetoes any component with a positive score for B, which on a small
    model is nearly every component that matters for A.
    """
    if mode not in DIRECTIONS:
        raise CADError(f"Unknown mask mode '{mode}'. Expected 'erase' or 'amplify'.")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0.0 <= float(weight) <= 100.0:
        raise CADError(f"protect_weight must be a number from 0 to 100, got {weight!r}.")
    protected = [protected] if isinstance(protected, Attribution) else list(protected)
    for other in protected:
        require_same_model(other.fingerprint, attribution.fingerprint, "A protect attribution", "the attribution",
                           "Attribute every concept on the same model.")
        require_shared_weights(other, attribution.scores)
    sign = DIRECTIONS[mode]
    concept_mass = _mass(attribution, sign)
    if concept_mass <= 0:
        raise CADError(f"This attribution has no {'positive' if sign > 0 else 'negative'} scores, so there is "
                       f"nothing to {mode}. Check the prompts of CAD Attribute (the concept and its base).")
    shares = [(other, _mass(other, 1.0)) for other in protected]
    scores = {}
    for key, s in attribution.scores.items():
        kept = [other.scores[key].float().clamp(min=0) / mass for other, mass in shares
                if mass > 0 and key in other.scores]
        share = s.float() / concept_mass
        if kept:
            share = share - sign * float(weight) * torch.stack(kept).amax(0)
        scores[key] = share
    info = attribution.info.replace(protect_mode="subtract", protect_weight=float(weight),
                                    protected_concepts=len(protected))
    return Attribution(scores, attribution.fingerprint, info, [])


def _mass(attribution: Attribution, sign: float) -> float:
    return sum(float((s.float() * sign).clamp(min=0).sum()) for s in attribution.scores.values())

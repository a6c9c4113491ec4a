"""Checking the linear estimate against reality: really ablate, re-measure J, compare.

alpha_i ~ J(w) - J(w with w_i := 0), so ablating a set S with strength s (w -> (1 - s) w) is predicted
to change J by -s * sum_{i in S} alpha_i. The paper reports Pearson r = 0.506 between predicted and
measured changes over random ablation sets.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .attribution import Attribution
from .errors import CADError
from .mask import Mask, split_flat_indices
from .mask_info import MaskInfo

# measure(mask, strength) -> J on fixed latents and noise, with the mask applied (None = unedited).
Measure = Callable[[Optional[Mask], float], float]


@dataclass
class AblationCheck:
    predicted_change: float
    measured_change: float
    objective_before: float
    objective_after: float
    selected: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def predicted_change(attribution: Attribution, mask: Mask, strength: float = 1.0) -> float:
    total = 0.0
    for key, idx in mask.indices.items():
        if key not in attribution.scores:
            raise CADError(f"The mask selects weights in '{key}', which the attribution does not score.")
        total += float(attribution.scores[key].reshape(-1)[idx].double().sum())
    return -strength * total


def verify_ablation(measure: Measure, attribution: Attribution, mask: Mask, strength: float = 1.0) -> AblationCheck:
    before = measure(None, 0.0)
    after = measure(mask, strength)
    return AblationCheck(predicted_change(attribution, mask, strength), after - before, before, after, mask.count)


def random_mask(attribution: Attribution, size: int, generator: torch.Generator) -> Mask:
    """`size` components drawn uniformly from the scope (a control, and the faithfulness test's sets)."""
    sizes = {k: s.numel() for k, s in attribution.scores.items()}
    total = sum(sizes.values())
    if size > total:
        raise CADError(f"Cannot draw {size} components from a scope of {total} weights.")
    flat = torch.randperm(total, generator=generator)[:size].sort().values
    indices = {k: idx for k, idx in split_flat_indices(flat, sizes).items() if idx.numel()}
    shapes = {k: tuple(s.shape) for k, s in attribution.scores.items()}
    return Mask(indices, shapes, attribution.fingerprint, MaskInfo(mode="random", granularity="random",
                                                                   scoped_weights=total))


def faithfulness(measure: Measure, attribution: Attribution, sets: int, set_size: int, seed: int = 0,
                 strength: float = 1.0) -> dict:
    """Pearson r between predicted and measured change of J over `sets` random ablation sets."""
    g = torch.Generator().manual_seed(seed)
    before = measure(None, 0.0)
    predicted, measured = [], []
    for _ in range(sets):
        m = random_mask(attribution, set_size, g)
        predicted.append(predicted_change(attribution, m, strength))
        measured.append(measure(m, strength) - before)
    return {"pearson_r": pearson(predicted, measured), "predicted": predicted, "measured": measured,
            "sets": sets, "set_size": set_size, "strength": strength}


def pearson(xs, ys) -> float:
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).item()
    return float((x * y).sum() / denom) if denom > 0 else float("nan")

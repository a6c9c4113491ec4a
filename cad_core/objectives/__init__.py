"""The objectives J that CAD differentiates: one record (Objective) per objective, one module each.

Every objective is oriented so that J grows with the concept: alpha = w * dJ/dw then means the same
for both (alpha > 0 carries the concept). Each J is a mean over latent elements (like the reference's MSE),
summed over the visited timesteps. The attribution loop, CAD Verify, progress counting, the CAD Attribute
node's choices and tooltip and the README read these records. Adding an objective = a module here with its
record, registered below, its tests and its README line (docs/method.md says what each one means).
"""
from typing import Sequence

import torch

from ..errors import CADError
from .concept_gap import CONCEPT_GAP
from .concept_gap_full import CONCEPT_GAP_FULL
from .concept_likelihood import CONCEPT_LIKELIHOOD
from .record import Objective

# name -> record; iterating gives the names in the order the node offers them (the first is the default)
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (CONCEPT_GAP, CONCEPT_LIKELIHOOD, CONCEPT_GAP_FULL)}


def objective_named(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise CADError(f"Unknown objective '{name}'. Expected one of: {', '.join(OBJECTIVES)}.") from None


def measure_objective(objective: str, concept, base, parameterization, points,
                      held_base: Sequence[torch.Tensor] | None = None) -> float:
    """J summed over recorded visits, without gradients: the same latents before and after an edit.

    held_base: base predictions to use instead of calling `base` (see base_predictions), for objectives whose
    J holds the base branch (stop-gradient): the measured change is then the one alpha estimates.
    """
    record = objective_named(objective)
    total = 0.0
    with torch.no_grad():
        for i, visit in enumerate(points):
            x0_base = held_base[i] if (held_base is not None and record.holds_base) else None
            total += float(record.measure(parameterization, visit, concept, base, x0_base))
    return total


def base_predictions(base, points) -> list[torch.Tensor]:
    """The base branch's predictions at recorded visits, to hold them fixed while the model is edited."""
    with torch.no_grad():
        return [base(v.x_t, v.sigma).detach() for v in points]


def objectives_help() -> str:
    """The node's one-line tooltip: each objective and what it is for (the help page explains them)."""
    return "What J measures: " + ", ".join(f"{o.name} (for {o.purpose})" for o in OBJECTIVES.values()) + "."


__all__ = ["OBJECTIVES", "Objective", "objective_named", "measure_objective", "base_predictions", "objectives_help"]

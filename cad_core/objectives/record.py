"""What the rest of the pack needs to know about an objective."""
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Objective:
    name: str
    # what it is for (the node's one-line tooltip names it), J as a formula (markdown) and what ablating its
    # components does (the README's objectives list shows all three; the help page says what J measures in words)
    purpose: str
    formula: str
    effect: str
    # visit(concept, base, plan, counts, images, sample): walk the plan's sigmas, backpropagate J at each
    # visited point, record it in counts (CallCounts: UNet calls, J, the Visit records CAD Verify re-measures)
    visit: Callable[..., None]
    # measure(parameterization, visit, concept, base, held_base_x0_or_None) -> J at one recorded Visit, no grad
    measure: Callable[..., torch.Tensor]
    # units_of_work(plan, generates_samples) -> progress units (UNet steps) one sample takes
    units_of_work: Callable[..., int]
    # J holds the base branch fixed (stop-gradient): CAD Verify can hold it too when it re-measures
    holds_base: bool
    # J is measured on concept images (concept_latent); without them the model's own samples stand in
    takes_images: bool
    # J compares the concept's prediction with the base's: identical concept and base conditionings make it 0
    contrasts_base: bool
    # differentiated forwards whose graphs are alive together at each backward pass (concept_gap_full: both
    # branches): what one step keeps for backward is that many forwards' worth (memory_budget_mb counts it)
    differentiated_forwards: int = 1

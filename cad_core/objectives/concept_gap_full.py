"""concept_gap_full: the concept gap `Σ_t ‖ε(x_t, c) − ε(x_t, c_base)‖²` differentiated through BOTH branches.

concept_gap holds the base branch (stop-gradient), as the paper does; but a real ablation changes the base
prediction too, and on the toy model that moves the measured gap about as much as the concept branch does
(benchmarks/results/efficacy_faithfulness.md: r = 0.14 with both branches really edited). Differentiating
both branches makes alpha the first-order change of the gap a real ablation makes. It costs a second backward
pass per visited step. Same trajectories, same schedules as concept_gap.
"""
from ..trajectory import CallCounts, TrajectoryPlan, Visit
from .concept_gap import _gap, units_of_work, visit_gap
from .record import Objective


def visit(concept, base, plan: TrajectoryPlan, counts: CallCounts, images=None, sample: int = 0) -> None:
    visit_gap(concept, base, plan, counts, sample, hold_base=False)


def measure(parameterization, v: Visit, concept, base, held_base=None):
    return _gap(parameterization, v.x_t, v.sigma, concept(v.x_t, v.sigma), base(v.x_t, v.sigma))


CONCEPT_GAP_FULL = Objective(
    name="concept_gap_full",
    purpose="erasing",
    formula="`J = Σ_t ‖ε(x_t, c) − ε(x_t, c_base)‖²` at the same points as concept_gap, without the stop-gradient",
    effect="Its positive components shrink the gap as a real ablation measures it, base branch included.",
    visit=visit, measure=measure, units_of_work=units_of_work, holds_base=False, takes_images=False,
    contrasts_base=True, differentiated_forwards=2)

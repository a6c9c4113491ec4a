"""Memory budget for attribution: what CAD may allocate beyond the loaded model, and how a scope is cut into chunks
attributed in successive passes so that it fits.

Two parts count against the budget:
- what one differentiated step keeps for its backward pass (activations, and the weight copies layers save),
  measured on the real model and latent before the run (nodes/bridge/activation_memory.py); with gradient
  checkpointing that is one block's worth plus every block's inputs;
- per scoped weight, an fp32 gradient sum (on the model's device) and, when the forward computes with a weight the
  module does not hold itself (cast to another dtype or device, patched at cast time), an fp32 copy of it for
  alpha = w * dJ/dw: at most 8 bytes per weight. Flux's feed-forward scope (about 7.2e9 weights) needs about 58 GB
  of that, far more than a 24 GB GPU has next to the model.
With a budget, the scope is cut, in model order, into chunks whose state fits in what the activations leave; each
chunk is attributed by its own pass over the same trajectories (same seed, same noise, same model), and the
per-chunk scores are joined. A weight's score depends only on the trajectories and on J, never on which other
weights are probed, so the joined result equals the one-pass result; the price is one full set of UNet calls per
pass.
"""
import math
from typing import Sequence

from .attribution import Attribution
from .errors import CADError

BYTES_PER_SCOPED_WEIGHT = 8  # fp32 gradient accumulator + fp32 weight copy (the most a weight can need)
MB = 1 << 20


def scope_bytes(shapes: Sequence[tuple]) -> int:
    """CAD's own per-pass memory for weights of these shapes (excluding the model and activations)."""
    return sum(math.prod(s) for s in shapes) * BYTES_PER_SCOPED_WEIGHT


def plan_chunks(named_shapes: Sequence[tuple[str, tuple]], budget_bytes: float,
                activation_bytes: int = 0) -> list[list[str]]:
    """Cut the scope (key, shape) list, in order, into the fewest consecutive chunks whose state fits in the budget
    minus `activation_bytes` (what one differentiated step keeps for backward, measured by the caller).

    budget_bytes <= 0 means unlimited: one chunk. A single matrix larger than what is left cannot be split (its score
    needs its whole gradient), so that is an error naming the smallest budget that works.
    """
    named_shapes = list(named_shapes)
    if not named_shapes:
        raise CADError("Nothing to attribute: the scope is empty.")
    if budget_bytes is None or budget_bytes <= 0:
        return [[k for k, _ in named_shapes]]
    largest_key, largest_shape = max(named_shapes, key=lambda ks: math.prod(ks[1]))
    largest = scope_bytes([largest_shape])
    room = budget_bytes - activation_bytes
    if largest > room:
        activations = (f"one differentiated step keeps {activation_bytes / MB:,.2f} MB for its backward pass at this "
                       f"latent size (measured: activations and the weight copies layers save), and "
                       if activation_bytes else "")
        raise CADError(
            f"memory_budget_mb {budget_bytes / MB:g} is too small: {activations}the largest scoped matrix "
            f"'{largest_key}' {tuple(largest_shape)} alone needs {largest / MB:.2f} MB (fp32 gradient sum + fp32 "
            f"weight copy, {BYTES_PER_SCOPED_WEIGHT} bytes per weight). Set at least "
            f"{math.ceil((activation_bytes + largest) / MB)} MB, or 0 for no limit"
            + ("; gradient_checkpointing 'on' or a smaller latent keeps less for the backward pass." if activation_bytes
               else "."))
    chunks, current, used = [], [], 0
    for key, shape in named_shapes:
        need = scope_bytes([shape])
        if current and used + need > room:
            chunks.append(current)
            current, used = [], 0
        current.append(key)
        used += need
    chunks.append(current)
    return chunks


def join_chunks(parts: Sequence[Attribution], info_fields: dict | None = None) -> Attribution:
    """One attribution from per-chunk passes over the same trajectories.

    Scores are joined in pass order (= model order). UNet call counts and seconds are summed (they are the
    work done); J and the visited latents are those of the first pass (every pass visits the same ones).
    info_fields: AttributionInfo fields to set on the joined attribution besides those.
    """
    if not parts:
        raise CADError("No attribution passes to join.")
    fingerprints = {p.fingerprint for p in parts}
    if len(fingerprints) != 1:
        raise CADError(f"Attribution passes disagree about the model (fingerprints {sorted(fingerprints)}).")
    scores = {}
    for p in parts:
        overlap = set(scores) & set(p.scores)
        if overlap:
            raise CADError(f"Attribution passes overlap on {sorted(overlap)[:3]}; chunks must be disjoint.")
        scores.update(p.scores)
    first = parts[0]
    calls = dict(first.info.unet_calls or {})
    for field in ("forward_backward", "forward_no_grad", "visits"):
        calls[field] = sum(int((p.info.unet_calls or {}).get(field, 0)) for p in parts)
    info = first.info.replace(unet_calls=calls, passes=len(parts),
                              seconds=round(sum(float(p.info.seconds or 0.0) for p in parts), 3),
                              **(info_fields or {}))
    result = Attribution(scores, first.fingerprint, info, list(first.points))
    result.check_usable()
    return result

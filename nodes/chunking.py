"""CAD Attribute under a memory budget: the scope in chunks, one attribution pass per chunk.

Each pass is an ordinary `attribute_model` run restricted (by an exact-name regex scope) to one chunk;
every pass uses the same seed, so it samples the same trajectories, and the joined scores equal a
single-pass run's. See cad_core/budget.py for what the budget counts.
"""
import re

import comfy.model_base

from ..cad_core import CADError, resolve_scope
from ..cad_core.budget import MB, join_chunks, plan_chunks, scope_bytes
from .comfy_bridge import attribute_model, patchable_weights

# Model classes whose extra_conds read conditioning["pooled_output"] without a default (a bare KeyError deep
# inside ComfyUI otherwise).
_NEEDS_POOLED = tuple(getattr(comfy.model_base, name) for name in ("SDXL", "SDXLRefiner", "SD3", "Flux")
                      if hasattr(comfy.model_base, name))


def check_conditioning(model, positive, base) -> None:
    """Refuse conditioning the model's sampling path cannot use, naming what is missing and why."""
    kind = type(model.model).__name__
    needs_pooled = isinstance(model.model, _NEEDS_POOLED)
    for name, cond in (("positive", positive), ("base", base)):
        if not isinstance(cond, list) or not cond:
            raise CADError(f"'{name}' is not a CONDITIONING (a non-empty list of [tensor, dict] pairs).")
        if needs_pooled and any("pooled_output" not in (entry[1] or {}) for entry in cond):
            raise CADError(
                f"This {kind} model needs 'pooled_output' in its conditioning (SDXL, SD3 and Flux build their "
                f"vector input from it), but '{name}' has none. Encode '{name}' with the checkpoint's CLIP "
                f"(CLIP Text Encode / CLIPTextEncodeSDXL / CLIPTextEncodeFlux) instead of a hand-made tensor.")


def exact_keys_regex(keys) -> str:
    return "^(?:" + "|".join(re.escape(k) for k in keys) + ")$"


def plan_passes(model, scope: str, scope_regex: str, memory_budget_mb: float) -> list[list[str]]:
    """The chunks (lists of weight keys, model order) one attribution of `scope` is split into."""
    available = patchable_weights(model)
    shapes = dict(available)
    keys = resolve_scope(available, scope, scope_regex)
    return plan_chunks([(k, shapes[k]) for k in keys], (memory_budget_mb or 0) * MB)


def attribute_with_budget(model, positive, base, latent, *, memory_budget_mb=0, on_progress=None, **kwargs):
    """attribute_model, split into passes when the scope's per-pass state would exceed memory_budget_mb.

    memory_budget_mb <= 0 (the default) means no limit: exactly one attribute_model call.
    """
    if memory_budget_mb is None or memory_budget_mb < 0:
        raise CADError(f"memory_budget_mb must be 0 (no limit) or a positive number of MB, got {memory_budget_mb!r}.")
    check_conditioning(model, positive, base)
    kwargs = {"scope": "ff", **kwargs}  # the node's default scope
    scope, scope_regex = kwargs["scope"], kwargs.get("scope_regex", "") or ""
    chunks = plan_passes(model, scope, scope_regex, memory_budget_mb)
    if len(chunks) == 1:
        return attribute_model(model, positive, base, latent, on_progress=on_progress, **kwargs)

    shapes = dict(patchable_weights(model))
    passes, parts = len(chunks), []
    for i, chunk in enumerate(chunks):
        def progress(done, total, offset=i):
            if on_progress is not None:
                on_progress(offset * total + done, passes * total)
        parts.append(attribute_model(model, positive, base, latent, on_progress=progress,
                                     **{**kwargs, "scope": "regex", "scope_regex": exact_keys_regex(chunk)}))
    return join_chunks(parts, {
        "scope": scope, "scope_regex": scope_regex, "memory_budget_mb": memory_budget_mb,
        "chunk_sizes": [len(c) for c in chunks],
        "peak_scope_mb": round(max(scope_bytes([shapes[k] for k in c]) for c in chunks) / MB, 3)})

"""CAD Attribute under a memory budget: the scope in chunks, one attribution pass per chunk.

Each pass is an ordinary `attribute_model` run restricted (by an exact-name regex scope) to one chunk;
every pass uses the same seed, so it samples the same trajectories, and the joined scores equal a
single-pass run's. See cad_core/budget.py for what the budget counts.
"""
import re

import torch

from ..cad_core import CADError, resolve_scope
from ..cad_core.budget import MB, join_chunks, plan_chunks, scope_bytes
from .comfy_bridge import attribute_model, differentiable_source, patchable_weights

def needs_pooled_output(model) -> bool:
    """Whether the model's conditioning path reads conditioning["pooled_output"] without a default (a bare
    KeyError deep inside ComfyUI otherwise). Asked of the model itself, not looked up by class: SDXL and SD3
    need it everywhere, Flux needs it on ComfyUI 0.3.x but not on 0.33 (its encode_adm there uses a default)."""
    try:
        with torch.inference_mode():
            model.model.encode_adm(device=torch.device("cpu"), width=64, height=64, noise=torch.zeros((1, 4, 8, 8)))
    except KeyError as e:
        return "pooled_output" in str(e)
    except Exception:  # noqa: BLE001 - other needs show up in the real run with ComfyUI's own message
        return False
    return False


def check_conditioning(model, positive, base) -> None:
    """Refuse conditioning the model's sampling path cannot use, naming what is missing and why."""
    kind = type(model.model).__name__
    needs_pooled = None
    for name, cond in (("positive", positive), ("base", base)):
        if not isinstance(cond, list) or not cond:
            raise CADError(f"'{name}' is not a CONDITIONING (a non-empty list of [tensor, dict] pairs).")
        if any("pooled_output" not in (entry[1] or {}) for entry in cond):
            needs_pooled = needs_pooled_output(model) if needs_pooled is None else needs_pooled
            if needs_pooled:
                raise CADError(
                    f"This {kind} model needs 'pooled_output' in its conditioning (it builds its vector input "
                    f"from it), but '{name}' has none. Encode '{name}' with the checkpoint's CLIP (CLIP Text "
                    f"Encode / CLIPTextEncodeSDXL / CLIPTextEncodeFlux) instead of a hand-made tensor.")


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
    with differentiable_source(model) as source:  # one reload under Dynamic VRAM for all passes
        for i, chunk in enumerate(chunks):
            def progress(done, total, offset=i):
                if on_progress is not None:
                    on_progress(offset * total + done, passes * total)
            parts.append(attribute_model(model, positive, base, latent, on_progress=progress, source=source,
                                         **{**kwargs, "scope": "regex", "scope_regex": exact_keys_regex(chunk)}))
    return join_chunks(parts, {
        "scope": scope, "scope_regex": scope_regex, "memory_budget_mb": memory_budget_mb,
        "chunk_sizes": [len(c) for c in chunks],
        "peak_scope_mb": round(max(scope_bytes([shapes[k] for k in c]) for c in chunks) / MB, 3)})

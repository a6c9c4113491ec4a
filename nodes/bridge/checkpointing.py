"""Per-block gradient checkpointing for CAD's differentiated forwards.

A backward pass needs the activations its forward saved. Without checkpointing a differentiated UNet/DiT forward
keeps every layer's saved tensors until J's backward: at 1024 px that is most of a GPU's memory. With it, each
block (the family record's blocks: UNet input/middle/output layers, Flux double/single blocks, ...) keeps only its
inputs, and recomputes its own activations when the backward pass reaches it: one more forward of the
differentiated pass, same values (the recomputation runs the same ops on the same inputs, so alpha is unchanged).

Only differentiated forwards are affected: with gradients off, a block runs as it always does. The recomputation is
one more forward of each block per step (on CPU it cost +6% at 64 px and saved time at 512 px, where the smaller
working set helped more: benchmarks/results/checkpointing_cost_cpu.md; on a GPU it is closer to the cost of a
forward), so `auto` is on on CPUs and, on GPUs, only where what autograd keeps would crowd the device's memory.
"""
import contextlib
import functools
import logging
import re

import torch
import torch.utils.checkpoint

import comfy.model_management

from ...cad_core import CADError
from ...cad_core.families import detect_family, supported_families
from ...cad_core.request import CHECKPOINTING
from .differentiable import kernels_with_backward

_MISSING = object()


def _block_patterns(diffusion_model) -> list[re.Pattern]:
    family = detect_family(name for name, _ in diffusion_model.named_parameters())
    return [re.compile(pattern) for pattern, _ in (family.blocks if family is not None else ())]


def checkpoint_units(diffusion_model) -> list[tuple[str, torch.nn.Module]]:
    """The modules whose forward is checkpointed: every block of the model's family record (outermost only; none for
    a model without a record). A block that
    is a Sequential is replaced by its children, because ComfyUI's UNet runs a TimestepEmbedSequential by iterating
    over its layers, never through the Sequential's own forward."""
    patterns, units = _block_patterns(diffusion_model), []
    for name, module in diffusion_model.named_modules():
        if not any(p.fullmatch(name) for p in patterns):
            continue
        if any(name.startswith(outer + ".") for outer, _ in units):
            continue
        if isinstance(module, torch.nn.Sequential):
            units.extend((f"{name}.{child}", m) for child, m in module.named_children())
        else:
            units.append((name, module))
    return units


def _private(value):
    """A block may update its input tensors in place (Flux's `img += ...`, which also makes a tensor that needed no
    gradient need one) or write into the options dict it was given (transformer_index). Each run of the block, the
    first forward and the recomputation alike, therefore works on private copies, so the inputs checkpointing keeps
    are still what the first forward saw when the backward pass recomputes from them."""
    if torch.is_tensor(value) and value.is_floating_point():
        return value.clone()
    if isinstance(value, dict):
        return dict(value)
    return value


def _run_block(forward, *args, **kwargs):
    # The recomputation runs inside the backward pass, outside the predictor's kernels_with_backward(): set again
    # so that it takes the same (differentiable) kernels as the first forward.
    with kernels_with_backward():
        return forward(*(_private(a) for a in args), **{k: _private(v) for k, v in kwargs.items()})


def _checkpointed_call(forward, *args, **kwargs):
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(functools.partial(_run_block, forward), *args, use_reentrant=False,
                                             **kwargs)


@contextlib.contextmanager
def blocks_checkpointed(diffusion_model, enabled: bool = True):
    """While active (and enabled), every block's differentiated forward is checkpointed. Yields the number of
    checkpointed modules; the modules' own forward methods are restored on exit."""
    units = checkpoint_units(diffusion_model) if enabled else []
    saved = []
    try:
        for _, module in units:
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = functools.partial(_checkpointed_call, module.forward)
        yield len(units)
    finally:
        for module, before in reversed(saved):
            if before is _MISSING:
                del module.forward
            else:
                module.forward = before


def checkpointing_setting(setting: str, weight_names) -> "bool | str":
    """True/False when the setting decides, "auto" when the run decides once the model is loaded
    (auto_decision). Never for a model without a family record, whatever the setting: LTX-Video, for
    one, updates tensors in place inside its blocks after an op saved them, which the recomputation cannot detect,
    and its scores came out wrong (up to 20% of the largest) instead of failing."""
    if setting not in CHECKPOINTING:
        raise CADError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING)}, got {setting!r}.")
    if setting == "off":
        return False
    if detect_family(weight_names) is None:
        if setting == "on":
            logging.warning("CAD: gradient checkpointing is only used for model families with a record (%s); this "
                            "model is attributed without it.", supported_families())
        return False
    return True if setting == "on" else "auto"


# auto checkpoints when what a differentiated step would keep for backward without it exceeds this share of the
# memory ComfyUI reports free on the device after loading
CROWDING_SHARE = 0.25


def auto_decision(device, measure) -> dict:
    """What `auto` does on this device, with its reason (for the attribution's metadata).

    On a CPU it always checkpoints: measured there, the recomputation cost at most 6% and often saved time, for a third
    of the memory. On a GPU, where it costs about one more forward per step, it checkpoints when what one
    differentiated step would keep for backward without it (`measure()`: activation_memory.SavedForBackward, one
    differentiated forward that keeps nothing) exceeds CROWDING_SHARE of the memory ComfyUI reports free."""
    if torch.device(device).type == "cpu":
        return {"gradient_checkpointing": True, "checkpointing_reason": "auto: on, as always on a CPU"}
    kept = measure().peak_bytes(checkpointed=False)
    free = int(comfy.model_management.get_free_memory(device))
    crowded = kept > CROWDING_SHARE * free
    return {"gradient_checkpointing": crowded, "kept_without_checkpointing_mb": round(kept / 2**20),
            "free_memory_mb": round(free / 2**20),
            "checkpointing_reason": f"auto: {'on' if crowded else 'off'}, a step would keep ~{kept / 2**20:,.0f} MiB "
                                    f"for backward without it (measured), {free / 2**20:,.0f} MiB free"}

"""Making a ComfyUI model differentiable: which model CAD differentiates (a non-dynamic reload under Dynamic
VRAM: differentiable_source), ComfyUI kernels that need its training switch for a backward
(kernels_with_backward), the parameters no weight wrapper reaches (ordinary_copies_of_plain_parameters), and
private copies of saved tensors for models that update tensors in place (saved_tensor_copies).

Weight wrappers (probes and copy-forcing identities) only exist on comfy ops (`CastWeightBiasOp`:
Linear, Conv, GroupNorm, LayerNorm, ...). DiT families also hold parameters in plain modules: the
RMSNorm scales of SD3's MMDiT (`attn.ln_q.weight`) and Flux (`norm.query_norm.scale`), positional
embeddings, registers, and the `scale_weight` of scaled-fp8 ops. ComfyUI reads those directly (`rms_norm(x, self.weight)`), so under a loader's
inference mode they reach autograd as inference tensors and the backward pass fails with "Inference
tensors cannot be saved for backward". While a differentiated run is active, such parameters and
buffers are replaced by ordinary copies of the same values (on the same device), and put back after.

Flux's blocks also update their residual stream in place right after normalising it
(`img += gate * attn(norm(img))`), which autograd refuses ("modified by an inplace operation") because
the norm saved `img` for backward. While a differentiated forward runs, LayerNorm inputs that require
grad are therefore cloned first, so the norm saves its own copy. Values are unchanged.
"""
import contextlib
import logging

import torch

import comfy.model_management
import comfy.ops


@contextlib.contextmanager
def kernels_with_backward():
    """ComfyUI 0.33 routes some ops to fused comfy-kitchen kernels without a backward (Flux's rotary embedding:
    "no autograd formula was registered for comfy_kitchen.apply_rope") unless model_management.in_training is
    set, as core's LoRA trainer sets it. Set only around differentiated forwards; older ComfyUI lacks the flag."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    before, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = before


@contextlib.contextmanager
def saved_tensor_copies(enabled: bool = True):
    """While enabled: every tensor autograd saves for backward is saved as a private copy, so a model may update
    the original in place afterwards (costs a copy of every saved activation)."""
    if not enabled:
        yield
        return
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        yield


# --- the model CAD differentiates ------------------------------------------------------------------------

def is_dynamic(model) -> bool:
    """Whether `model` loads through ComfyUI's Dynamic VRAM (ModelPatcherDynamic, 0.33+ on GPUs)."""
    return bool(getattr(model, "is_dynamic", lambda: False)())


@contextlib.contextmanager
def differentiable_source(model):
    """The patcher whose clones CAD Attribute differentiates: `model` itself, or under Dynamic VRAM a
    non-dynamic copy of it, released on exit.

    Dynamic VRAM loads weights in a way autograd cannot rely on (weight functions only on modules > 16 KiB,
    weights handed out as views of reused buffers). Like core's LoRA trainer, CAD then differentiates a
    non-dynamic model: `clone(disable_dynamic=True)` re-runs the model's loader (the checkpoint is read again,
    so RAM holds a second copy while CAD runs) with the same patches, LoRAs included. It runs inside
    inference_mode(False), so the reloaded weights are ordinary tensors. A model whose loader cannot be re-run
    (a custom loader without `cached_patcher_init`) is differentiated as it is; the wrappers then defend
    themselves (install_missing_cad_wrappers, CopyForBackward, probes_must_see_their_modules).
    """
    source = model
    if is_dynamic(model):
        try:
            with torch.inference_mode(False):
                source = model.clone(disable_dynamic=True)
            logging.info("CAD: differentiating a non-dynamic reload of the model (Dynamic VRAM is on).")
        except (RuntimeError, TypeError) as e:  # no cached_patcher_init; TypeError: a clone() without the argument
            logging.warning("CAD: this model's loader cannot reload it without Dynamic VRAM (%s); attributing the "
                            "dynamic model with CAD's own safeguards. If results look wrong, start ComfyUI with "
                            "--disable-dynamic-vram.", e)
    try:
        yield source
    finally:
        if source is not model:
            del source
            comfy.model_management.soft_empty_cache()



def _unwrapped_tensors(diffusion_model):
    """(store, name) of every parameter/buffer no weight wrapper reaches: all of a plain module's, and a comfy
    op's extras besides weight/bias (e.g. scaled-fp8 `scale_weight`, which the op multiplies in directly)."""
    for module in diffusion_model.modules():
        wrapped = ("weight", "bias") if isinstance(module, comfy.ops.CastWeightBiasOp) else ()
        for store in (module._parameters, module._buffers):
            for name in list(store):
                if name not in wrapped:
                    yield store, name


def _clone_norm_input(module, args):
    if args and torch.is_tensor(args[0]) and args[0].requires_grad and torch.is_grad_enabled():
        return (args[0].clone(),) + tuple(args[1:])
    return None


@contextlib.contextmanager
def ordinary_copies_of_plain_parameters(diffusion_model):
    """For one differentiated run: ordinary copies of the inference-tensor parameters/buffers outside comfy
    ops, and norm layers that save a private copy of their input. Everything is restored on exit."""
    swapped, hooks = [], []
    try:
        for module in diffusion_model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                hooks.append(module.register_forward_pre_hook(_clone_norm_input))
        with torch.inference_mode(False):
            for store, name in _unwrapped_tensors(diffusion_model):
                value = store[name]
                if value is None or not value.is_inference():
                    continue
                copy = value.detach().clone()
                if isinstance(value, torch.nn.Parameter):
                    copy = torch.nn.Parameter(copy, requires_grad=False)
                swapped.append((store, name, value))
                store[name] = copy
        yield len(swapped)
    finally:
        for hook in hooks:
            hook.remove()
        for store, name, value in reversed(swapped):
            store[name] = value

"""Parameters that ComfyUI's weight wrappers never see, made safe for autograd during attribution.

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

import torch

import comfy.ops


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

"""A plain, differentiable copy of a ComfyUI MODEL's diffusion model, with the weights it samples with (LoRAs and
other patches included), for the work that trains or differentiates through the whole network at once: CAD
Erase Concept's robust erase, and the attacks the benchmarks run against an erase.

ComfyUI creates weights as inference tensors under its nodes' inference mode, and autograd refuses to save those
for backward. The copy is made outside inference mode from the patched weights, so every tensor in it is an
ordinary one; the MODEL and the modules it shares with other clones are left as they were.
"""
import contextlib
import copy

import torch

import comfy.model_management

from .model_info import PREFIX


@contextlib.contextmanager
def patched_copy(model):
    """Yields (base_model, state): a deep copy of `model`'s BaseModel whose weights are what `model` computes with
    (its patches applied, on its load device, fp32 where the model is fp32), and nothing shared with `model`."""
    comfy.model_management.load_models_gpu([model])
    try:
        with torch.inference_mode(False):
            # the model's config is shared, not copied: it is only read, and ComfyUI 0.33's refuses to be copied
            shared = {id(v): v for v in (getattr(model.model, "model_config", None),) if v is not None}
            base = copy.deepcopy(model.model, memo=shared)
            for module in base.modules():   # wrappers belong to the patcher's clones, not to this copy
                for attr in ("weight_function", "bias_function"):
                    if getattr(module, attr, None):
                        setattr(module, attr, [])
            for name, p in list(base.named_parameters()):
                p.data = p.data.clone()
                p.requires_grad_(False)
            for name, b in list(base.named_buffers()):
                owner, leaf = _owner(base, name)
                owner._buffers[leaf] = b.clone()
    finally:
        comfy.model_management.unload_all_models()
    try:
        yield base
    finally:
        del base


def train_in_fp32(base) -> None:
    """Make a patched copy compute and train in fp32: Adam's second moments underflow in fp16, and bf16 rounds
    away steps this small. A half-precision model's copy therefore takes twice its memory while it trains; the
    changes it yields are fp32 and are applied to the user's model as patches in its own dtype."""
    base.float()
    if hasattr(base.diffusion_model, "dtype"):
        base.diffusion_model.dtype = torch.float32
    if getattr(base, "manual_cast_dtype", None) is not None:
        base.manual_cast_dtype = None


def _owner(root, name):
    path, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    return (root.get_submodule(path) if path else root), leaf


def diffusion_key(key: str) -> str:
    """A patch key ('diffusion_model.x.weight') as the copy's parameter name inside its diffusion_model."""
    return key[len(PREFIX):] if key.startswith(PREFIX) else key

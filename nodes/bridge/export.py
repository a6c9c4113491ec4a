"""A CAD mask as a LoRA for the MODEL it was made for (cad_core.export), with the weights that MODEL computes with."""
import torch

import comfy.lora

from ...cad_core.export import mask_as_lora
from .model_info import check_fingerprint, original_weight


def lora_from_mask(model, mask) -> dict[str, torch.Tensor]:
    """LoRA tensors that do to `model` what Apply CAD Mask(model, mask) does. Patches already on `model` (LoRAs,
    other masks) are part of the weight the diff cancels, so the file reproduces the edit when it is loaded after
    the same LoRAs; it is stored in the weight's own dtype when nothing else patches it (exact), else in fp32."""
    check_fingerprint(model, mask.fingerprint, "mask")

    def effective(key):
        base = original_weight(model, key).detach().to("cpu", torch.float32, copy=True)
        patches = model.patches.get(key)
        return comfy.lora.calculate_weight(patches, base, key, intermediate_dtype=torch.float32) if patches else base

    def exact_dtype(key):
        return torch.float32 if model.patches.get(key) else original_weight(model, key).dtype

    return mask_as_lora(mask, effective, exact_dtype)

"""A mask as a LoRA file any ComfyUI-compatible loader reads: one full `diff` per touched matrix.

ComfyUI's LoRA loader adds `strength * diff` to a weight. With diff = -W on the masked entries and 0 elsewhere,
strength 1 zeroes exactly the masked entries (W + (-W) = 0 in any float format) and leaves every other entry as it
was (W + 0 = W): the same weights Apply CAD Mask gives; strength s scales the masked entries by (1 - s), as Apply
CAD Mask's strength does. Only matrices the mask touches are written.
"""
from typing import Callable

import torch

from .errors import CADError
from .mask import Mask


def lora_key(weight_key: str) -> str:
    """'diffusion_model.x.weight' -> 'diffusion_model.x.diff' (the generic key form ComfyUI's loader maps)."""
    if weight_key.endswith(".weight"):
        return weight_key[: -len(".weight")] + ".diff"
    if weight_key.endswith(".bias"):
        return weight_key[: -len(".bias")] + ".diff_b"
    raise CADError(f"Cannot name a LoRA entry for '{weight_key}': only .weight and .bias entries can be exported.")


def mask_as_lora(mask: Mask, effective_weight: Callable[[str], torch.Tensor],
                 exact_dtype: Callable[[str], torch.dtype]) -> dict[str, torch.Tensor]:
    """LoRA tensors that erase (or, for an amplify mask, ablate) `mask`'s components.

    effective_weight(key): the weight as the model computes with it before the mask (LoRAs included), fp32.
    exact_dtype(key): a dtype in which -W is exact (the stored dtype when no other patch changes W, else fp32).
    """
    mask.check_valid()
    mask.check_nonempty()
    tensors = {}
    for key, idx in mask.indices.items():
        if not idx.numel():
            continue
        w = effective_weight(key).detach().to("cpu", torch.float32)
        if tuple(w.shape) != tuple(mask.shapes[key]):
            raise CADError(f"The mask expects '{key}' with shape {tuple(mask.shapes[key])}, but the model's weight "
                           f"is {tuple(w.shape)}.")
        diff = torch.zeros(w.numel(), dtype=torch.float32)
        flat_idx = idx.to(torch.long)
        diff[flat_idx] = -w.reshape(-1)[flat_idx]
        tensors[lora_key(key)] = diff.reshape(w.shape).to(exact_dtype(key)).contiguous()
    return tensors


def save_lora(tensors: dict[str, torch.Tensor], path: str, source) -> str:
    """Write the LoRA tensors to a new file (never over an existing one; no half-written file on failure). The
    metadata names the mask or edit (`source`) it came from; LoRA loaders ignore it."""
    import json

    from .serialization import _write
    from .version import PACK_VERSION
    count = source.count if isinstance(source, Mask) else source.weights_changed
    metadata = {"cad.kind": "lora", "cad.fingerprint": source.fingerprint, "cad.pack_version": PACK_VERSION,
                "cad.mask_mode": source.info.mode or "", "cad.weights": str(count),
                "cad.mask_meta": json.dumps(source.info.to_json_dict(), default=str)[:65536]}
    return _write(path, tensors, metadata)

"""Apply CAD Mask: a patch (a ComfyUI weight adapter) that scales the selected entries of each masked weight, on a
clone of the MODEL."""
import torch

from comfy.weight_adapter import WeightAdapterBase

from ...cad_core import CADError, Mask, scale_selected
from .model_info import check_fingerprint, patchable_weights


class CADMaskAdapter(WeightAdapterBase):
    """Patch that scales the masked entries of one weight: W[idx] *= (1 - strength).

    All tensors live in `self.weights` and the constructor is (loaded_keys, weights), because newer
    ComfyUI rebuilds adapters that way when it prefetches patches. Added after a LoRA it scales the
    LoRA-modified weight, so strength 1 zeroes the selected entries exactly.
    """

    name = "cad_mask"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = loaded_keys
        self.weights = weights

    def calculate_shape(self, key):
        return None

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        return scale_selected(weight, self.weights[0], float(strength))


def apply_mask(model, mask: Mask, strength: float):
    """A clone of `model` with the mask's components scaled by (1 - strength); `model` is untouched."""
    mask.check_valid()
    mask.check_nonempty()
    check_fingerprint(model, mask.fingerprint, "mask")
    present = dict(patchable_weights(model))
    for key, shape in mask.shapes.items():
        if key in mask.indices and tuple(present.get(key, ())) != tuple(shape):
            raise CADError(f"The mask expects '{key}' with shape {tuple(shape)}, but this MODEL has "
                           f"{present.get(key, 'no such weight')}.")
    patched = model.clone()
    patches = {k: CADMaskAdapter({k}, (idx.to(torch.int64),)) for k, idx in mask.indices.items() if idx.numel()}
    accepted = patched.add_patches(patches, strength_patch=strength)
    if len(accepted) != len(patches):
        missing = sorted(set(patches) - set(accepted))
        raise CADError(f"ComfyUI refused to patch {len(missing)} weights the mask selects, e.g. {missing[:3]}.")
    return patched

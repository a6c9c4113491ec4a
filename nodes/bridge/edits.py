"""CAD Erase Concept on a ComfyUI MODEL: the cross-attention K/V matrices a CAD attribution locates, edited in closed
form (cad_core.closed_form) from the text encoder's rows of typed prompts, and applied to a clone as ComfyUI 'diff'
patches (what a LoRA loader adds), so the edit scales with strength and composes with LoRAs."""
import torch

from ...cad_core import CADError
from ...cad_core.closed_form import closed_form_edit, located_keys
from ...cad_core.edit import WeightEdit
from ...cad_core.edit_info import EditInfo
from .model_info import check_fingerprint, fingerprint_of, original_weight, patchable_weights

KV_SUFFIXES = (".attn2.to_k.weight", ".attn2.to_v.weight")
KV_REGEX = r"attn2\.to_[kv]\.weight"


def text_rows(clip, prompts, rows: int) -> torch.Tensor:
    """The first `rows` rows of what CLIP Text Encode gives for each prompt, stacked (len(prompts) x rows, width)."""
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]
            out.append(cond[0, :rows].float().cpu())
    return torch.cat(out)


def text_kv_keys(model, width: int) -> list[str]:
    """The cross-attention K and V weights that read the text encoder's rows (input width `width`), model order."""
    shapes = dict(patchable_weights(model))
    keys = [k for k, shape in shapes.items() if k.endswith(KV_SUFFIXES) and len(shape) == 2]
    if not keys:
        raise CADError("This model has no cross-attention K/V weights that read the prompt (attn2.to_k / to_v), so "
                       "there is nothing for CAD Erase Concept to solve. It works on UNet models such as SD1.5 and "
                       "SDXL; for other models use CAD Erase Mask with Apply CAD Mask.")
    fitting = [k for k in keys if shapes[k][1] == width]
    if not fitting:
        raise CADError(f"The CLIP gives rows of width {width}, but this model's cross-attention reads width "
                       f"{shapes[keys[0]][1]}: connect the CLIP that belongs to this checkpoint.")
    return fitting


def erase_concept(model, clip, attribution, erase, guide, keep, *, overshoot: float, preserve: float,
                  rows: int, mass_share: float, ridge: float = 0.01) -> WeightEdit:
    """The closed-form edit that answers each `erase` prompt like its `guide` prompt, and every `keep` prompt as
    before, on the K/V matrices holding `mass_share` of the attribution's positive mass."""
    check_fingerprint(model, attribution.fingerprint, "attribution")
    erase_rows, guide_rows, keep_rows = (text_rows(clip, prompts, rows) for prompts in (erase, guide, keep))
    keys = text_kv_keys(model, erase_rows.shape[1])
    if not set(keys) & set(attribution.scores):
        raise CADError(f"The attribution scores none of the cross-attention K/V weights, so it cannot say which of "
                       f"them carry the concept. Attribute the concept with scope 'regex' and scope_regex "
                       f"'{KV_REGEX}' (or a scope that includes them).")
    chosen = located_keys(attribution, [k for k in keys if k in attribution.scores], mass_share)
    weights = {k: original_weight(model, k).detach().to("cpu", torch.float32) for k in chosen}
    deltas = closed_form_edit(weights, erase_rows, guide_rows, keep_rows, preserve, ridge, overshoot)
    info = EditInfo(mode="erase concept", erase=tuple(erase), guide=tuple(guide), keep=tuple(keep),
                    overshoot=overshoot, preserve=preserve, ridge=ridge, text_rows=rows, mass_share=mass_share,
                    located=tuple(chosen), objective=attribution.info.objective)
    return WeightEdit(deltas, fingerprint_of(model), info)


def apply_edit(model, edit: WeightEdit, strength: float):
    """A clone of `model` with W + strength x dW on each edited weight; `model` is untouched."""
    edit.check_valid()
    check_fingerprint(model, edit.fingerprint, "edit")
    present = dict(patchable_weights(model))
    for key, d in edit.deltas.items():
        if tuple(present.get(key, ())) != tuple(d.shape):
            raise CADError(f"The edit expects '{key}' with shape {tuple(d.shape)}, but this MODEL has "
                           f"{present.get(key, 'no such weight')}.")
    patched = model.clone()
    accepted = patched.add_patches({k: (d,) for k, d in edit.deltas.items()}, strength_patch=strength)
    if len(accepted) != len(edit.deltas):
        missing = sorted(set(edit.deltas) - set(accepted))
        raise CADError(f"ComfyUI refused to patch {len(missing)} weights the edit changes, e.g. {missing[:3]}.")
    return patched

"""CAD Erase Concept on a ComfyUI MODEL: the cross-attention K/V matrices a CAD attribution locates, edited in closed
form (cad_core.closed_form) from the text encoder's rows of typed prompts, and applied to a clone as ComfyUI 'diff'
patches (what a LoRA loader adds), so the edit scales with strength and composes with LoRAs."""
import torch

from ...cad_core import CADError
from ...cad_core.closed_form import closed_form_edit, located_keys
from ...cad_core.edit import WeightEdit
from ...cad_core.edit_info import EditInfo
from ...cad_core.erase_settings import DEFAULT_ERASE, EraseSettings
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


def erase_concept(model, clip, attribution, erase, guide, keep, settings: EraseSettings = DEFAULT_ERASE,
                  on_progress=None) -> WeightEdit:
    """CAD Erase Concept's edit: each `erase` prompt answered like its `guide` prompt, every `keep` prompt as
    before. Closed form on the K/V matrices holding `settings.mass_share` of the attribution's positive mass; in
    robust mode also the image-pathway weights it locates, fine-tuned against an attacker (bridge.robust_erase).
    on_progress(done, total) reports the robust mode's pictures and training steps."""
    check_fingerprint(model, attribution.fingerprint, "attribution")
    if not isinstance(settings, EraseSettings):
        raise TypeError(f"settings must be an EraseSettings, got {type(settings).__name__}.")
    erase_rows, guide_rows, keep_rows = (text_rows(clip, prompts, settings.text_rows)
                                         for prompts in (erase, guide, keep))
    keys = text_kv_keys(model, erase_rows.shape[1])
    scored_kv = [k for k in keys if k in attribution.scores]
    if not scored_kv and not settings.robust:
        raise CADError(f"The attribution scores none of the cross-attention K/V weights, so it cannot say which of "
                       f"them carry the concept. Attribute the concept with scope 'regex' and scope_regex "
                       f"'{KV_REGEX}' (or 'all_linear', which includes them).")
    deltas, chosen, trained = {}, [], {}
    if scored_kv:
        chosen = located_keys(attribution, scored_kv, settings.mass_share)
        weights = {k: original_weight(model, k).detach().to("cpu", torch.float32) for k in chosen}
        deltas = closed_form_edit(weights, erase_rows, guide_rows, keep_rows, settings.preserve, settings.ridge,
                                  settings.overshoot)
    if settings.robust:
        from .robust_erase import robust_deltas
        more, trained = robust_deltas(model, clip, attribution, erase, guide, keep, set(keys), settings,
                                      on_progress)
        deltas.update(more)
    robust = {"train_steps": settings.train_steps, "learning_rate": settings.learning_rate,
              "train_share": settings.train_share, "retain": settings.retain, "adversaries": settings.adversaries,
              "seed": settings.seed,
              **trained} if settings.robust else {}
    info = EditInfo(mode="erase concept", erase_mode=settings.mode, erase=tuple(erase), guide=tuple(guide),
                    keep=tuple(keep), overshoot=settings.overshoot, preserve=settings.preserve, ridge=settings.ridge,
                    text_rows=settings.text_rows, mass_share=settings.mass_share, located=tuple(chosen),
                    objective=attribution.info.objective, **robust)
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

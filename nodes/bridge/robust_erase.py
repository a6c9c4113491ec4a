"""CAD Erase Concept's robust mode on a ComfyUI MODEL: the original model draws pictures of the erased and the kept
prompts with ComfyUI's own sampler, a plain copy of the model (bridge.trainable) is fine-tuned on the image-pathway
weights the attribution locates, against an attacker in the loop (cad_core.robust_erase), and what changed comes
back as dW per weight, to be applied as 'diff' patches like the closed-form edit."""
import dataclasses

import torch

import comfy.model_management
import comfy.sample

from ...cad_core import CADError, select_components
from ...cad_core.erase_settings import EraseSettings
from ...cad_core.robust_erase import RobustEraseInputs, RobustSchedule, train_robust_erase
from .model_info import needs_pooled_output, parameterization_of
from .trainable import diffusion_key, patched_copy, train_in_fp32

SAMPLER, SCHEDULER = "euler", "normal"


def image_pathway_keys(attribution, text_kv: set) -> list[str]:
    """The 2-D weights the attribution scores outside the cross-attention K/V: where the picture is drawn."""
    return [k for k, s in attribution.scores.items() if k not in text_kv and s.ndim == 2]


def robust_deltas(model, clip, attribution, erase, guide, keep, text_kv: set, settings: EraseSettings,
                  on_progress=None) -> tuple[dict, dict]:
    """dW for the located image-pathway weights, and a record of what was trained ({"trained_weights": n, ...})."""
    if getattr(model.model, "adm_channels", None) or needs_pooled_output(model):
        raise CADError("Robust mode trains this model with the prompt's text rows alone, but its conditioning also "
                       "carries a pooled vector (SDXL, SD3 and similar), which this version does not train with "
                       "yet. Set mode to 'closed form' for this model.")
    keys = image_pathway_keys(attribution, text_kv)
    if not keys:
        raise CADError("The robust erase trains the image-pathway weights the attribution locates, but this "
                       "attribution scores only cross-attention K/V. Attribute the concept with scope 'all_linear' "
                       "(it covers K/V too), or set mode to 'closed form'.")
    scoped = dataclasses.replace(attribution, scores={k: attribution.scores[k] for k in keys})
    mask = select_components(scoped, "erase", settings.train_share, "per_row")
    chosen = {k: idx for k, idx in mask.indices.items() if idx.numel()}
    if not chosen:
        raise CADError("The attribution has no positive scores in the image-pathway weights, so there is nothing "
                       "to train. Check the prompts of CAD Attribute (the concept and its base).")
    latent_shape = attribution.info.latent_shape
    if not latent_shape or len(latent_shape) < 4:
        raise CADError("The attribution does not record the latent size it was made at; run CAD Attribute again "
                       "with this version of the pack.")
    steps = int(attribution.info.steps or 20)
    guidance = float(attribution.info.guidance if attribution.info.guidance is not None else 3.0)
    total = (len(erase) + len(keep)) * steps + settings.train_steps   # one sampling run per prompt
    done = [0]

    def advance(n=1):
        done[0] += n
        if on_progress is not None:
            on_progress(done[0], total)

    cond = _Conditioning(clip)
    erase_x0, erase_of = _pictures(model, cond, erase, settings, latent_shape, steps, guidance, advance)
    keep_x0, keep_of = _pictures(model, cond, keep, settings, latent_shape, steps, guidance, advance)
    parameterization = parameterization_of(model)
    with patched_copy(model) as base, torch.inference_mode(False):
        device = comfy.model_management.get_torch_device()
        base.to(device)
        train_in_fp32(base)
        dtype = torch.float32
        named = dict(base.diffusion_model.named_parameters())
        params, masks = {}, {}
        for key, idx in chosen.items():
            p = named[diffusion_key(key)]
            m = torch.zeros(p.numel(), dtype=torch.bool)
            m[idx] = True
            params[key], masks[key] = p, m.view(p.shape)
        to = dict(device=device, dtype=dtype)
        inputs = RobustEraseInputs(
            erase_pictures=erase_x0.to(**to), erase_of_picture=erase_of, keep_pictures=keep_x0.to(**to),
            keep_of_picture=keep_of, erase_context=cond.rows(erase).to(**to), guide_context=cond.rows(guide).to(**to),
            keep_context=cond.rows(keep).to(**to), empty_context=cond.rows([""]).to(**to),
            sigmas=base.model_sampling.sigmas.to(**to))
        schedule = RobustSchedule(steps=settings.train_steps, lr=settings.learning_rate, batch=settings.batch,
                                  overshoot=settings.overshoot, preserve=settings.retain,
                                  adversary_lr=settings.adversary_lr, adversaries=settings.adversaries,
                                  seed=settings.seed)
        deltas = train_robust_erase(lambda x, s, c: base.apply_model(x, s, c_crossattn=c),
                                    parameterization.add_noise, params, masks, inputs, schedule,
                                    on_progress=lambda d, t: advance(),
                                    cancelled=comfy.model_management.processing_interrupted)
    return deltas, {"trained_weights": sum(int(i.numel()) for i in chosen.values()),
                    "trained_matrices": len(chosen)}


class _Conditioning:
    """What CLIP Text Encode gives for each prompt, encoded once."""

    def __init__(self, clip):
        self.clip, self.cache = clip, {}

    def __call__(self, prompt: str):
        if prompt not in self.cache:
            with torch.inference_mode():
                self.cache[prompt] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))
        return self.cache[prompt]

    def rows(self, prompts) -> torch.Tensor:
        """The conditioning tensors of `prompts`, stacked (they must share one length, as CLIP's 77 tokens do)."""
        tensors = [self(p)[0][0].float() for p in prompts]
        lengths = {t.shape[1] for t in tensors}
        if len(lengths) > 1:
            raise CADError(f"The prompts encode to conditionings of different lengths ({sorted(lengths)} tokens); "
                           f"the robust erase needs them equal. Shorten the longest prompts to one CLIP chunk.")
        return torch.cat(tensors).clone()


def _pictures(model, cond, prompts, settings, latent_shape, steps, guidance, advance):
    """The original model's own pictures of each prompt (clean latents), settings.pictures each, drawn with
    ComfyUI's sampler from seeds settings.seed + prompt index; and which prompt drew each."""
    out, owner = [], []
    shape = (settings.pictures, *tuple(latent_shape)[1:])
    for i, prompt in enumerate(prompts):
        seed = settings.seed + 7919 * (i + 1)
        with torch.inference_mode():
            latent = torch.zeros(shape)
            noise = comfy.sample.prepare_noise(latent, seed)
            out.append(comfy.sample.sample(model, noise, steps, guidance, SAMPLER, SCHEDULER, cond(prompt), cond(""),
                                           latent, seed=seed, disable_pbar=True,
                                           callback=lambda *a: advance()).float().cpu())
        owner += [i] * settings.pictures
    return torch.cat(out).clone(), torch.tensor(owner)

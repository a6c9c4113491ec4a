"""Measuring concepts in the toy world through the pack's own code path (what the nodes call):
CLIP Text Encode's encoding, KSampler's sampler, CAD Attribute's attribute_model, the mask nodes'
select_components/protect, Apply CAD Mask's apply_mask.

Importing this module loads neither ComfyUI nor the pack: load them first, e.g. with
toyworld.comfy_env.import_pack() (the toy world's device choice) or pack_bootstrap.import_pack().
"""
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from toyworld.scorers import classify_colours, classify_shapes, load_shape_classifier  # noqa: E402
from toyworld.world import COLOUR_NAMES, SHAPES, batch, caption  # noqa: E402

if "cad_pack" not in sys.modules:
    raise ImportError("toyworld.evaluate needs ComfyUI and the pack loaded first: call "
                      "toyworld.comfy_env.import_pack() or pack_bootstrap.import_pack() before importing it")
import comfy.sample  # noqa: E402

from cad_pack.cad_core import Mask, objective_named, protect, select_components, sum_attributions  # noqa: E402
from cad_pack.nodes.bridge import apply_mask, attribute_model, original_weight  # noqa: E402
from cad_pack.nodes.toyworld.model import WEIGHTS_FILE, latent_to_image, load_toyworld, verify_weights_file  # noqa: E402

SAMPLER, SCHEDULER, SAMPLE_STEPS, CFG = "euler", "normal", 20, 3.0


@dataclass
class ToyWorld:
    model: object
    clip: object
    vae: object
    classifier: object
    _conds: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str = WEIGHTS_FILE):
        verify_weights_file(path)
        with torch.inference_mode():
            model, clip, vae = load_toyworld(path)
        return cls(model, clip, vae, load_shape_classifier())

    def cond(self, text: str):
        """What CLIP Text Encode returns for `text`."""
        if text not in self._conds:
            with torch.inference_mode():
                self._conds[text] = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))
        return self._conds[text]

    def sample(self, model, text: str, n: int, seed: int) -> torch.Tensor:
        """n images (n, 3, 32, 32) in [0, 1], sampled as KSampler samples them."""
        with torch.inference_mode():
            latent = torch.zeros((n, 48, 8, 8))
            noise = comfy.sample.prepare_noise(latent, seed)
            out = comfy.sample.sample(model, noise, SAMPLE_STEPS, CFG, SAMPLER, SCHEDULER, self.cond(text),
                                      self.cond(""), latent, seed=seed, disable_pbar=True)
            return latent_to_image(out.float())

    def accuracy(self, model, shape: str, per_colour: int = 8, seed: int = 0) -> dict:
        """Share of samples for 'a <colour> <shape>' (every colour) showing that shape / that colour."""
        shape_hits, colour_hits, total = 0, 0, 0
        for ci, colour in enumerate(COLOUR_NAMES):
            images = self.sample(model, caption(shape, colour), per_colour, seed + 1000 * ci)
            shape_hits += int((classify_shapes(self.classifier, images) == SHAPES.index(shape)).sum())
            colour_hits += int((classify_colours(images) == ci).sum())
            total += per_colour
        return {"shape": shape_hits / total, "colour": colour_hits / total, "n": total}

    def accuracy_table(self, model, per_colour: int = 8, seed: int = 0) -> dict:
        return {s: self.accuracy(model, s, per_colour, seed) for s in SHAPES}

    def attribute(self, shape: str, objective: str = "concept_gap", steps: int = 20, seed: int = 0,
                  samples: int = 1, schedule: str = "single", model=None, contrast: str = "colour",
                  scope: str = "ff", scope_regex: str = ""):
        """CAD attribution of a shape. contrast='colour' sums, over the colours, 'a <c> <shape>' against
        'a <c>' (the shape is the only difference); contrast='empty' uses 'a <shape>' against ''."""
        model = model or self.model
        pairs = ([(caption(shape, c), caption(None, c)) for c in COLOUR_NAMES] if contrast == "colour"
                 else [(caption(shape, None), "")])
        parts = []
        for i, (positive, base) in enumerate(pairs):
            concept = None
            if objective_named(objective).takes_images:   # rendered pictures of the concept
                concept = {"samples": concept_latents(shape, COLOUR_NAMES[i % 4] if contrast == "colour" else None,
                                                      samples, seed + i)}
            with torch.inference_mode():
                parts.append(attribute_model(
                    model, self.cond(positive), self.cond(base), {"samples": torch.zeros((1, 48, 8, 8))},
                    objective=objective, steps=steps, guidance=CFG, seed=seed + i, samples=samples, scope=scope, scope_regex=scope_regex,
                    schedule=schedule, concept_latent=concept))
        return sum_attributions(parts)


def concept_latents(shape: str, colour: str | None, n: int, seed: int) -> torch.Tensor:
    """Latents of rendered images of the concept (what VAE Encode of real pictures would give)."""
    from cad_pack.nodes.toyworld.model import image_to_latent
    rng = np.random.default_rng(seed)
    colours = (colour,) if colour else COLOUR_NAMES
    images, _, _ = batch(rng, n, shapes=(shape,), colours=colours)
    return image_to_latent(torch.from_numpy(images).permute(0, 3, 1, 2))


def erase_mask(attribution, ratio: float, granularity: str = "per_row", protect_with=None) -> Mask:
    mask = select_components(attribution, "erase", ratio, granularity)
    return protect(mask, protect_with) if protect_with is not None else mask


def matched_control(model, mask: Mask, kind: str, seed: int = 0) -> Mask:
    """Same number of weights in every matrix as `mask`, chosen at random or by |w| alone."""
    g = torch.Generator().manual_seed(seed)
    indices = {}
    for key, idx in mask.indices.items():
        k = int(idx.numel())
        if k == 0:
            continue
        w = original_weight(model, key).detach().float().reshape(-1).cpu()
        if kind == "random":
            chosen = torch.randperm(w.numel(), generator=g)[:k]
        else:
            chosen = w.abs().topk(k).indices
        indices[key] = chosen.sort().values
    return Mask(indices, dict(mask.shapes), mask.fingerprint, {**mask.meta, "mode": kind})


def edited(model, *masks, strength: float = 1.0):
    """`model` with the masks applied one after another (as chained Apply CAD Mask nodes)."""
    with torch.inference_mode():
        for m in masks:
            model = apply_mask(model, m, strength)
    return model

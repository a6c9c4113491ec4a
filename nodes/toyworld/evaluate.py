"""Measuring concepts in the toy world through the pack's own code path (what the nodes call):
CLIP Text Encode's encoding, KSampler's sampler, CAD Attribute's attribute_model, the mask nodes'
select_protected, Apply CAD Mask's apply_mask.

"""
from dataclasses import dataclass, field

import numpy as np
import torch

import comfy.sample

from ...cad_core import AttributionRequest, Mask, objective_named, select_protected, sum_attributions
from ..bridge import apply_mask, attribute_model, original_weight
from .model import WEIGHTS_FILE, latent_to_image, load_toyworld, verify_weights_file
from .scorers import classify_colours, classify_shapes, load_shape_classifier
from .world import COLOUR_NAMES, SHAPES, batch, caption

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

    def sample(self, model, text: str, n: int, seed: int, cfg: float = CFG) -> torch.Tensor:
        """n images (n, 3, 32, 32) in [0, 1], sampled as KSampler samples them."""
        with torch.inference_mode():
            latent = torch.zeros((n, 48, 8, 8))
            noise = comfy.sample.prepare_noise(latent, seed)
            out = comfy.sample.sample(model, noise, SAMPLE_STEPS, cfg, SAMPLER, SCHEDULER, self.cond(text),
                                      self.cond(""), latent, seed=seed, disable_pbar=True)
            return latent_to_image(out.float())

    def grid(self, model, per_colour: int = 8, seed: int = 0, cfg: float = CFG, shapes=SHAPES) -> "Grid":
        """Samples of every 'a <colour> <shape>' prompt, `per_colour` each, seeds seed + 1000 x colour index."""
        images = {(shape, colour): self.sample(model, caption(shape, colour), per_colour, seed + 1000 * ci, cfg)
                  for shape in shapes for ci, colour in enumerate(COLOUR_NAMES)}
        return Grid(images, self.classifier)

    def accuracy(self, model, shape: str, per_colour: int = 8, seed: int = 0) -> dict:
        """Share of samples for 'a <colour> <shape>' (every colour) showing that shape / that colour."""
        return self.grid(model, per_colour, seed, shapes=(shape,)).by_shape()[shape]

    def accuracy_table(self, model, per_colour: int = 8, seed: int = 0) -> dict:
        return self.grid(model, per_colour, seed).by_shape()

    def attribute(self, concept: str, objective: str = "concept_gap", steps: int = 20, seed: int = 0,
                  samples: int = 1, schedule: str = "single", model=None, contrast: str = "context",
                  scope: str = "ff", scope_regex: str = "", guidance: float = CFG):
        """CAD attribution of a shape or a colour, with attribution seeds seed, seed + 1, ...

        contrast='context' sums over the other attribute: for a shape, 'a <c> <shape>' against 'a <c>' over the
        colours; for a colour, 'a <colour> <s>' against 'a <s>' over the shapes (the concept is the only
        difference). contrast='empty' uses 'a <concept>' against '' (the paper's protocol)."""
        model = model or self.model
        is_shape = concept in SHAPES
        if concept not in SHAPES + COLOUR_NAMES:
            raise ValueError(f"unknown concept {concept!r}: expected one of {SHAPES + COLOUR_NAMES}")
        if contrast not in ("context", "empty"):
            raise ValueError(f"unknown contrast {contrast!r}: expected 'context' or 'empty'")
        if contrast == "context":
            cells = [(concept, c) for c in COLOUR_NAMES] if is_shape else [(s, concept) for s in SHAPES]
            pairs = [(caption(s, c), caption(None, c) if is_shape else caption(s, None)) for s, c in cells]
        else:
            cells = [(concept, None) if is_shape else (None, concept)]
            pairs = [(caption(*cells[0]), "")]
        parts = []
        for i, ((positive, base), cell) in enumerate(zip(pairs, cells)):
            concept_latent = None
            if objective_named(objective).takes_images:   # rendered pictures of the concept
                concept_latent = {"samples": concept_latents(*cell, samples, seed + i)}
            with torch.inference_mode():
                request = AttributionRequest(objective=objective, steps=steps, guidance=guidance, seed=seed + i,
                                             samples=samples, scope=scope, scope_regex=scope_regex, schedule=schedule)
                parts.append(attribute_model(model, self.cond(positive), self.cond(base),
                                             {"samples": torch.zeros((1, 48, 8, 8))}, request,
                                             concept_latent=concept_latent))
        return sum_attributions(parts)


@dataclass
class Grid:
    """Images of the 'a <colour> <shape>' prompts of one model with their scores. Two grids made with the same
    seeds compare image by image: distance() is the mean absolute pixel difference (0-1 scale), which is what
    an artist sees as "the picture changed" even where the shape is still recognised."""
    images: dict
    classifier: object

    def __post_init__(self):
        self.shape_hits = {k: classify_shapes(self.classifier, im) == SHAPES.index(k[0]) for k, im in self.images.items()}
        self.colour_hits = {k: classify_colours(im) == COLOUR_NAMES.index(k[1]) for k, im in self.images.items()}

    def _share(self, hits, keys) -> float:
        return float(sum(int(hits[k].sum()) for k in keys)) / sum(int(hits[k].numel()) for k in keys)

    def by_shape(self) -> dict:
        """{shape: {shape: accuracy, colour: accuracy, n}} over the shape's prompts of every colour."""
        shapes = dict.fromkeys(k[0] for k in self.images)
        out = {}
        for s in shapes:
            keys = [k for k in self.images if k[0] == s]
            out[s] = {"shape": self._share(self.shape_hits, keys), "colour": self._share(self.colour_hits, keys),
                      "n": sum(self.images[k].shape[0] for k in keys)}
        return out

    def by_colour(self) -> dict:
        """{colour: {colour: accuracy, shape: accuracy}} over the colour's prompts of every shape."""
        out = {}
        for c in dict.fromkeys(k[1] for k in self.images):
            keys = [k for k in self.images if k[1] == c]
            out[c] = {"colour": self._share(self.colour_hits, keys), "shape": self._share(self.shape_hits, keys)}
        return out

    def distance(self, reference: "Grid", keep=lambda shape, colour: True) -> float:
        """Mean absolute pixel difference (0-1) to `reference`'s images of the same prompts and seeds, over the
        prompts `keep(shape, colour)` accepts."""
        diffs = [(self.images[k] - reference.images[k]).abs().mean().item() for k in self.images if keep(*k)]
        return sum(diffs) / len(diffs)


def concept_latents(shape: str | None, colour: str | None, n: int, seed: int) -> torch.Tensor:
    """Latents of rendered images of the concept (what VAE Encode of real pictures would give); None = any."""
    from .model import image_to_latent
    rng = np.random.default_rng(seed)
    images, _, _ = batch(rng, n, shapes=(shape,) if shape else SHAPES, colours=(colour,) if colour else COLOUR_NAMES)
    return image_to_latent(torch.from_numpy(images).permute(0, 3, 1, 2))


def erase_mask(attribution, ratio: float, granularity: str = "per_row", protect_with=None) -> Mask:
    keep = [protect_with] if protect_with is not None else []
    return select_protected(attribution, "erase", ratio, granularity, keep, protect_mode="drop")


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
    return Mask(indices, dict(mask.shapes), mask.fingerprint, mask.info.replace(mode=kind))


def edited(model, *masks, strength: float = 1.0):
    """`model` with the masks applied one after another (as chained Apply CAD Mask nodes)."""
    with torch.inference_mode():
        for m in masks:
            model = apply_mask(model, m, strength)
    return model

"""Sparse component masks: per weight key, the flat indices of the selected entries.

A mask never holds a dense full-model tensor; an SD1.5 ff-scope mask at the default ratio is a few
hundred KB.
"""
import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .blocks import block_of, block_sort_key
from .errors import CADError
from .fingerprint import require_same_model
from .mask_info import MaskInfo


@dataclass
class Mask:
    """Selected components: `indices[key]` are sorted, unique flat indices into a weight of `shapes[key]`.

    `scoped_weights` is the number of weights the selection was made from (for percentages).
    """

    indices: dict[str, torch.Tensor]
    shapes: dict[str, tuple]
    fingerprint: str
    info: MaskInfo = field(default_factory=MaskInfo)

    def __post_init__(self):
        if not isinstance(self.info, MaskInfo):
            raise TypeError(f"Mask.info must be a MaskInfo (the record that replaced the meta dict), "
                            f"got {type(self.info).__name__}.")

    @property
    def count(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())

    @property
    def scoped_weights(self) -> int:
        return int(self.info.scoped_weights or sum(math.prod(s) for s in self.shapes.values()))

    def check_valid(self) -> None:
        for key, idx in self.indices.items():
            if key not in self.shapes:
                raise CADError(f"Mask entry '{key}' has no recorded weight shape.")
            n = math.prod(self.shapes[key])
            if idx.dtype not in (torch.int32, torch.int64) or idx.ndim != 1:
                raise CADError(f"Mask entry '{key}' must be a 1-D integer index list, got {idx.dtype} {tuple(idx.shape)}.")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise CADError(f"Mask entry '{key}' has indices outside its weight of {n} entries.")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise CADError(f"Mask entry '{key}' has unsorted or repeated indices.")

    def check_nonempty(self) -> None:
        if self.count == 0:
            raise CADError(
                f"This {self.info.mode or 'CAD'} mask selects no weights, so applying it would change nothing. "
                f"Use a larger ratio, or granularity 'per_matrix' or 'global' (per_row selects nothing in rows "
                f"narrower than 1/ratio, and only components whose score has the right sign).")

    def per_block(self) -> list[dict]:
        blocks = defaultdict(lambda: {"selected": 0, "weights": 0})
        for key, shape in self.shapes.items():
            b = blocks[block_of(key)]
            b["weights"] += math.prod(shape)
            b["selected"] += int(self.indices[key].numel()) if key in self.indices else 0
        return [{"block": name, **v} for name, v in sorted(blocks.items(), key=lambda kv: block_sort_key(kv[0]))]

    def summary(self) -> dict:
        scoped = self.scoped_weights
        return {"mode": self.info.mode, "ratio": self.info.ratio,
                "granularity": self.info.granularity, "selected": self.count,
                "scoped_weights": scoped, "percent_of_scope": 100.0 * self.count / max(scoped, 1),
                "matrices_touched": sum(1 for i in self.indices.values() if i.numel()),
                "blocks": self.per_block()}

    def summary_text(self) -> str:
        s = self.summary()
        return (f"CAD {s['mode']} mask: {s['selected']:,} of {s['scoped_weights']:,} scoped weights "
                f"({s['percent_of_scope']:.4f}%) in {s['matrices_touched']} matrices "
                f"[{s['granularity']}, ratio {s['ratio']}].")


def split_flat_indices(flat: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Sorted indices into the concatenation of several flattened weights -> per-key local indices."""
    out, start = {}, 0
    for key, size in sizes.items():
        lo, hi = torch.searchsorted(flat, start), torch.searchsorted(flat, start + size)
        out[key] = flat[lo:hi] - start
        start += size
    return out


def union(masks: list[Mask]) -> Mask:
    """Components selected by any of the masks (e.g. erase several concepts at once)."""
    if not masks:
        raise CADError("Nothing to combine: give at least one mask.")
    for other in masks[1:]:
        require_same_model(other.fingerprint, masks[0].fingerprint, "One of these masks", "the first one",
                           "Only masks of the same model can be combined.")
    shapes, indices = {}, {}
    for m in masks:
        for key, shape in m.shapes.items():
            if key in shapes and tuple(shapes[key]) != tuple(shape):
                raise CADError(f"Masks disagree about the shape of '{key}': {shapes[key]} vs {shape}.")
            shapes[key] = tuple(shape)
        for key, idx in m.indices.items():
            indices[key] = idx if key not in indices else torch.unique(torch.cat([indices[key], idx]))
    modes = sorted({str(m.info.mode) for m in masks})
    info = MaskInfo(mode="+".join(modes), combined_from=tuple(m.info for m in masks),
                    scoped_weights=sum(math.prod(s) for s in shapes.values()), granularity="combined")
    return Mask(indices, shapes, masks[0].fingerprint, info)


def protect(mask: Mask, reference) -> Mask:
    """Drop the selected components that carry another concept (alpha > 0 in `reference`).

    Ablating those would weaken the reference concept too, so "erase A, protect B" leaves them alone.
    """
    require_same_model(reference.fingerprint, mask.fingerprint, "The protect attribution", "the mask",
                       "Attribute both concepts on the same model.")
    require_shared_weights(reference, mask.indices)
    kept, dropped = {}, 0
    for key, idx in mask.indices.items():
        scores = reference.scores.get(key)
        if scores is None:
            kept[key] = idx
            continue
        carries = scores.reshape(-1)[idx] > 0
        kept[key] = idx[~carries]
        dropped += int(carries.sum())
    info = mask.info.replace(protected_dropped=(mask.info.protected_dropped or 0) + dropped,
                             protect_objective=reference.info.objective)
    return Mask(kept, dict(mask.shapes), mask.fingerprint, info)


def require_shared_weights(reference, keys) -> None:
    """A protect attribution must score some of the weights it protects: one of another scope would protect
    nothing, silently."""
    if keys and not set(keys) & set(reference.scores):
        raise CADError("A protect attribution scores none of the weights the concept's attribution scores (another "
                       "scope), so it could protect nothing. Attribute the concept to keep with the same scope as the "
                       "concept.")


def scale_selected(weight: torch.Tensor, indices: torch.Tensor, strength: float) -> torch.Tensor:
    """W[idx] *= (1 - strength), in place on `weight` (a temporary copy in ComfyUI's patch path).

    strength 1 zeroes the selected entries exactly; 0.5 halves them.
    """
    flat = weight.view(-1)
    idx = indices.to(device=weight.device, dtype=torch.long)
    if strength == 1.0:
        flat.index_fill_(0, idx, 0)
    else:
        flat.index_copy_(0, idx, flat.index_select(0, idx) * (1.0 - strength))
    return weight

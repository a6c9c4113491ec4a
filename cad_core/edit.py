"""A weight edit: dense changes dW for a few matrices of one model (what CAD Erase Concept makes), with the model's
fingerprint and how it was made. Applied as W + strength x dW; saved as a LoRA file whose `diff` entries are dW,
so any LoRA loader applies exactly the same change."""
import math
from dataclasses import dataclass, field

import torch

from .blocks import block_of, block_sort_key
from .errors import CADError


@dataclass
class WeightEdit:
    """deltas[key]: dW for the weight `key` (fp32, CPU), its shape the weight's."""

    deltas: dict[str, torch.Tensor]
    fingerprint: str
    meta: dict = field(default_factory=dict)

    def check_valid(self) -> None:
        if not self.deltas:
            raise CADError("This edit changes no weights, so applying it would change nothing.")
        for key, d in self.deltas.items():
            if d.ndim != 2:
                raise CADError(f"Edit entry '{key}' must be a 2-D weight change, got shape {tuple(d.shape)}.")
            if not torch.isfinite(d).all():
                raise CADError(f"Edit entry '{key}' holds NaN or inf values; the edit cannot be applied.")

    @property
    def weights_changed(self) -> int:
        return sum(int((d != 0).sum()) for d in self.deltas.values())

    def summary(self) -> dict:
        blocks = {}
        for key, d in self.deltas.items():
            b = blocks.setdefault(block_of(key), {"matrices": 0, "weights": 0, "norm_sq": 0.0})
            b["matrices"] += 1
            b["weights"] += d.numel()
            b["norm_sq"] += float(d.double().pow(2).sum())
        rows = [{"block": name, "matrices": v["matrices"], "weights": v["weights"], "norm": math.sqrt(v["norm_sq"])}
                for name, v in sorted(blocks.items(), key=lambda kv: block_sort_key(kv[0]))]
        return {"mode": self.meta.get("mode", "edit"), "matrices": len(self.deltas),
                "weights_changed": self.weights_changed, "blocks": rows,
                **{k: self.meta[k] for k in ("erase", "keep", "overshoot", "preserve") if k in self.meta}}

    def summary_text(self) -> str:
        s = self.summary()
        lines = [f"CAD {s['mode']}: {s['weights_changed']:,} weights changed in {s['matrices']} matrices "
                 f"(closed form, overshoot {self.meta.get('overshoot')}, preserve {self.meta.get('preserve')})."]
        if self.meta.get("erase"):
            lines.append(f"  erased: {', '.join(repr(p) for p in self.meta['erase'])}")
        if self.meta.get("keep"):
            lines.append(f"  kept: {', '.join(repr(p) for p in self.meta['keep'])}")
        for r in s["blocks"]:
            lines.append(f"  {r['block']:<18} {r['matrices']} matrices, |dW| {r['norm']:.4g}")
        return "\n".join(lines)


def edit_as_lora(edit: WeightEdit) -> dict[str, torch.Tensor]:
    """LoRA tensors that make the same change: one `diff` entry (dW, fp32) per edited matrix. A LoRA loader adds
    strength x diff, as applying the edit at that strength does."""
    from .export import lora_key
    edit.check_valid()
    return {lora_key(key): d.detach().to("cpu", torch.float32).contiguous() for key, d in edit.deltas.items()}

"""A weight edit: dense changes dW for a few weights of one model (what CAD Erase Concept makes), with the model's
fingerprint and how it was made. Applied as W + strength x dW; saved as a LoRA file whose `diff` entries are dW,
so any LoRA loader applies exactly the same change, and Load CAD Edit reads it back with the fingerprint check."""
import math
import os
from dataclasses import dataclass, field

import torch

from .blocks import block_of, block_sort_key
from .edit_info import EditInfo
from .errors import CADError, CADFileError
from .export import lora_key
from .fingerprint import ModelFingerprints, require_same_model
from .serialization import _reason, _strict_json


@dataclass
class WeightEdit:
    """deltas[key]: dW for the weight `key` (fp32, CPU), its shape the weight's."""

    deltas: dict[str, torch.Tensor]
    fingerprint: str
    info: EditInfo = field(default_factory=EditInfo)

    def __post_init__(self):
        if not isinstance(self.info, EditInfo):
            raise TypeError(f"WeightEdit.info must be an EditInfo (the record that replaced the meta dict), "
                            f"got {type(self.info).__name__}.")

    def check_valid(self) -> None:
        if not self.deltas:
            raise CADError("This edit changes no weights, so applying it would change nothing.")
        for key, d in self.deltas.items():
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
        recorded = self.info.to_json_dict()
        return {"mode": self.info.mode or "edit", "matrices": len(self.deltas),
                "weights_changed": self.weights_changed, "blocks": rows,
                **{k: recorded[k] for k in ("erase", "keep", "overshoot", "preserve") if k in recorded}}

    def summary_text(self) -> str:
        s, info = self.summary(), self.info
        how = (f" (closed form, overshoot {info.overshoot}, preserve {info.preserve})"
               if info.overshoot is not None else "")
        lines = [f"CAD {s['mode']}: {s['weights_changed']:,} weights changed in {s['matrices']} matrices{how}."]
        if info.erase_mode == "robust" and info.trained_weights is not None:
            lines.append(f"  robust: {info.trained_weights:,} image-pathway weights in {info.trained_matrices} "
                         f"matrices trained for {info.train_steps} steps against {info.adversaries} attacking "
                         f"conditionings.")
        if info.erase:
            lines.append(f"  erased: {', '.join(repr(p) for p in info.erase)}")
        if info.keep:
            lines.append(f"  kept: {', '.join(repr(p) for p in info.keep)}")
        for r in s["blocks"]:
            lines.append(f"  {r['block']:<18} {r['matrices']} matrices, |dW| {r['norm']:.4g}")
        return "\n".join(lines)


def edit_as_lora(edit: WeightEdit) -> dict[str, torch.Tensor]:
    """LoRA tensors that make the same change: one `diff` entry (dW, fp32) per edited matrix. A LoRA loader adds
    strength x diff, as applying the edit at that strength does."""
    edit.check_valid()
    return {lora_key(key): d.detach().to("cpu", torch.float32).contiguous() for key, d in edit.deltas.items()}


def load_edit_lora(path: str, expected_fingerprint: "str | ModelFingerprints | None" = None) -> WeightEdit:
    """A LoRA file the CAD Save ... as LoRA nodes wrote, as the edit it makes: each `x.diff` entry is dW for the
    weight `x.weight`. Refused: a file without CAD's metadata (a LoRA from elsewhere: load it with a LoRA loader),
    one made for another model (when `expected_fingerprint` is given), entries that are not `diff`s."""
    from safetensors import safe_open
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CADFileError(f"LoRA file not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("cad.kind") != "lora" or not metadata.get("cad.fingerprint"):
                raise CADFileError(f"{name} is not a LoRA written by a CAD node (no CAD metadata), so CAD cannot check "
                                   f"which model it belongs to. Load it with LoraLoaderModelOnly instead.")
            if expected_fingerprint is not None:
                require_same_model(metadata["cad.fingerprint"], expected_fingerprint, name, "this model",
                                   "Connect the model the edit was made for.", CADFileError)
            deltas = {}
            for key in f.keys():
                if not key.endswith(".diff"):
                    raise CADFileError(f"{name}: entry '{key}' is not a weight 'diff', the only kind CAD's LoRA files "
                                       f"hold.")
                deltas[key[: -len(".diff")] + ".weight"] = f.get_tensor(key).float()
    except CADFileError:
        raise
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any parser failure means "not readable"
        raise CADFileError(f"{name} is not a readable safetensors file (truncated or another format?): "
                           f"{_reason(e)}") from None
    try:   # cut at 64 KiB when written (a long record may not parse); the edit itself does not need it
        info = EditInfo.from_json_dict(_strict_json(metadata.get("cad.mask_meta") or "{}"))
    except (ValueError, RecursionError):
        info = EditInfo()
    edit = WeightEdit(deltas, metadata["cad.fingerprint"], info)
    try:
        edit.check_valid()
    except CADError as e:
        raise CADFileError(f"{name}: {e}") from None
    return edit

"""Which weights CAD attributes: scope presets per architecture family, or a user regex.

A scope is resolved against (key, shape) pairs of the denoiser's parameters. Resolving to nothing
is always an error: an empty scope would make every later step a silent no-op.
"""
import re
from collections import Counter
from typing import Iterable, Sequence

from .errors import CADError

SCOPE_PRESETS = ("ff", "attention", "ff+attention", "all_linear", "regex")

# Per family: regexes for the feed-forward (MLP) and attention projection weights, written against
# ComfyUI's own parameter names (checked on models built from comfy.supported_models, tests/family_models.py).
# UNet names are shared by SD1.x, SD2.x and SDXL. Flux's single-stream blocks fuse attention and MLP in
# linear1 (qkv + mlp_in) and linear2 (proj + mlp_out); the presets count both as feed-forward.
_FAMILY_PATTERNS = {
    "unet": {
        "ff": r"\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)\.weight$",
        "attention": r"\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$",
    },
    "flux": {
        "ff": r"(double_blocks\.\d+\.(img_mlp|txt_mlp)\.\d+|single_blocks\.\d+\.linear[12])\.weight$",
        "attention": r"double_blocks\.\d+\.(img_attn|txt_attn)\.(qkv|proj)\.weight$",
    },
    "mmdit": {
        "ff": r"joint_blocks\.\d+\.(x_block|context_block)\.mlp\.fc[12]\.weight$",
        "attention": r"joint_blocks\.\d+\.(x_block|context_block)\.attn2?\.(qkv|proj)\.weight$",
    },
}


FAMILY_NAMES = {
    "unet": "SD1.x / SD2.x / SDXL UNet",
    "flux": "Flux (double/single-stream DiT)",
    "mmdit": "SD3 / SD3.5 MMDiT",
}
SUPPORTED_FAMILIES = ", ".join(FAMILY_NAMES.values())


def detect_family(keys: Iterable[str]) -> str | None:
    """'unet', 'flux' or 'mmdit' from a model's weight names; None for an architecture without presets."""
    keys = list(keys)
    if any(".input_blocks." in k or k.startswith("input_blocks.") for k in keys):
        return "unet"
    if any("double_blocks." in k for k in keys):
        return "flux"
    if any("joint_blocks." in k for k in keys):
        return "mmdit"
    return None


def resolve_scope(named_shapes: Sequence[tuple[str, tuple[int, ...]]], scope: str, regex: str = "") -> list[str]:
    """Return the keys (in model order) that `scope` selects, or raise CADError saying why none."""
    if scope not in SCOPE_PRESETS:
        raise CADError(f"Unknown scope '{scope}'. Expected one of: {', '.join(SCOPE_PRESETS)}.")
    keys = [k for k, _ in named_shapes]
    shapes = dict(named_shapes)

    if scope == "regex":
        if not regex.strip():
            raise CADError("Scope 'regex' needs a pattern in scope_regex, e.g. '\\.attn2\\.to_k\\.weight$'.")
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise CADError(f"scope_regex '{regex}' is not a valid regular expression: {e}.") from None
        chosen = [k for k in keys if pattern.search(k)]
    elif scope == "all_linear":
        chosen = [k for k in keys if k.endswith(".weight") and len(shapes[k]) == 2]
    else:
        family = detect_family(keys)
        if family is None:
            raise CADError(
                f"Scope '{scope}' has no preset for this model's architecture (supported families: "
                f"{SUPPORTED_FAMILIES}). Use scope 'all_linear', or scope 'regex' with a pattern in "
                f"scope_regex over these weight names: {_describe_keys(keys)}")
        parts = ("ff", "attention") if scope == "ff+attention" else (scope,)
        pattern = re.compile("|".join(f"(?:{_FAMILY_PATTERNS[family][p]})" for p in parts))
        chosen = [k for k in keys if pattern.search(k) and len(shapes[k]) == 2]

    if not chosen:
        detail = f" with pattern '{regex}'" if scope == "regex" else ""
        if scope in ("ff", "attention", "ff+attention"):
            detail = f" (preset for {FAMILY_NAMES[family]})"
        hint = "" if scope == "regex" else \
            " Pick another scope, or scope 'regex' with a pattern in scope_regex over the names below."
        raise CADError(
            f"Scope '{scope}'{detail} matched no weights in this model, so there is nothing to attribute.{hint} "
            f"The model has {len(keys)} parameters: {_describe_keys(keys)}")
    return chosen


def _describe_keys(keys: Sequence[str], examples: int = 6) -> str:
    """A short inventory: the most common layer-name endings and a few full example names."""
    endings = Counter(".".join(k.split(".")[-3:]) for k in keys)
    common = ", ".join(f"'{e}' x{n}" for e, n in endings.most_common(8))
    sample = ", ".join(keys[:: max(1, len(keys) // examples)][:examples])
    return f"most common name endings {common}; examples: {sample}."

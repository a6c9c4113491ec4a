"""A short identity for a model's weights: key names, shapes and a sample of values.

Attribution and mask files carry it so that an edit made for one checkpoint is never applied to
another. Values are rounded through fp16 so fp32/fp16/bf16 copies of one checkpoint mostly agree.
Names are hashed in one canonical spelling (canonical_key), so one checkpoint has one fingerprint under
every ComfyUI version the pack supports, even where ComfyUI renamed a parameter.
"""
import hashlib
import re
from typing import Callable, Sequence

import torch

from .errors import CADError

SAMPLED_KEYS = 8
SAMPLED_VALUES = 256


# ComfyUI 0.33 made Flux's RMSNorm a comfy op and renamed its parameter: `..._norm.scale` (0.3.x) is
# `..._norm.weight` now (comfy/supported_models.py Flux.process_unet_state_dict). Same tensor, same checkpoint.
# Fingerprints keep the 0.3.x spelling, so files written by earlier versions of the pack still match.
_RENAMED = ((re.compile(r"_norm\.weight$"), "_norm.scale"),)


def canonical_key(key: str) -> str:
    """A parameter name as ComfyUI 0.3.x spelled it (the spelling fingerprints are computed in)."""
    for pattern, replacement in _RENAMED:
        key = pattern.sub(replacement, key)
    return key


def require_same_model(fingerprint: str, expected: str, subject: str, reference: str, advice: str,
                       error: type = CADError) -> None:
    """The one same-model check: `subject` (made for the model with `fingerprint`) must belong to the model that
    `reference` was made for (`expected`), else a message naming both fingerprints and what to do."""
    if fingerprint != expected:
        raise error(f"{subject} was made for another model (fingerprint {fingerprint}) than {reference} "
                    f"(fingerprint {expected}). {advice}")


def sampled_keys(keys: Sequence[str]) -> list[str]:
    """The keys whose values go into the fingerprint: evenly spaced over the sorted key list."""
    ordered = sorted(keys)
    step = max(1, len(ordered) // SAMPLED_KEYS)
    return ordered[::step][:SAMPLED_KEYS]


def model_fingerprint(named_shapes: Sequence[tuple[str, tuple]], read_weight: Callable[[str], torch.Tensor]) -> str:
    """sha256 over sorted (name, shape) pairs and the first values of a few weights; 16 hex digits."""
    by_canonical = {canonical_key(name): name for name, _ in named_shapes}
    h = hashlib.sha256()
    for name, shape in sorted((canonical_key(name), shape) for name, shape in named_shapes):
        h.update(f"{name}:{tuple(shape)};".encode())
    for name in sampled_keys(list(by_canonical)):
        h.update(_first_values(read_weight(by_canonical[name])).numpy().tobytes())
    return h.hexdigest()[:16]


def _first_values(weight: torch.Tensor) -> torch.Tensor:
    """The first SAMPLED_VALUES values as fp16 on the CPU, taken without making a view: weights loaded
    under inference mode are inference tensors, and torch 2.11 refuses views of them outside it
    ("Inference tensors do not track version counter")."""
    with torch.no_grad():
        count = min(SAMPLED_VALUES, weight.numel())
        try:
            values = torch.take(weight, torch.arange(count, device=weight.device))
        except NotImplementedError:  # take has no fp8 kernels; a view of those is fine
            values = weight.detach().reshape(-1)[:count]
    return values.to("cpu", torch.float32).to(torch.float16)

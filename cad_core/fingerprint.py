"""A short identity for a model's weights: key names, shapes and a sample of the values of every tensor.

Attribution and mask files carry it so that an edit made for one checkpoint is never applied to
another, a fine-tune of it included. Values are rounded through fp16 so fp32/fp16/bf16 copies of one
checkpoint mostly agree.
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


def require_same_model(fingerprint: str, expected: "str | ModelFingerprints", subject: str, reference: str,
                       advice: str, error: type = CADError) -> None:
    """The one same-model check: `subject` (made for the model with `fingerprint`) must belong to the model that
    `reference` stands for (`expected`: its fingerprint, or all its fingerprints when it is a model at hand), else
    a message naming both fingerprints and what to do."""
    if isinstance(expected, ModelFingerprints):
        expected = expected.matching(fingerprint)
    if fingerprint == expected:
        return
    if scheme_of(fingerprint) != scheme_of(expected):
        raise error(f"{subject} and {reference} carry fingerprints of different kinds ({fingerprint}, {expected}), "
                    f"so CAD cannot tell whether they belong to one model. Load both with the model connected, or "
                    f"make the older one again with this version of the pack.")
    raise error(f"{subject} was made for another model (fingerprint {fingerprint}) than {reference} "
                f"(fingerprint {expected}). {advice}")


# --- the fingerprint (scheme v2, since pack 0.5.0) ---------------------------------------------------------------
# sha256 over the sorted (name, shape) pairs and, for EVERY tensor, STRIDED_VALUES values spread evenly over it:
# a fine-tune changes the values of the tensors it touches, wherever they are. Written "v2-" + 16 hex digits.
SCHEME = "v2"
STRIDED_VALUES = 256


def model_fingerprint(named_shapes: Sequence[tuple[str, tuple]], read_weight: Callable[[str], torch.Tensor]) -> str:
    """The model's fingerprint in the current scheme: names, shapes and a strided sample of every tensor."""
    by_canonical = {canonical_key(name): name for name, _ in named_shapes}
    h = hashlib.sha256(b"cad-fingerprint-v2;")
    for name, shape in sorted((canonical_key(name), shape) for name, shape in named_shapes):
        h.update(f"{name}:{tuple(shape)};".encode())
    for name in sorted(by_canonical):
        h.update(_strided_values(read_weight(by_canonical[name])).numpy().tobytes())
    return f"{SCHEME}-{h.hexdigest()[:16]}"


def scheme_of(fingerprint: str) -> str:
    """'v2' for current fingerprints, 'v1' for the 16 hex digits of files written before pack 0.5.0."""
    return fingerprint.split("-", 1)[0] if "-" in fingerprint else "v1"


class ModelFingerprints:
    """A model's fingerprint in each scheme, computed when first asked: files written before pack 0.5.0 carry the
    v1 kind, and are still accepted for the model they were made for."""

    def __init__(self, named_shapes, read_weight):
        self.named_shapes, self.read_weight, self._by_scheme = list(named_shapes), read_weight, {}

    @property
    def current(self) -> str:
        return self.of_scheme(SCHEME)

    def of_scheme(self, scheme: str) -> str:
        if scheme not in self._by_scheme:
            compute = {SCHEME: model_fingerprint, "v1": legacy_fingerprint}.get(scheme)
            self._by_scheme[scheme] = compute(self.named_shapes, self.read_weight) if compute else f"{scheme}-?"
        return self._by_scheme[scheme]

    def matching(self, fingerprint: str) -> str:
        """This model's fingerprint in the scheme of `fingerprint`."""
        return self.of_scheme(scheme_of(fingerprint))


def _strided_values(weight: torch.Tensor) -> torch.Tensor:
    """STRIDED_VALUES values spread evenly over the tensor (all of a smaller one), as fp16 on the CPU: fp32, fp16
    and bf16 copies of one checkpoint mostly agree. Taken without making a view: weights loaded under inference
    mode are inference tensors, and torch refuses views of them outside it."""
    with torch.no_grad():
        n = weight.numel()
        count = min(STRIDED_VALUES, n)
        # integer arithmetic: a float linspace rounds past the last element of tensors beyond 2**24 elements
        index = (torch.arange(count, dtype=torch.int64, device=weight.device) * (n - 1)) // max(count - 1, 1)
        try:
            values = torch.take(weight, index)
        except (NotImplementedError, RuntimeError):  # take has no fp8 kernels: gather their bytes, view them back
            values = weight.detach().reshape(-1).view(torch.uint8)[index].view(weight.dtype)
    return values.to("cpu", torch.float32).to(torch.float16)


# --- scheme v1 (files written before pack 0.5.0): names, shapes and the first values of 8 tensors ----------------
SAMPLED_KEYS = 8
SAMPLED_VALUES = 256


def sampled_keys(keys: Sequence[str]) -> list[str]:
    """v1: the keys whose values go into the fingerprint: evenly spaced over the sorted key list."""
    ordered = sorted(keys)
    step = max(1, len(ordered) // SAMPLED_KEYS)
    return ordered[::step][:SAMPLED_KEYS]


def legacy_fingerprint(named_shapes: Sequence[tuple[str, tuple]], read_weight: Callable[[str], torch.Tensor]) -> str:
    """v1: sha256 over sorted (name, shape) pairs and the first values of a few weights; 16 hex digits. It cannot
    tell a fine-tune from its base model when the fine-tune leaves those few values alone."""
    by_canonical = {canonical_key(name): name for name, _ in named_shapes}
    h = hashlib.sha256()
    for name, shape in sorted((canonical_key(name), shape) for name, shape in named_shapes):
        h.update(f"{name}:{tuple(shape)};".encode())
    for name in sampled_keys(list(by_canonical)):
        h.update(_first_values(read_weight(by_canonical[name])).numpy().tobytes())
    return h.hexdigest()[:16]


def _first_values(weight: torch.Tensor) -> torch.Tensor:
    """v1: the first SAMPLED_VALUES values as fp16 on the CPU, taken without making a view."""
    with torch.no_grad():
        count = min(SAMPLED_VALUES, weight.numel())
        try:
            values = torch.take(weight, torch.arange(count, device=weight.device))
        except NotImplementedError:  # take has no fp8 kernels; a view of those is fine
            values = weight.detach().reshape(-1)[:count]
    return values.to("cpu", torch.float32).to(torch.float16)

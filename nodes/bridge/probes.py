"""Gradient probes: the weight wrappers through which CAD Attribute reads dJ/dW of the scoped weights of a ComfyUI
model, and hands every other layer a private weight it may save for backward.

ComfyUI applies a module's weight functions to the weight it casts for each forward pass. GradProbe puts the scoped
weight into the autograd graph there (identity in value) and sends its gradient to the accumulator attribute()
owns; CopyForBackward makes sure no layer saves an inference tensor or a view of a reused cast buffer. The
wrappers are removed from the shared modules afterwards, whatever happened.
"""
import contextlib
import logging

import torch

from ...cad_core import CADError, GradientCapture
from .model_info import patchable_weights


class _CADWeightFunction:
    """Marker base for wrappers this pack installs, so they can always be removed again."""


class GradProbe(_CADWeightFunction):
    """Weight wrapper: returns W unchanged but puts it in the graph and captures dJ/dW.

    Adding a zero anchor (instead of making W a leaf) keeps autograd from allocating a W-sized .grad.
    alpha multiplies the weight the model actually computes with, LoRA patches included: the first W seen. When
    that is exactly the weight the module holds (a fully loaded model: the usual case), the probe keeps a reference
    to it instead of a copy; otherwise (weights cast to another dtype or device, patched at cast time in lowvram
    mode) an fp32 copy in CPU RAM.
    """

    def __init__(self, key, device, stored_weight=None):
        self.key, self.acc, self.value = key, None, None  # acc: set by ProbeCapture.capturing for the run
        self.stored_weight = stored_weight or (lambda: None)   # the module's own weight, read at the first call
        self.anchor = torch.zeros((), device=device, requires_grad=True)

    def __call__(self, w):
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return w
        if self.value is None:
            self.value = self._first_weight(w.detach())
        w = w + self.anchor.to(dtype=w.dtype, device=w.device)
        w.register_hook(lambda g: self.acc.add(self.key, g))
        return w

    def _first_weight(self, w):
        stored = self.stored_weight()
        if (stored is not None and stored.shape == w.shape and stored.dtype == w.dtype and stored.device == w.device
                and torch.equal(stored, w)):
            return stored
        return w.to("cpu", torch.float32, copy=True)

    def move_to(self, device=None):
        if device is not None:
            self.anchor = self.anchor.detach().to(device).requires_grad_(True)
        return 0


class GraphProbe(GradProbe):
    """A GradProbe that only puts W in the graph: no gradient capture, no copy of W. For the forward that measures
    what a differentiated step keeps for backward (activation_memory), which never runs a backward pass."""

    def __call__(self, w):
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return w
        return w + self.anchor.to(dtype=w.dtype, device=w.device)


class CopyForBackward(_CADWeightFunction):
    """Identity wrapper whose only job is to hand the layer a private tensor it may save for backward.

    ComfyUI 0.3.x casts a private copy whenever a weight function exists, but that copy can still be an
    inference tensor; Dynamic VRAM (0.33+) hands weight functions views of reused cast buffers, which the next
    layer's cast overwrites before backward reads them. Both are cloned; a private ordinary tensor is not.
    """

    def __call__(self, w):
        if torch.is_grad_enabled() and (w.is_inference() or w._base is not None):
            return w.clone()
        return w


class ProbeCapture(GradientCapture):
    """cad_core's GradientCapture for a ComfyUI model: GradProbe weight wrappers on the scoped weights."""

    def __init__(self, probes: dict, shapes: dict, device):
        self.probes, self.device = probes, device
        self.shapes = {k: tuple(shapes[k]) for k in probes}

    @contextlib.contextmanager
    def capturing(self, accumulator):
        for probe in self.probes.values():
            probe.acc = accumulator
        try:
            yield
        finally:
            for probe in self.probes.values():
                probe.acc = None

    def weights(self):
        """The weights as the probes saw them in the first forward pass (LoRA patches included). A scoped weight
        no forward pass used has zero gradient, so its alpha is zero whatever W is."""
        return {k: (p.value if p.value is not None else torch.zeros(self.shapes[k])) for k, p in self.probes.items()}


def install_probes(grad_model, keys, probe_type=GradProbe):
    probes, scoped, copier = {}, set(keys), CopyForBackward()
    for key, _ in patchable_weights(grad_model):
        if key in scoped:
            module, attr = _module_and_attr(grad_model, key)
            probes[key] = probe_type(key, grad_model.load_device, lambda m=module, a=attr: getattr(m, a, None))
            grad_model.add_weight_wrapper(key, probes[key])
        else:
            grad_model.add_weight_wrapper(key, copier)
    return probes


def _module_and_attr(patcher, key):
    module_name, attr = key.rsplit(".", 1)
    return patcher.model.get_submodule(module_name), attr


def install_missing_cad_wrappers(grad_model) -> int:
    """Put back the CAD wrappers ComfyUI's loader left off a module; returns how many modules needed it.

    Weight wrappers reach a module only when ComfyUI's load installs them, and Dynamic VRAM (0.33+) installs
    them only on modules larger than 16 KiB: a small scoped module would run without its probe (alpha silently
    0) and a small unscoped one would hand autograd a shared weight. Called after ComfyUI has loaded the model.
    """
    repaired = 0
    for key, functions in grad_model.weight_wrapper_patches.items():
        ours = [f for f in functions if isinstance(f, _CADWeightFunction)]
        if not ours:
            continue
        module, attr = _module_and_attr(grad_model, key)
        installed = list(getattr(module, attr + "_function", None) or [])
        missing = [f for f in ours if not any(f is g for g in installed)]
        if missing:
            setattr(module, attr + "_function", installed + missing)
            repaired += 1
    if repaired:
        logging.info("CAD: ComfyUI loaded %d modules without CAD's weight wrappers (Dynamic VRAM skips modules "
                     "<= 16 KiB); installed them directly.", repaired)
    return repaired


@contextlib.contextmanager
def probes_must_see_their_modules(grad_model, probes):
    """Fail loudly instead of scoring 0: a scoped module that ran a differentiated forward without its probe
    being called means some ComfyUI path bypassed the weight wrappers."""
    ran, hooks = set(), []
    for key in probes:
        module, _ = _module_and_attr(grad_model, key)

        def seen(mod, args, key=key):
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                ran.add(key)
        hooks.append(module.register_forward_pre_hook(seen))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
    bypassed = sorted(k for k in ran if probes[k].value is None)
    if bypassed:
        raise CADError(
            f"ComfyUI ran {len(bypassed)} scoped layers without CAD's gradient probe (e.g. {bypassed[:3]}), so their "
            f"scores would be wrong. Please report this with your ComfyUI version; starting ComfyUI with "
            f"--disable-dynamic-vram is the workaround.")


def remove_cad_wrappers(model) -> None:
    """Strip this pack's wrappers from the shared modules (ComfyUI's unpatch leaves weight functions)."""
    for module in model.model.diffusion_model.modules():
        for attr in ("weight_function", "bias_function"):
            functions = getattr(module, attr, None)
            if functions:
                setattr(module, attr, [f for f in functions if not isinstance(f, _CADWeightFunction)])


def modules_with_cad_wrappers(root) -> list:
    return [m for m in root.modules()
            if any(isinstance(f, _CADWeightFunction) for f in getattr(m, "weight_function", None) or ())]


@contextlib.contextmanager
def cad_wrappers_lifted(modules):
    """Without gradients the probes and copiers do nothing, but their mere presence makes ComfyUI copy every
    weight on every forward (comfy.ops cast_to(copy=True)); no-grad forwards run without them."""
    saved = [(m, m.weight_function) for m in modules]
    for m, functions in saved:
        m.weight_function = [f for f in functions if not isinstance(f, _CADWeightFunction)]
    try:
        yield
    finally:
        for m, functions in saved:
            m.weight_function = functions

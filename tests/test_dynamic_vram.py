"""CAD Attribute under ComfyUI's Dynamic VRAM (0.33+, on by default on GPUs), tested on CPU.

A CPU run never takes ComfyUI's Dynamic VRAM path, so its two hazards for autograd are reproduced here by
a stand-in (`dynamic_vram_hazards`), installed into ComfyUI for one test:
- every layer's cast weight is a view of ONE shared buffer, overwritten by the next layer's cast (as the
  reused cast buffers and VBAR slots of comfy/ops.py cast_bias_weight are), and weight functions receive
  those views, not private copies;
- after loading, modules of at most 16 KiB carry no weight functions (comfy/model_patcher.py, Dynamic
  VRAM's load installs them only on larger modules).
Alpha must still equal plain autograd. On the code before this file existed the first hazard broke
backward ("modified by an inplace operation") or silently changed alpha, and the second left the small
scoped matrices (this model's ff.net.2, exactly 16 KiB) at alpha 0.
"""
import inspect
import logging

import pytest
import torch

import comfy.model_patcher
import comfy.ops
from cad_pack.cad_core import AttributionRequest, CADError
from cad_pack.nodes.bridge import guided_run
from cad_pack.nodes.bridge import attribute_model

from scripts.family_models import build, conditioning, empty_latent, plain_autograd_alpha
from tiny_models import sample as sample_tiny

STEPS, SEED, GUIDANCE = 2, 5, 3.0
SMALL_MODULE_BYTES = 16 * 1024        # Dynamic VRAM's threshold for installing weight functions
HAS_DISABLE_DYNAMIC = "disable_dynamic" in inspect.signature(comfy.model_patcher.ModelPatcher.clone).parameters


def _param_bytes(module):
    return sum(p.numel() * p.element_size() for p in (getattr(module, "weight", None), getattr(module, "bias", None))
               if p is not None)


class SharedCastBuffer:
    """One buffer every cast writes into. `tracked`: written with copy_ (autograd's version counter sees the
    overwrite and refuses the backward); untracked: written behind autograd's back, as a copy kernel on another
    stream is (backward then silently reads the next layer's weight)."""

    def __init__(self, elements, tracked):
        with torch.inference_mode(False):
            self.buffer = torch.zeros(elements)
        self.tracked = tracked

    def view_holding(self, value, offset, dtype):
        with torch.inference_mode(False), torch.no_grad():
            view = self.buffer[offset:offset + value.numel()].view(value.shape)
            source = value.detach().to(self.buffer.dtype)
            (view if self.tracked else view.data).copy_(source)
        return view.to(dtype)


@pytest.fixture
def dynamic_vram_hazards(monkeypatch):
    """Install the stand-in for modules marked by a patcher whose load looks dynamic; returns a function that
    marks which patchers count as dynamic (default: every patcher)."""
    state = {"is_dynamic": lambda patcher: True, "buffer": None}
    original_load, original_cast = comfy.model_patcher.ModelPatcher.load, comfy.ops.cast_bias_weight

    def load(self, *args, **kwargs):
        result = original_load(self, *args, **kwargs)
        dynamic = state["is_dynamic"](self)
        largest = 0
        for module in self.model.modules():
            if not hasattr(module, "comfy_cast_weights"):
                continue
            module._cad_test_dynamic = dynamic
            if dynamic:
                module.comfy_cast_weights = True
                largest = max(largest, sum(p.numel() for p in (module.weight, module.bias) if p is not None))
                if _param_bytes(module) <= SMALL_MODULE_BYTES:
                    module.weight_function, module.bias_function = [], []
        if dynamic:
            state["buffer"] = SharedCastBuffer(largest, tracked=state["tracked"])
        return result

    def cast_bias_weight(s, input=None, dtype=None, device=None, bias_dtype=None, offloadable=False, **kwargs):
        if not getattr(s, "_cad_test_dynamic", False):
            return original_cast(s, input, dtype, device, bias_dtype, offloadable, **kwargs)
        dtype = dtype or input.dtype
        bias_dtype = bias_dtype or dtype
        weight = state["buffer"].view_holding(s.weight, 0, dtype)
        bias = None
        if s.bias is not None:
            bias = state["buffer"].view_holding(s.bias, s.weight.numel(), bias_dtype)
            for f in s.bias_function:
                bias = f(bias)
        for f in s.weight_function:
            weight = f(weight)
        return (weight, bias, None) if offloadable else (weight, bias)

    monkeypatch.setattr(comfy.model_patcher.ModelPatcher, "load", load)
    monkeypatch.setattr(comfy.ops, "cast_bias_weight", cast_bias_weight)

    def configure(tracked=False, is_dynamic=None):
        state["tracked"] = tracked
        if is_dynamic is not None:
            state["is_dynamic"] = is_dynamic
    configure()
    return configure


def node_path(mp, family, scope="ff+attention"):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), empty_latent(),
                               AttributionRequest(steps=STEPS, guidance=GUIDANCE, seed=SEED, scope=scope))


def expected_alpha(family, keys, seed):
    reference = build(family, seed=seed, inference=False)
    with torch.inference_mode(False):
        return plain_autograd_alpha(reference, family, "concept_gap", keys, conditioning(family, 1),
                                    conditioning(family, 2), steps=STEPS, seed=SEED, guidance=GUIDANCE)


def assert_alpha_equals_plain_autograd(attribution, family, seed):
    expected = expected_alpha(family, list(attribution.scores), seed)
    for key, score in attribution.scores.items():
        assert score.abs().max() > 0, f"{key}: alpha is all zero (its probe never ran)"
        torch.testing.assert_close(score, expected[key], rtol=1e-4,
                                   atol=1e-12 + 1e-4 * expected[key].abs().max().item(), msg=key)


def small_scoped_keys(mp, keys):
    return [k for k in keys if _param_bytes(mp.model.get_submodule(k.rsplit(".", 1)[0])) <= SMALL_MODULE_BYTES]


# sd15 ff+attention: scoped matrices of 16 KiB (ff.net.2) lose their probes. flux ff: the unscoped attention
# projections lie between scoped layers, so backward needs their weights as the forward used them.
@pytest.mark.parametrize("tracked", [False, True], ids=["overwritten-silently", "overwritten-tracked"])
@pytest.mark.parametrize("family,scope", [("sd15", "ff+attention"), ("flux", "ff")])
def test_alpha_equals_plain_autograd_with_shared_cast_buffers_and_small_modules_unwrapped(
        dynamic_vram_hazards, family, scope, tracked):
    dynamic_vram_hazards(tracked=tracked)
    mp = build(family, seed=3)
    attribution = node_path(mp, family, scope)
    small_ops = [m for m in mp.model.diffusion_model.modules()
                 if isinstance(m, comfy.ops.CastWeightBiasOp) and _param_bytes(m) <= SMALL_MODULE_BYTES]
    assert small_ops, "the model must have layers of at most 16 KiB"
    if family == "sd15":  # flux's reduced matrices are all larger; its norms and biases are the small ones
        assert small_scoped_keys(mp, attribution.scores), "the model must have scoped modules of at most 16 KiB"
    assert_alpha_equals_plain_autograd(attribution, family, seed=3)


def test_a_probe_that_never_runs_is_an_error_not_a_zero(dynamic_vram_hazards, monkeypatch):
    """If some future ComfyUI path bypassed the weight wrappers, CAD must refuse instead of scoring 0."""
    monkeypatch.setattr(guided_run, "install_missing_cad_wrappers", lambda grad_model: 0)
    with pytest.raises(CADError, match="without CAD's gradient probe.*--disable-dynamic-vram"):
        node_path(build("sd15", seed=3), "sd15")


class StandInDynamicPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher that reports Dynamic VRAM, as ModelPatcherDynamic does on a GPU."""

    def is_dynamic(self):
        return True


def dynamic_user_model(seed, reloads=None):
    """The user's MODEL as a dynamic patcher; with `reloads`, its loader can be re-run (cached_patcher_init)."""
    plain = build("sd15", seed=seed)
    mp = StandInDynamicPatcher(plain.model, load_device=plain.load_device, offload_device=plain.offload_device)
    if reloads is not None:
        def loader(seed, disable_dynamic=False):
            reloads.append({"disable_dynamic": disable_dynamic, "inference_mode": torch.is_inference_mode_enabled()})
            return build("sd15", seed=seed, inference=torch.is_inference_mode_enabled())
        mp.cached_patcher_init = (loader, (seed,))
    return mp


@pytest.mark.skipif(not HAS_DISABLE_DYNAMIC, reason="this ComfyUI has no Dynamic VRAM (clone(disable_dynamic=...))")
def test_dynamic_model_is_differentiated_through_a_non_dynamic_reload(dynamic_vram_hazards):
    # Hazards only on dynamic patchers: the reload must not be one, and the user's model must sample as before.
    dynamic_vram_hazards(tracked=True, is_dynamic=lambda patcher: patcher.is_dynamic())
    reloads = []
    mp = dynamic_user_model(seed=4, reloads=reloads)
    pos, base = conditioning("sd15", 1), conditioning("sd15", 2)
    before = sample_tiny(mp, pos, base, steps=2)
    attribution = node_path(mp, "sd15")
    assert reloads == [{"disable_dynamic": True, "inference_mode": False}], reloads
    assert_alpha_equals_plain_autograd(attribution, "sd15", seed=4)
    assert torch.equal(sample_tiny(mp, pos, base, steps=2), before)
    modules = list(mp.model.diffusion_model.modules())
    assert all(not getattr(m, "weight_function", []) and not getattr(m, "bias_function", []) for m in modules)


def test_dynamic_model_without_a_reloadable_loader_is_attributed_with_safeguards(dynamic_vram_hazards, caplog):
    """A custom loader that sets no cached_patcher_init: ComfyUI cannot make a non-dynamic copy, so CAD
    differentiates the dynamic model itself, and says so in the log."""
    dynamic_vram_hazards(tracked=False)
    mp = dynamic_user_model(seed=4)
    with caplog.at_level(logging.WARNING):
        attribution = node_path(mp, "sd15")
    assert_alpha_equals_plain_autograd(attribution, "sd15", seed=4)
    assert any("--disable-dynamic-vram" in r.getMessage() for r in caplog.records), caplog.text

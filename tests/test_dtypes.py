"""Stored weight dtypes: fp32, fp16, bf16, fp8 (float8_e4m3fn, plain and ComfyUI's scaled fp8).

Decision for fp8 (documented in the README): it works. ComfyUI computes fp8-stored weights in a higher
dtype (manual_cast); the probes see that dequantized weight, so alpha = W * dJ/dW is taken with respect
to the weight the model really multiplies with (for scaled fp8 the raw fp8 value and its gradient differ
from the effective ones by the scale and its inverse, so alpha is the same). Masks go through ComfyUI's
own patch path (dequantize, scale, round back), which keeps zeroed entries exactly 0 and the others
bit-identical, and unpatching restores the stored fp8 tensor bit for bit.

Models are built as ComfyUI builds them on this device (model_management.unet_manual_cast: on CPU every
low-precision dtype computes in fp32), plus bf16/fp16 computed natively as a GPU would.
"""
import pytest
import torch

from cad_pack.cad_core import AttributionRequest
from cad_pack.nodes.bridge import attribute_model

from scripts.family_models import build, check_mask_round_trip, conditioning, empty_latent, plain_autograd_alpha

STEPS, SEED, GUIDANCE = 3, 7, 3.0
FP8 = torch.float8_e4m3fn
STORED = {"fp32": (torch.float32, False), "fp16": (torch.float16, False), "bf16": (torch.bfloat16, False),
          "fp8": (FP8, False), "fp8_scaled": (FP8, True)}


def attribute(mp, family):
    with torch.inference_mode():
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), empty_latent(),
                               AttributionRequest(steps=STEPS, guidance=GUIDANCE, seed=SEED))


def set_fp8_scales(mp, value=0.5):
    """Give scaled-fp8 layers a non-trivial scale (loaders read it from the checkpoint's scale_weight)."""
    with torch.inference_mode():
        for m in mp.model.diffusion_model.modules():
            if getattr(m, "scale_weight", None) is not None:
                m.scale_weight.fill_(value)


def check_finite_fp32(attribution):
    for k, s in attribution.scores.items():
        assert s.dtype == torch.float32 and torch.isfinite(s).all(), k
        assert s.abs().max() > 0, k


@pytest.mark.parametrize("family", ["sd15", "flux"])
@pytest.mark.parametrize("stored", list(STORED))
def test_stored_dtypes_as_comfy_computes_them_match_autograd(stored, family):
    dtype, scaled = STORED[stored]
    mp = build(family, seed=3, scale=0.1, dtype=dtype, scaled_fp8=scaled)
    assert mp.model.get_dtype() == dtype
    if dtype != torch.float32:
        assert mp.model.manual_cast_dtype == torch.float32  # what ComfyUI picks on CPU
    if scaled:
        set_fp8_scales(mp)
    attribution = attribute(mp, family)
    check_finite_fp32(attribution)

    reference = build(family, seed=3, scale=0.1, dtype=dtype, scaled_fp8=scaled, inference=False)
    if scaled:
        set_fp8_scales(reference)
    with torch.inference_mode(False):
        expected = plain_autograd_alpha(reference, family, "concept_gap", list(attribution.scores), conditioning(family, 1),
                                        conditioning(family, 2), steps=STEPS, seed=SEED, guidance=GUIDANCE)
    for k, s in attribution.scores.items():
        torch.testing.assert_close(s, expected[k], rtol=1e-4, atol=1e-12 + 1e-4 * expected[k].abs().max().item())


def test_scaled_fp8_alpha_is_the_effective_weights_alpha():
    """alpha = w*dJ/dw is invariant to w -> c*w: scaled fp8 gives the alpha of the dequantized weights."""
    scaled = build("sd15", seed=3, scale=0.1, dtype=FP8, scaled_fp8=True)
    set_fp8_scales(scaled, 2.0)
    plain = build("sd15", seed=3, scale=0.1, dtype=FP8)
    with torch.inference_mode():  # the same effective weights, stored without a scale (doubling is exact in fp8)
        raw = dict(scaled.model.diffusion_model.named_parameters())
        for n, p in plain.model.diffusion_model.named_parameters():
            owner = scaled.model.diffusion_model.get_submodule(n.rsplit(".", 1)[0])
            if n.endswith(".weight") and getattr(owner, "scale_weight", None) is not None:
                p.copy_((raw[n].float() * 2.0).to(FP8))
    a, b = attribute(scaled, "sd15"), attribute(plain, "sd15")
    for k in a.scores:
        torch.testing.assert_close(a.scores[k], b.scores[k], rtol=1e-4, atol=1e-4 * b.scores[k].abs().max().item())


@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_native_low_precision_compute_accumulates_in_fp32(compute):
    """As on a GPU (no manual cast): gradients arrive in bf16/fp16, alpha is summed and formed in fp32."""
    mp = build("sd15", seed=3, scale=0.1, dtype=compute, compute=compute)
    assert mp.model.manual_cast_dtype is None
    attribution = attribute(mp, "sd15")
    check_finite_fp32(attribution)
    # the same stored weights computed in fp32: close, not equal (the trajectory itself is computed in low precision)
    full = attribute(build("sd15", seed=3, scale=0.1, dtype=compute, compute=torch.float32), "sd15")
    a = torch.cat([s.reshape(-1) for s in attribution.scores.values()])
    b = torch.cat([s.reshape(-1) for s in full.scores.values()])
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.99
    # bf16 matches a bf16 autograd reference up to bf16 rounding of the per-step gradient sums
    if compute == torch.bfloat16:
        reference = build("sd15", seed=3, scale=0.1, dtype=compute, compute=compute, inference=False)
        with torch.inference_mode(False):
            expected = plain_autograd_alpha(reference, "sd15", "concept_gap", list(attribution.scores),
                                            conditioning("sd15", 1), conditioning("sd15", 2), steps=STEPS, seed=SEED,
                                            guidance=GUIDANCE)
        for k, s in attribution.scores.items():
            torch.testing.assert_close(s, expected[k], rtol=0, atol=2e-2 * expected[k].abs().max().item())


@pytest.mark.parametrize("stored", ["fp16", "bf16", "fp8", "fp8_scaled"])
@pytest.mark.parametrize("lowvram", [False, True], ids=["full", "lowvram"])
def test_masks_patch_and_unpatch_low_precision_weights_exactly(stored, lowvram):
    dtype, scaled = STORED[stored]
    mp = build("flux", seed=8, dtype=dtype, scaled_fp8=scaled)
    if scaled:
        set_fp8_scales(mp)
    # full loads write fp8 results back to fp8 by stochastic rounding (so does low-VRAM with scaled fp8);
    # low-VRAM patches of plain fp8 act on the compute-dtype copy and are exact
    rounding = dtype == FP8 and (not lowvram or scaled)
    check_mask_round_trip(mp, lowvram=lowvram, fp8_rounding=rounding)


def test_fp16_compute_scales_the_loss_so_small_gradients_survive(monkeypatch):
    """On a 32x32 latent, J's gradients (a mean over 4,096 elements) fall below fp16's normal range: without
    loss scaling 1% of the scores underflow to 0 and alpha is 18% off the fp32-computed one; with it, <2%."""
    import cad_pack.nodes.bridge.attribution as bridge  # the module attribute_model looks loss_scale_for up in

    def flat(mp):
        with torch.inference_mode():
            a = attribute_model(mp, conditioning("sd15", 1), conditioning("sd15", 2), empty_latent(32),
                                AttributionRequest(steps=STEPS, guidance=GUIDANCE, seed=SEED))
        return a, torch.cat([s.reshape(-1) for s in a.scores.values()])

    def fp16_model():
        return build("sd15", seed=3, scale=0.1, dtype=torch.float16, compute=torch.float16)

    _, reference = flat(build("sd15", seed=3, scale=0.1, dtype=torch.float16, compute=torch.float32))
    scaled, with_scaling = flat(fp16_model())
    assert scaled.info.loss_scale == 4096.0
    monkeypatch.setattr(bridge, "loss_scale_for", lambda dtype, numel: 1.0)
    _, without = flat(fp16_model())
    error = lambda x: float((x - reference).norm() / reference.norm())  # noqa: E731
    assert error(with_scaling) < 0.02
    assert error(without) > 5 * error(with_scaling)
    assert (with_scaling == 0).sum() < (without == 0).sum()


def test_model_compute_dtype_node_lifts_fp16_attribution_to_fp32():
    """The documented remedy for fp16 underflow: ComfyUI's ModelComputeDtype (set_model_compute_dtype) in front of
    CAD Attribute makes an fp16-computing model attribute exactly like one computing in fp32."""
    native = build("sd15", seed=3, scale=0.1, dtype=torch.float16, compute=torch.float16)
    lifted = native.clone()
    lifted.set_model_compute_dtype(torch.float32)
    as_fp32 = build("sd15", seed=3, scale=0.1, dtype=torch.float16, compute=torch.float32)
    a, b = attribute(lifted, "sd15"), attribute(as_fp32, "sd15")
    for k, s in a.scores.items():
        torch.testing.assert_close(s, b.scores[k], rtol=1e-5, atol=1e-5 * b.scores[k].abs().max().item())
    # as after sampling with any patched clone, the shared model goes back when the next clone loads
    import comfy.model_management as mm
    with torch.inference_mode():
        mm.load_models_gpu([native])
    assert native.model.manual_cast_dtype is None

"""What changed in ComfyUI between 0.3.75 and 0.33.0 that touches the pack, checked on whichever ComfyUI the
suite runs against (make test: 0.3.75; make test-0.33: 0.33.0). Where the two versions behave differently,
each test states what it expects of each.
"""
import pytest
import torch

import comfy.lora
import comfy.model_sampling
import comfy.samplers
import comfy.sd
import nodes as comfy_nodes
from cad_pack.cad_core import (AttributionRequest, CADError, Mask, MaskInfo, load_attribution, load_mask,
                               resolve_scope)
from cad_pack.nodes.bridge import (apply_mask, attribute_model, fingerprint_of, model_fingerprints,
                                   needs_pooled_output, parameterization_of)
from cad_pack.cad_core.noise import FlowMatching, VarianceExploding

from scripts import cross_version as X
from scripts.family_models import build, conditioning, empty_latent, loaded_weight
from tiny_models import conditioning as tiny_conditioning
from tiny_models import sample as sample_tiny
from tiny_models import tiny_sd15

NEWER_THAN_0_3 = X.COMFYUI_VERSION >= (0, 33, 0)


# --- Flux norm weights renamed (*_norm.scale -> *_norm.weight): files and fingerprints carry over ---------------

def test_flux_norm_names_are_this_comfyuis():
    names = [n for n, _ in X.flux_model().model.diffusion_model.named_parameters() if "query_norm" in n]
    assert names and all(n.endswith(".weight" if NEWER_THAN_0_3 else ".scale") for n in names), names


@pytest.mark.parametrize("files", ["v1", "v2"])
def test_files_saved_under_0_3_75_load_for_the_same_flux_checkpoint(files):
    """v1: written by pack 0.4.0 (its fingerprints sample 8 tensors); v2: by pack 0.5.0 (every tensor)."""
    paths = X.FILES_FROM_0_3_75 if files == "v1" else X.V2_FILES_FROM_0_3_75
    mp = X.flux_model()
    stored = load_attribution(paths["attribution"]).fingerprint
    assert model_fingerprints(mp).matching(stored) == stored           # this ComfyUI computes the same identity
    if files == "v2":
        assert fingerprint_of(mp) == stored
    saved = load_attribution(paths["attribution"], expected_fingerprint=model_fingerprints(mp))
    mask = load_mask(paths["mask"], expected_fingerprint=model_fingerprints(mp))
    # the same attribution computed again on this ComfyUI agrees with the one made on 0.3.75 (to float rounding:
    # 0.33 computes attention and the rotary embedding with other kernels; measured 3e-4 of the largest score)
    again = X.attribute_flux(mp)
    assert saved.scores.keys() == again.scores.keys()
    for key, score in saved.scores.items():
        assert score.abs().max() > 0
        torch.testing.assert_close(again.scores[key], score, rtol=1e-3, atol=2e-3 * score.abs().max().item())
    # and the 0.3.75 mask erases exactly its entries here
    key = next(iter(mask.indices))
    with torch.inference_mode():
        erased = loaded_weight(apply_mask(mp, mask, 1.0), key)
    assert mask.indices[key].numel() > 0 and torch.all(erased.reshape(-1)[mask.indices[key]] == 0)


@pytest.mark.parametrize("files", ["v1", "v2"])
def test_files_saved_under_0_3_75_are_refused_for_another_flux_checkpoint(files):
    paths = X.FILES_FROM_0_3_75 if files == "v1" else X.V2_FILES_FROM_0_3_75
    other = X.flux_model(seed=X.FLUX_SEED + 1)
    with pytest.raises(CADError, match="another model"):
        load_mask(paths["mask"], expected_fingerprint=model_fingerprints(other))
    with pytest.raises(CADError, match="made for another model"):
        apply_mask(other, load_mask(paths["mask"]), 1.0)


# --- Flux.encode_adm no longer requires pooled_output ------------------------------------------------------------

def test_flux_conditioning_without_pooled_output_where_the_model_accepts_it():
    mp = build("flux", seed=2)
    no_pooled = [[[entry[0], {k: v for k, v in entry[1].items() if k != "pooled_output"}]
                  for entry in conditioning("flux", seed)] for seed in (1, 2)]
    assert needs_pooled_output(mp) is not NEWER_THAN_0_3
    # T = 2: at the first sigma of a flow model (1.0) eps does not depend on the prediction, so alpha is 0 there
    request = AttributionRequest(steps=2)
    if NEWER_THAN_0_3:   # 0.33: Flux's vector input falls back to zeros, as KSampler's run does
        with torch.inference_mode():
            attribution = attribute_model(mp, *no_pooled, empty_latent(), request)
        assert all(torch.isfinite(s).all() for s in attribution.scores.values())
        assert sum(float(s.abs().sum()) for s in attribution.scores.values()) > 0
    else:                # 0.3.75: ComfyUI would fail with a bare KeyError; CAD says what is missing
        with pytest.raises(CADError, match="needs 'pooled_output'.*'positive' has none"):
            with torch.inference_mode():
                attribute_model(mp, *no_pooled, empty_latent(), request)
    # SDXL needs it on every version
    assert needs_pooled_output(build("sdxl", seed=2))


# --- model_sampling is identified by how it noises, not by its class --------------------------------------------

class FlowClassNoisingLikeEps(comfy.model_sampling.CONST):
    """A CONST subclass whose noise_scaling is x0 + sigma*eps: the class says flow, the behaviour says not."""

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return latent_image + sigma.reshape(-1, *([1] * (noise.ndim - 1))) * noise


def with_sampling(mp, sampling_class, base=comfy.model_sampling.ModelSamplingDiscreteFlow):
    class Sampling(base, sampling_class):
        pass
    patched = mp.clone()
    patched.add_object_patch("model_sampling", Sampling(mp.model.model_config))
    return patched


def test_parameterization_is_read_from_noise_scaling():
    flux = build("flux", seed=0)
    assert isinstance(parameterization_of(flux), FlowMatching)
    assert isinstance(parameterization_of(tiny_sd15(seed=0)), VarianceExploding)
    assert isinstance(parameterization_of(with_sampling(flux, FlowClassNoisingLikeEps)), VarianceExploding)


def test_img_to_img_flow_is_refused_although_it_subclasses_const():
    # ComfyUI 0.33's IMG_TO_IMG_FLOW(CONST) does not noise at all; on 0.3.75 the same override stands in for it.
    class NoNoise(comfy.model_sampling.CONST):
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            return latent_image
    img_to_img_flow = getattr(comfy.model_sampling, "IMG_TO_IMG_FLOW", NoNoise)
    assert issubclass(img_to_img_flow, comfy.model_sampling.CONST)
    assert hasattr(comfy.model_sampling, "IMG_TO_IMG_FLOW") is NEWER_THAN_0_3
    with pytest.raises(CADError, match=r"neither as x0 \+ sigma\*eps.*x_t = 1\*x0 \+ 0\*eps"):
        parameterization_of(with_sampling(build("flux", seed=0), img_to_img_flow))


# --- fix_empty_latent_channels takes downscale ratios: CAD's latent is KSampler's ---------------------------------

class CoarserLatent(comfy.latent_formats.SD15):
    spacial_downscale_ratio = 16


def test_attribution_latent_has_the_shape_ksampler_samples():
    mp = tiny_sd15(seed=1).clone()
    mp.add_object_patch("latent_format", CoarserLatent())   # a VAE that downscales 16x, like Flux.2's
    pos, base = tiny_conditioning(1), tiny_conditioning(2)
    with torch.inference_mode():
        latent = comfy_nodes.EmptyLatentImage().generate(128, 128)[0]     # 16x16 at 8x downscaling
        ksampled = comfy_nodes.common_ksampler(mp, 0, 1, 1.0, "euler", "normal", pos, base, latent)[0]["samples"]
        attribution = attribute_model(mp, pos, base, latent, AttributionRequest(steps=1))
    assert attribution.info.latent_shape == tuple(ksampled.shape)
    # 0.33 resizes an 8x-downscaled empty latent for a 16x model; 0.3.75 samples it as it is
    assert ksampled.shape[-1] == (8 if NEWER_THAN_0_3 else 16)


# --- LoraLoaderBypass: a CAD mask after it scales the base weight only ------------------------------------------

@pytest.mark.skipif(not hasattr(comfy.sd, "load_bypass_lora_for_models"),
                    reason="this ComfyUI has no bypass LoRA loader (added after 0.3.75)")
def test_cad_mask_after_a_bypass_lora_scales_the_base_weight_only():
    mp = tiny_sd15(seed=2)
    key = resolve_scope([(k, tuple(v.shape)) for k, v in mp.model.state_dict().items()], "ff")[3]
    weight = mp.model.state_dict()[key].clone()
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn((weight.shape[0], 2), generator=g) * 0.3, torch.randn((2, weight.shape[1]), generator=g) * 0.3
    name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
    lora = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}
    delta = up @ down
    selected = torch.arange(0, weight.numel(), 3)
    mask = Mask({key: selected}, {key: tuple(weight.shape)}, fingerprint_of(mp), MaskInfo(mode="erase"))
    pos, base = tiny_conditioning(1), tiny_conditioning(2)

    with torch.inference_mode():
        bypass = comfy.sd.load_bypass_lora_for_models(mp, None, lora, 1.0, 0.0)[0]
        after_bypass = sample_tiny(apply_mask(bypass, mask, 1.0), pos, base, steps=2)
        # what that should be: base weight with the selected entries zeroed, plus the whole LoRA delta
        kept = torch.ones(weight.numel())
        kept[selected] = 0
        expected_model = mp.clone()
        expected_model.add_patches({key: ("diff", (weight * (kept.reshape(weight.shape) - 1) + delta,))})
        expected = sample_tiny(expected_model, pos, base, steps=2)
        # the ordinary loader patches the weight, so the mask zeroes the LoRA-modified entries entirely
        patched_lora = comfy.sd.load_lora_for_models(mp, None, lora, 1.0, 0.0)[0]
        after_patched = sample_tiny(apply_mask(patched_lora, mask, 1.0), pos, base, steps=2)
    torch.testing.assert_close(after_bypass, expected, rtol=1e-4, atol=1e-5)
    assert (after_bypass - after_patched).abs().max() > 1e-3

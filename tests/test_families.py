"""Every supported family on reduced random models built from ComfyUI's own classes (family_models.py):
SD1.x eps, SD2.x v-prediction, SDXL (ADM y), SD3 MMDiT (flow), Flux (double/single stream, guidance).

For each: the scope presets find the family's weights under ComfyUI's real parameter names, the node
path (probes under inference mode, CFGGuider conditioning) gives the same alpha as plain autograd
through BaseModel.apply_model with the conditioning the family's sampling path builds, masks patch and
unpatch bit-exactly, and attribution leaves the shared model as it found it. An architecture without
presets gets a clear error, and the regex scope still works on it.
"""
import re

import pytest
import torch

import comfy.model_base
import comfy.model_sampling
from cad_pack.cad_core import (AttributionRequest, CADError, FlowMatching, VarianceExploding, resolve_scope,
                               select_components)
from cad_pack.cad_core.families import detect_family
from cad_pack.nodes.bridge import apply_mask, attribute_model, parameterization_of, patchable_weights

from scripts.family_models import (EXPECTED, FAMILIES, NO_PRESET, build, check_mask_round_trip, conditioning, empty_latent,
                           family_latent, plain_autograd_alpha)

STEPS, SEED, GUIDANCE = 3, 7, 3.0
SCALE = 0.1  # init scale: large enough that J (and every gradient) is far from fp32 noise


def node_path(mp, family, objective="concept_gap", scope="ff", scope_regex="", concept_latent=None):
    request = AttributionRequest(objective=objective, steps=STEPS, guidance=GUIDANCE, seed=SEED, scope=scope,
                                 scope_regex=scope_regex)
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), family_latent(family)[0], request,
                               concept_latent=concept_latent)


# --------------------------------------------------------------------------------------------- scopes
PRESET_NAMES = {  # what each preset must select, written independently of cad_core's regexes
    "unet": {"ff": ("ff.net.0.proj.weight", "ff.net.2.weight"),
             "attention": tuple(f"{a}.{p}.weight" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0"))},
    "flux": {"ff": ("img_mlp.0.weight", "img_mlp.2.weight", "txt_mlp.0.weight", "txt_mlp.2.weight",
                    "linear1.weight", "linear2.weight"),
             "attention": ("img_attn.qkv.weight", "img_attn.proj.weight", "txt_attn.qkv.weight", "txt_attn.proj.weight")},
    "mmdit": {"ff": ("mlp.fc1.weight", "mlp.fc2.weight"),
              "attention": ("attn.qkv.weight", "attn.proj.weight", "attn2.qkv.weight", "attn2.proj.weight")},
    "qwen_image": {"ff": tuple(f"{s}_mlp.net.{p}.weight" for s in ("img", "txt") for p in ("0.proj", "2")),
                   "attention": tuple(f"attn.{p}.weight" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                                                                 "add_k_proj", "add_v_proj", "to_add_out"))},
    "lumina2": {"ff": ("feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight"),
                "attention": ("attention.qkv.weight", "attention.out.weight")},
    "hidream": {"ff": ("w1.weight", "w2.weight", "w3.weight"),
                "attention": tuple(f"attn1.{p}{t}.weight" for p in ("to_q", "to_k", "to_v", "to_out") for t in ("", "_t"))},
    "wan": {"ff": ("ffn.0.weight", "ffn.2.weight"),
            "attention": tuple(f"{a}.{p}.weight" for a in ("self_attn", "cross_attn") for p in "qkvo")},
}
PRESET_NAMES["flux2"] = PRESET_NAMES["chroma"] = PRESET_NAMES["flux"]
FAMILY_OF = {"sd15": "unet", "sd2v": "unet", "sdxl": "unet", "sd3": "mmdit", "flux": "flux", "flux2": "flux2",
             "qwen_image": "qwen_image", "zimage": "lumina2", "chroma": "chroma", "hidream": "hidream", "wan22": "wan"}


@pytest.mark.parametrize("family", FAMILIES)
def test_scope_presets_find_the_family_weights(family):
    mp = build(family, seed=0)
    available = patchable_weights(mp)
    keys = [k for k, _ in available]
    assert detect_family(keys).name == FAMILY_OF[family]
    names = PRESET_NAMES[FAMILY_OF[family]]
    for preset in ("ff", "attention"):
        chosen = resolve_scope(available, preset)
        expected = [k for k in keys if k.endswith(names[preset])]
        assert chosen == expected and len(chosen) == EXPECTED[family][preset], preset
    both = resolve_scope(available, "ff+attention")
    assert set(both) == set(resolve_scope(available, "ff")) | set(resolve_scope(available, "attention"))
    linear = resolve_scope(available, "all_linear")
    assert set(both) < set(linear) and all(len(dict(available)[k]) == 2 for k in linear)
    # embeddings, modulation and output layers are never in the ff/attention presets
    assert not any(re.search(r"(time_embed|label_emb|t_embedder|y_embedder|time_in|vector_in|guidance_in|_mod\.|"
                             r"modulation|adaLN|final_layer|embedding|head\.head|proj_out|norm_out|caption_projection|"
                             r"distilled_guidance|\.gate\.)", k) for k in both)


def test_sd3_scopes_name_the_last_pre_only_context_block_correctly():
    available = dict(patchable_weights(build("sd3")))
    ff = resolve_scope(list(available.items()), "ff")
    assert "diffusion_model.joint_blocks.1.context_block.mlp.fc1.weight" not in available  # pre-only: no MLP
    assert "diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight" in resolve_scope(list(available.items()), "attention")
    assert all(".joint_blocks." in k for k in ff)


# ----------------------------------------------------------------------------------- parameterization
@pytest.mark.parametrize("family", FAMILIES)
def test_parameterization_follows_the_prediction_type(family):
    mp = build(family)
    ms = mp.get_model_object("model_sampling")
    expected_flow = EXPECTED[family]["flow"]
    assert isinstance(ms, comfy.model_sampling.CONST) == expected_flow
    assert isinstance(parameterization_of(mp), FlowMatching if expected_flow else VarianceExploding)
    if family == "sd2v":
        assert isinstance(ms, comfy.model_sampling.V_PREDICTION)


def test_parameterization_of_other_sampling_types():
    mp = build("sd15")
    # COSMOS rectified flow noises as x0 + sigma*eps in ComfyUI's sigma: recognised from its noise_scaling
    cosmos = comfy.model_base.model_sampling(mp.model.model_config, comfy.model_base.ModelType.FLOW_COSMOS)
    patched = mp.clone()
    patched.add_object_patch("model_sampling", cosmos)
    assert isinstance(parameterization_of(patched), VarianceExploding)

    class Odd(torch.nn.Module):  # a sampling type that is neither form
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
            return noise * sigma.reshape(-1, 1) ** 2 + latent_image

    patched.add_object_patch("model_sampling", Odd())
    with pytest.raises(CADError, match="neither as x0 \\+ sigma\\*eps .* nor as"):
        parameterization_of(patched)


# ------------------------------------------------------------------------------------- gradients
CASES = [(f, "concept_gap") for f in FAMILIES] + [("sdxl", "concept_likelihood"), ("flux", "concept_likelihood")]


@pytest.mark.parametrize("family,objective", CASES, ids=[f"{f}-{o}" for f, o in CASES])
def test_node_path_gradients_equal_plain_autograd(family, objective):
    concept = None
    if objective == "concept_likelihood":
        with torch.inference_mode():
            concept = {"samples": torch.randn((1, EXPECTED[family]["channels"], 8, 8),
                                              generator=torch.Generator().manual_seed(5))}
    mp = build(family, seed=3, scale=SCALE)
    attribution = node_path(mp, family, objective, concept_latent=concept)
    keys = list(attribution.scores)
    assert len(keys) == EXPECTED[family]["ff"]
    assert attribution.info.parameterization == ("flow_matching" if EXPECTED[family]["flow"] else "variance_exploding")

    reference = build(family, seed=3, scale=SCALE, inference=False)
    with torch.inference_mode(False):
        expected = plain_autograd_alpha(reference, family, objective, keys, conditioning(family, 1),
                                        conditioning(family, 2), steps=STEPS, seed=SEED, guidance=GUIDANCE,
                                        concept_latent=None if concept is None else concept["samples"],
                                        frames=family_latent(family)[1])
    for k in keys:
        assert attribution.scores[k].dtype == torch.float32
        # Qwen-Image's last block sends its text stream nowhere: those weights never reach the output (alpha 0)
        dead = family == "qwen_image" and ".transformer_blocks.1.txt_mlp." in k
        assert (attribution.scores[k].abs().max() > 0) != dead, k
        torch.testing.assert_close(attribution.scores[k], expected[k], rtol=1e-4,
                                   atol=1e-12 + 1e-4 * expected[k].abs().max().item())


def test_flux_guidance_in_conditioning_reaches_the_model():
    """Flux-dev's distilled guidance comes from the conditioning (FluxGuidance), not from CFG."""
    mp = build("flux", seed=3, scale=SCALE)
    request = AttributionRequest(steps=2, guidance=1.0, seed=SEED)
    with torch.inference_mode():
        runs = [attribute_model(mp, conditioning("flux", 1, flux_guidance=g), conditioning("flux", 2, flux_guidance=g),
                                empty_latent(), request) for g in (1.0, 4.0)]
    k = next(iter(runs[0].scores))
    assert not torch.equal(runs[0].scores[k], runs[1].scores[k])


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_dit_attribution_leaves_the_shared_model_untouched(family):
    mp = build(family, seed=4, scale=SCALE)
    params = {n: p for n, p in mp.model.diffusion_model.named_parameters()}
    buffers = {n: b for n, b in mp.model.diffusion_model.named_buffers()}
    before = {k: v.clone() for k, v in mp.model.state_dict().items()}
    node_path(mp, family, scope="ff+attention")
    # the plain-module parameters swapped for ordinary copies during the run are the original objects again
    assert all(p is params[n] and p.is_inference() for n, p in mp.model.diffusion_model.named_parameters())
    assert all(b is buffers[n] for n, b in mp.model.diffusion_model.named_buffers())
    assert all(not getattr(m, "weight_function", []) and not getattr(m, "bias_function", [])
               for m in mp.model.diffusion_model.modules())
    assert all(not m._forward_pre_hooks for m in mp.model.diffusion_model.modules())
    after = mp.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert mp.patches == {} and all(not p.requires_grad and p.grad is None for p in mp.model.parameters())


# ------------------------------------------------------------------------------------------ masks
@pytest.mark.parametrize("family", FAMILIES)
def test_mask_applies_and_unpatches_bit_exactly(family):
    check_mask_round_trip(build(family, seed=8))


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_mask_applies_in_lowvram_mode(family):
    check_mask_round_trip(build(family, seed=8), lowvram=True)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_erase_chain_changes_sampling_and_the_original_stays_bit_identical(family):
    import comfy.sample
    mp = build(family, seed=6, scale=SCALE)
    pos, base = conditioning(family, 1), conditioning(family, 2)

    def sample(model):
        with torch.inference_mode():
            latent = comfy.sample.fix_empty_latent_channels(model, empty_latent()["samples"])
            noise = comfy.sample.prepare_noise(latent, 11)
            return comfy.sample.sample(model, noise, 3, 3.0, "euler", "normal", pos, base, latent, seed=11,
                                       disable_pbar=True)

    first = sample(mp)
    attribution = node_path(mp, family)
    edited = sample(apply_mask(mp, select_components(attribution, "erase", 0.1, "per_matrix"), 1.0))
    assert not torch.equal(first, edited)
    assert torch.equal(first, sample(mp))


# ------------------------------------------------------------------------------ unsupported input
def test_a_transformer_without_a_preset_gets_its_scopes_from_module_names():
    """ComfyUI's AuraFlow has no record in cad_core/families.py: ff and attention come from its module names
    (mlpC/mlpX/mlp, attn), with a notice saying so; a regex still picks exactly what it names."""
    mp = build("auraflow", seed=1, scale=SCALE)
    available = patchable_weights(mp)
    ff = resolve_scope(available, "ff")
    assert ff == [k for k, _ in available if re.search(r"\.mlp[CX]?\.c_(fc1|fc2|proj)\.weight$", k)] and len(ff) == 9
    attention = resolve_scope(available, "attention")
    assert attention == [k for k, _ in available if re.search(r"\.attn\.w[12][qkvo]\.weight$", k)] and len(attention) == 12
    attribution = node_path(mp, "sd15", scope="ff")
    assert list(attribution.scores) == ff and all(s.abs().max() > 0 for s in attribution.scores.values())
    assert "no 'ff' preset: CAD chose 9 matrices from their module names" in attribution.info.scope_notice
    assert attribution.info.scope_notice in attribution.summary_text()
    attribution = node_path(mp, "sd15", scope="regex", scope_regex=r"\.mlpX\.c_fc[12]\.weight$")
    assert list(attribution.scores) == ["diffusion_model.double_layers.0.mlpX.c_fc1.weight",
                                        "diffusion_model.double_layers.0.mlpX.c_fc2.weight"]
    assert attribution.info.parameterization == "flow_matching" and attribution.info.scope_notice is None
    assert all(s.abs().max() > 0 for s in attribution.scores.values())


def test_missing_pooled_output_is_refused_clearly():
    mp = build("sdxl")
    no_pooled = [[conditioning("sdxl", 1)[0][0], {}]]
    with pytest.raises(CADError, match="needs 'pooled_output'.*'positive' has none"):
        with torch.inference_mode():
            attribute_model(mp, no_pooled, conditioning("sdxl", 2), empty_latent(),
                            AttributionRequest(steps=1))


@pytest.mark.parametrize("family", [f for f in NO_PRESET if f != "auraflow"])
def test_video_transformers_without_a_preset_attribute_through_module_names(family):
    """HunyuanVideo (Flux-like names, but its own blocks: not taken for Flux) and LTX-Video get no preset; ff and
    attention come from module names, and alpha on 5-D video latents equals plain autograd."""
    mp = build(family, seed=3, scale=SCALE)
    available = patchable_weights(mp)
    assert detect_family(k for k, _ in available) is None
    ff = resolve_scope(available, "ff")
    named_like_mlp = [k for k, s in available if len(s) == 2 and re.search(r"\.\d+\..*(mlp|ff)\b[\w.]*\.weight$", k)]
    assert ff == named_like_mlp and ff
    attribution = node_path(mp, family, scope="ff+attention")
    assert "no 'ff+attention' preset" in attribution.info.scope_notice
    keys = list(attribution.scores)
    reference = build(family, seed=3, scale=SCALE, inference=False)
    with torch.inference_mode(False):
        expected = plain_autograd_alpha(reference, family, "concept_gap", keys, conditioning(family, 1),
                                        conditioning(family, 2), steps=STEPS, seed=SEED, guidance=GUIDANCE,
                                        frames=family_latent(family)[1])
    assert sum(1 for k in keys if attribution.scores[k].abs().max() > 0) >= len(keys) // 2
    for k in keys:
        torch.testing.assert_close(attribution.scores[k], expected[k], rtol=1e-4,
                                   atol=1e-12 + 1e-4 * expected[k].abs().max().item())


def test_verify_and_likelihood_work_on_video_latents():
    """CAD Verify re-measures J at 5-D visited latents, and concept_likelihood takes 5-D concept latents."""
    from cad_pack.nodes.bridge import verify_on
    mp = build("wan22", seed=3, scale=SCALE)
    # concept_gap_full differentiates both branches, so a small real ablation changes J as alpha predicts
    attribution = node_path(mp, "wan22", "concept_gap_full")
    assert attribution.points[0].x_t.ndim == 5
    mask = select_components(attribution, "erase", 0.05, "per_row")
    with torch.inference_mode():
        check = verify_on(mp, conditioning("wan22", 1), conditioning("wan22", 2), attribution, mask, strength=0.05)
    assert check.predicted_change < 0 and check.measured_change < 0
    assert abs(check.measured_change - check.predicted_change) < 0.1 * abs(check.predicted_change), check
    with torch.inference_mode():
        video = {"samples": torch.randn((1, 48, 2, 8, 8), generator=torch.Generator().manual_seed(5))}
    likelihood = node_path(mp, "wan22", "concept_likelihood", concept_latent=video)
    assert all(torch.isfinite(s).all() and s.abs().max() > 0 for s in likelihood.scores.values())

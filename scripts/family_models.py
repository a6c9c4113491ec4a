"""Reduced models of every family the pack supports, built from ComfyUI's own classes.

Each family keeps its real layer structure (block types, names, conditioning path, prediction type)
at reduced width and depth, so a forward+backward takes milliseconds on CPU:

    sd15  comfy.supported_models.SD15  -> BaseModel, eps, cross-attention context
    sd2v  comfy.supported_models.SD20  -> BaseModel, v-prediction, linear proj_in/out
    sdxl  comfy.supported_models.SDXL  -> model_base.SDXL, ADM `y` from pooled_output + size
    sd3   comfy.supported_models.SD3   -> model_base.SD3 (MMDiT joint blocks, dual attention block), flow
    flux  comfy.supported_models.Flux  -> model_base.Flux (double/single stream blocks, guidance embed), flow

and, for the families people load in 2026 (presets to come; hunyuan_video and ltxv stay on the generic fallback):

    flux2          Flux2        -> model_base.Flux2 (global modulation, SiLU-gated MLPs, 128-ch latent, text padded to 512)
    qwen_image     QwenImage    -> model_base.QwenImage (MMDiT transformer_blocks, 5-D Wan 2.1 latent of one frame)
    zimage         ZImage       -> model_base.Lumina2 (NextDiT layers + noise/context refiners, num_tokens)
    chroma         Chroma       -> model_base.Chroma (Flux blocks without modulation, distilled_guidance_layer)
    hidream        HiDream      -> model_base.HiDream (MoE feed-forward, pooled y + per-block Llama-3 states)
    wan22          WAN22_T2V    -> model_base.WAN22 (Wan 2.2 TI2V 5B: blocks.N, 48-ch 5-D video latent)
    hunyuan_video  HunyuanVideo -> model_base.HunyuanVideo (token refiner, double/single blocks, 5-D latent)
    ltxv           LTXV         -> model_base.LTXV (transformer_blocks.N attn1/attn2/ff, 128-ch 5-D latent)

Models are built under torch.inference_mode() like ComfyUI's loaders build them. `plain_autograd_alpha`
writes the CAD objective directly against BaseModel.apply_model, with the conditioning each family's
sampling path produces, as the independent reference the node path must match.
"""
import dataclasses

import torch

import comfy.ldm.chroma.model
import comfy.ldm.flux.model
import comfy.ldm.hunyuan_video.model
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.samplers
import comfy.supported_models
from cad_pack.cad_core import Mask, resolve_scope
from cad_pack.nodes.bridge import apply_mask, fingerprint_of, patchable_weights

CTX, POOLED = 32, 32          # reduced text width and pooled width (real: 768/1024/2048/4096, 1280/2048/768)

_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
    "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": CTX,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


def _sd15():
    return comfy.supported_models.SD15(dict(_UNET)), comfy.model_base.ModelType.EPS


def _sd2v():
    cfg = comfy.supported_models.SD20({**_UNET, "use_linear_in_transformer": True})
    cfg.unet_config["num_head_channels"] = 16          # real: 64 (heads split channels; shapes unchanged)
    return cfg, comfy.model_base.ModelType.V_PREDICTION


def _sdxl():
    # SDXL's layout: no transformer at the first level, deeper ones below; ADM vector = pooled + 6 size embeddings.
    cfg = comfy.supported_models.SDXL({**_UNET, "use_linear_in_transformer": True, "transformer_depth": [0, 2],
                                       "transformer_depth_output": [0, 0, 2, 2], "adm_in_channels": POOLED + 6 * 256,
                                       "num_classes": "sequential"})
    cfg.unet_config["num_head_channels"] = 16
    return cfg, None


def _sd3():
    # hidden = 64 * depth; block 0 carries SD3.5-medium's second x-block attention (attn2).
    cfg = comfy.supported_models.SD3({
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "input_size": None,
        "adm_in_channels": POOLED, "num_patches": 64, "pos_embed_max_size": 8, "qk_norm": "rms",
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [0],
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": CTX, "out_features": 128}}})
    return cfg, None


def _flux():
    config = {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": POOLED, "context_in_dim": CTX,
        "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
        "axes_dim": [8, 12, 12], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}
    if "txt_ids_dims" in {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}:
        config["txt_ids_dims"] = []     # newer ComfyUI (0.33): what model_detection sets for Flux.1
    return comfy.supported_models.Flux(config), None


def _auraflow():
    """A real ComfyUI architecture the pack has no presets for (names: double_layers.N.mlpX.c_fc1, ...)."""
    cfg = comfy.supported_models.AuraFlow({"cond_seq_dim": CTX, "dim": 64, "n_layers": 2, "n_double_layers": 1,
                                           "n_heads": 2, "global_conddim": 64, "max_seq": 64})
    return cfg, None


def _fields(params_class):
    return {f.name for f in dataclasses.fields(params_class)}


def _flux2():
    """Flux.2 [dev] as model_detection sees it (double_stream_modulation_img present; guidance_in present)."""
    config = {
        "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None, "context_in_dim": CTX,
        "hidden_size": 64, "mlp_ratio": 3.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2,
        "axes_dim": [8, 8, 8, 8], "theta": 2000, "patch_size": 1, "qkv_bias": False, "guidance_embed": True,
        "global_modulation": True, "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index",
        "ref_index_scale": 10.0}
    if "txt_ids_dims" in _fields(comfy.ldm.flux.model.FluxParams):
        config["txt_ids_dims"] = [3]    # 0.33: what model_detection sets for Flux.2 (0.3.x: implied by 4 rope axes)
    return comfy.supported_models.Flux2(config), None


def _qwen_image():
    # model_detection sets in_channels and num_layers only; the widths below replace the class defaults
    # (24 heads x 128, joint_attention_dim 3584, rope axes 16/56/56).
    cfg = comfy.supported_models.QwenImage({
        "image_model": "qwen_image", "in_channels": 64, "num_layers": 2, "num_attention_heads": 2,
        "attention_head_dim": 16, "joint_attention_dim": CTX, "axes_dims_rope": [4, 6, 6]})
    return cfg, None


def _zimage():
    # Z-Image (Turbo) keys from model_detection's dim == 3840 branch at reduced width. dim stays 256: the
    # z_image_modulation path feeds a 256-wide timestep embedding into Linear(min(dim, 256), ...), so any
    # dim < 256 does not build. 2 heads x 128 keep the real rope axes.
    cfg = comfy.supported_models.ZImage({
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": CTX,
        "n_layers": 2, "n_refiner_layers": 1, "qk_norm": True, "n_heads": 2, "n_kv_heads": 2,
        "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
        "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": 32})
    return cfg, None


def _chroma():
    config = {
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": CTX, "hidden_size": 64,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12],
        "theta": 10000, "patch_size": 2, "qkv_bias": True, "in_dim": 64, "out_dim": 64, "hidden_dim": 32,
        "n_layers": 2}     # approximator: in_dim stays 64 (16 t + 16 guidance + 32 index), out_dim = hidden_size
    fields = _fields(comfy.ldm.chroma.model.ChromaParams)
    if "txt_ids_dims" in fields:
        config["txt_ids_dims"] = []     # 0.33 (required there, unknown in 0.3.x)
    if "vec_in_dim" in fields:
        config["vec_in_dim"] = None
    return comfy.supported_models.Chroma(config), None


def _hidream():
    # HiDream-I1 keys at reduced width: 2 heads x 16, rope axes 8/4/4 (real 64/32/32), T5 and Llama widths CTX,
    # pooled CLIP-L+G width POOLED; 4 routed experts, 2 active, as the real model.
    cfg = comfy.supported_models.HiDream({
        "image_model": "hidream", "attention_head_dim": 16, "axes_dims_rope": [8, 4, 4],
        "caption_channels": [CTX, CTX], "max_resolution": [128, 128], "in_channels": 16,
        "llama_layers": [0, 1, 1, 1], "num_attention_heads": 2, "num_routed_experts": 4, "num_activated_experts": 2,
        "num_layers": 2, "num_single_layers": 2, "out_channels": 16, "patch_size": 2, "text_emb_dim": POOLED})
    return cfg, None


HIDREAM_LLAMA_LAYERS = 2    # conditioning_llama3 holds this many Llama hidden states (real: 32)


def _wan22():
    """Wan 2.2 TI2V 5B text-to-video (WAN22_T2V: out_dim 48). The A14B high/low-noise pair is WAN21_T2V
    (model_base.WAN21, 16-channel latent) with the same block names."""
    cfg = comfy.supported_models.WAN22_T2V({
        "image_model": "wan2.1", "model_type": "t2v", "dim": 64, "out_dim": 48, "num_heads": 2, "ffn_dim": 128,
        "num_layers": 2, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 48, "text_dim": CTX})   # text_dim: class default 4096
    return cfg, None


def _hunyuan_video():
    """HunyuanVideo 1.0 text-to-video (no preset: the generic fallback)."""
    config = {
        "image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "patch_size": [1, 2, 2],
        "vec_in_dim": POOLED, "axes_dim": [8, 12, 12], "meanflow": False, "context_in_dim": CTX, "hidden_size": 64,
        "mlp_ratio": 4.0, "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "theta": 256, "qkv_bias": True,
        "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False, "vision_in_dim": None}
    if "meanflow_sum" in _fields(comfy.ldm.hunyuan_video.model.HunyuanVideoParams):
        config["meanflow_sum"] = False  # 0.33 (required there, unknown in 0.3.x)
    return comfy.supported_models.HunyuanVideo(config), None


def _ltxv():
    """LTX-Video (no preset: the generic fallback). cross_attention_dim is the inner width (captions are
    projected to it first); num_attention_heads replaces the class default 32."""
    cfg = comfy.supported_models.LTXV({
        "image_model": "ltxv", "num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
        "cross_attention_dim": 32, "caption_channels": CTX})
    return cfg, None


BUILDERS = {"sd15": _sd15, "sd2v": _sd2v, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "auraflow": _auraflow,
            "flux2": _flux2, "qwen_image": _qwen_image, "zimage": _zimage, "chroma": _chroma, "hidream": _hidream,
            "wan22": _wan22, "hunyuan_video": _hunyuan_video, "ltxv": _ltxv}
FAMILIES = ("sd15", "sd2v", "sdxl", "sd3", "flux",      # the ones with scope presets
            "flux2", "qwen_image", "zimage", "chroma", "hidream", "wan22")
NO_PRESET = ("auraflow", "hunyuan_video", "ltxv")      # ff/attention found from module names

# What the scope presets must find in each reduced model (counted by hand from the configs above).
EXPECTED = {
    #        ff matrices, attention matrices, parameterization, latent channels
    "sd15": dict(ff=14, attention=56, flow=False, channels=4),    # 7 transformer blocks x (2 ff, 2 x 4 attn)
    "sd2v": dict(ff=14, attention=56, flow=False, channels=4),
    "sdxl": dict(ff=14, attention=56, flow=False, channels=4),    # 2 (input) + 1 (middle) + 4 (output) blocks
    "sd3": dict(ff=6, attention=9, flow=True, channels=16),      # last context block is pre-only (qkv, no proj/mlp)
    "flux": dict(ff=12, attention=8, flow=True, channels=16),    # 2 double x 2 streams x 2 mlp + 2 single x linear1/2
    # presets to come (counts None until they exist); all flow models (ModelType FLOW / FLUX: CONST sampling)
    "flux2": dict(ff=12, attention=8, flow=True, channels=128),    # Flux's block names, global modulation
    "qwen_image": dict(ff=8, attention=16, flow=True, channels=16),  # 2 blocks x (2 streams x 2 mlp, 8 attn)
    "zimage": dict(ff=12, attention=8, flow=True, channels=16),      # (1 noise + 1 context refiner + 2 layers) x (3, 2)
    "chroma": dict(ff=12, attention=8, flow=True, channels=16),      # Flux's blocks without modulation
    "hidream": dict(ff=66, attention=24, flow=True, channels=16),    # 2 double x (18 ff, 8 attn) + 2 single x (15, 4)
    "wan22": dict(ff=4, attention=16, flow=True, channels=48),       # 2 blocks x (ffn.0/2, self/cross q,k,v,o)
    # no presets (generic fallback)
    "hunyuan_video": dict(flow=True, channels=16),
    "ltxv": dict(flow=True, channels=128),
}


def _init_(model, g, scale):
    """comfy ops skip weight init: fill every parameter (and SD3's pos_embed buffer) deterministically."""
    for name, p in list(model.diffusion_model.named_parameters()) + list(model.diffusion_model.named_buffers()):
        if not p.is_floating_point() or name.endswith(("scale_weight", "scale_input")):
            continue  # scaled-fp8 scales keep ComfyUI's init (1.0); same draws for every dtype of one seed
        is_norm = p.ndim == 1 and ("norm" in name or ".ln_" in name or name.endswith(".scale")) and not name.endswith("bias")
        value = 1.0 + 0.1 * torch.randn(p.shape, generator=g) if is_norm else torch.randn(p.shape, generator=g) * scale
        p.data.copy_(value.to(p.dtype))


def build(family, seed=0, dtype=torch.float32, compute="comfy", inference=True, scale=0.05, scaled_fp8=False):
    """ModelPatcher around a reduced random model of `family`.

    dtype: the stored weight dtype. compute: "comfy" = what ComfyUI picks for that dtype on this device
    (model_management.unet_manual_cast; on CPU fp16/bf16/fp8 are stored and computed in fp32), or an explicit
    compute dtype (e.g. torch.bfloat16 to compute natively in bf16, as a GPU would), or None = no manual cast.
    Weights are drawn in fp32 and rounded to `dtype`, so different dtypes of one seed hold the same model.
    """
    cfg, model_type = BUILDERS[family]()
    device = torch.device("cpu")
    if compute == "comfy":
        manual_cast = mm.unet_manual_cast(dtype, mm.get_torch_device(), cfg.supported_inference_dtypes)
    else:
        manual_cast = None if compute == dtype else compute
    if scaled_fp8:
        cfg.scaled_fp8 = dtype
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(inference):
        cfg.set_inference_dtype(dtype, manual_cast)
        model = cfg.get_model({}, device=device) if model_type is None else \
            comfy.model_base.BaseModel(cfg, model_type=model_type, device=device)
        _init_(model, g, scale)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def conditioning(family, seed, flux_guidance=3.5):
    """CONDITIONING as the family's text encoder node produces it (random tensors of reduced width).

    Extras only where the model's extra_conds/forward reads them: pooled_output None where the text encoder
    gives none but Flux's encode_adm reads the key (flux2, chroma; a KeyError on 0.3.x without it), a
    FluxGuidance value (flux, flux2), HiDream's Llama-3 hidden states, LTXV's attention_mask (a required
    argument of its forward; all ones: no padding).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cond = torch.randn((1, 7, CTX), generator=g)
        extras = {}
        if family in ("sdxl", "sd3", "flux", "hidream", "hunyuan_video"):
            extras["pooled_output"] = torch.randn((1, POOLED), generator=g)
        if family in ("flux2", "chroma"):
            extras["pooled_output"] = None            # Mistral / Qwen3 / T5 encoders: no pooled output
        if family in ("flux", "flux2"):
            extras["guidance"] = flux_guidance        # FluxGuidance node
        if family == "hidream":                       # [batch, layers, tokens, width], one slice per Llama layer
            extras["conditioning_llama3"] = torch.randn((1, HIDREAM_LLAMA_LAYERS, 7, CTX), generator=g)
        if family == "ltxv":
            extras["attention_mask"] = torch.ones((1, 7), dtype=torch.long)
        return [[cond, extras]]


# The latent each family's workflow feeds CAD Attribute (what its Empty Latent node makes), and its frame count
VIDEO_LATENTS = {"wan22": dict(frames=2, channels=48), "hunyuan_video": dict(frames=2, channels=16),
                 "ltxv": dict(frames=2, channels=16)}


def family_latent(family):
    """(LATENT, frames) for `family`: a video latent for the video models, Empty Latent Image for the others."""
    video = VIDEO_LATENTS.get(family)
    return (empty_latent(**video), video["frames"]) if video else (empty_latent(), 1)


def empty_latent(size=8, frames=None, channels=16):
    """EmptyLatentImage output (4 channels; fix_empty_latent_channels widens it for 16-channel families).

    frames: a video latent node's output instead, 5-D zeros [1, channels, frames, size, size]: channels 16 is
    EmptyHunyuanLatentVideo (also Wan 2.1; fix_empty_latent_channels widens empty latents, e.g. to LTXV's 128),
    48 is Wan22ImageToVideoLatent without a start image (Wan 2.2 5B). frames counts latent frames
    ((length - 1) // 4 + 1 for Wan/Hunyuan).
    """
    with torch.inference_mode():
        if frames is None:
            return {"samples": torch.zeros((1, 4, size, size))}
        return {"samples": torch.zeros((1, channels, frames, size, size))}


class ReferenceNoising:
    """The reference's own noising maths, written here and not imported from the pack (cad_core/noise.py), so a
    mistake there cannot hide in both sides of a comparison. flow: x_t = (1-s) x0 + s eps; else x_t = x0 + s eps."""

    def __init__(self, flow: bool):
        self.flow = flow

    def add_noise(self, x0, eps, sigma):
        s = float(sigma)
        return (1 - s) * x0 + s * eps if self.flow else x0 + s * eps

    def eps_from_x0(self, x_t, x0, sigma):
        s = float(sigma)
        return (x_t - (1 - s) * x0) / s if self.flow else (x_t - x0) / s

    def euler_step(self, x_t, x0, sigma, sigma_next):
        """Deterministic DDIM/Euler: keep the implied noise, move to sigma_next (sigma_next 0 lands on x0)."""
        return self.add_noise(x0, self.eps_from_x0(x_t, x0, sigma), sigma_next)


def parameterization(family):
    return ReferenceNoising(flow=EXPECTED[family]["flow"])


def apply_kwargs(family, bm, cond_entry, latent_hw):
    """apply_model keyword arguments for one conditioning entry, as the family's extra_conds builds them."""
    cond, extras = cond_entry
    kw = {"c_crossattn": cond.clone()}
    if family == "sdxl":
        h, w = latent_hw
        kw["y"] = bm.encode_adm(pooled_output=extras["pooled_output"].clone(), width=w * 8, height=h * 8,
                                device=torch.device("cpu")).clone()
    elif family == "sd3":
        kw["y"] = extras["pooled_output"].clone()
    elif family == "flux":
        kw["y"] = extras["pooled_output"].clone()
        kw["guidance"] = torch.tensor([float(extras.get("guidance", 3.5))])
    elif family == "flux2":       # Flux2.extra_conds left-pads the text to 512 tokens with zeros
        kw["c_crossattn"] = torch.nn.functional.pad(cond.clone(), (0, 0, max(0, 512 - cond.shape[1]), 0))
        kw["guidance"] = torch.tensor([float(extras.get("guidance", 3.5))])
    elif family == "chroma":      # Chroma.extra_conds: guidance defaults to 0 (no FluxGuidance in its workflows)
        kw["guidance"] = torch.tensor([float(extras.get("guidance", 0))])
    elif family == "zimage":      # Lumina2.extra_conds: num_tokens from the mask, else the text length
        kw["num_tokens"] = cond.shape[1]
    elif family == "hidream":
        kw["y"] = extras["pooled_output"].clone()
        kw["encoder_hidden_states_llama3"] = extras["conditioning_llama3"].clone()
    elif family == "hunyuan_video":
        kw["y"] = extras["pooled_output"].clone()
        kw["guidance"] = torch.tensor([float(extras.get("guidance", 6.0))])
    elif family == "ltxv":
        kw["attention_mask"] = extras["attention_mask"].clone()
        kw["frame_rate"] = extras.get("frame_rate", 25)
    return kw                     # qwen_image, wan22: the text alone


def plain_autograd_alpha(mp, family, objective, keys, pos, base, *, steps, seed, guidance, latent_size=8,
                         concept_latent=None, frames=1):
    """alpha = w * dJ/dw with ordinary autograd through BaseModel.apply_model (no probes, no guider).

    Scoped weights are swapped for leaf tensors holding the stored values in the compute dtype (what a
    manual-cast op multiplies with), so the reference differentiates the same function the node path does.
    Latents are 5-D [1, C, frames, H, W] where the latent format is 3-D (video, and Qwen-Image's Wan 2.1
    latent, where fix_empty_latent_channels makes an image latent one frame long), else [1, C, H, W].
    """
    bm = mp.model
    params = {f"diffusion_model.{n}": p for n, p in bm.diffusion_model.named_parameters()}
    compute = bm.manual_cast_dtype or bm.get_dtype()     # what the ops multiply with
    leaves = {k: params[k].detach().to(compute).clone().requires_grad_(True) for k in keys}
    sigmas = comfy.samplers.calculate_sigmas(mp.get_model_object("model_sampling"), "normal", steps).float().clone()
    p = parameterization(family)
    channels = EXPECTED[family]["channels"]
    hw = (latent_size, latent_size)
    dims = (frames, *hw) if bm.latent_format.latent_dimensions == 3 else hw
    kw_pos, kw_base = apply_kwargs(family, bm, pos[0], hw), apply_kwargs(family, bm, base[0], hw)

    def predict(x, s, kw):
        originals = {}
        for k, leaf in leaves.items():
            mod_name, attr = k[len("diffusion_model."):].rsplit(".", 1)
            mod = bm.diffusion_model.get_submodule(mod_name)
            originals[(mod, attr)] = mod._parameters[attr]
            mod._parameters[attr] = leaf
        try:
            # Flux updates its residual stream in place after norms saved it; snapshot every saved tensor
            # (an independent way around that from the node path's norm-input clones).
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
                return bm.apply_model(x, s.reshape(1), **kw).float()
        finally:
            for (mod, attr), orig in originals.items():
                mod._parameters[attr] = orig

    def noise(restart):
        gen = torch.Generator().manual_seed(seed + 100_003 * restart)
        return torch.randn((1, channels, *dims), generator=gen)

    # ComfyUI 0.33 runs Flux's rotary embedding through a comfy-kitchen kernel without a backward unless
    # in_training is set (as core's LoRA trainer sets it); 0.3.75 has no such flag.
    training_flag = getattr(mm, "in_training", None)
    if training_flag is not None:
        mm.in_training = True
    try:
        return _plain_alpha(objective, predict, noise, p, sigmas, steps, guidance, channels, dims, leaves, keys,
                            bm, concept_latent, kw_pos, kw_base)
    finally:
        if training_flag is not None:
            mm.in_training = training_flag


def _plain_alpha(objective, predict, noise, p, sigmas, steps, guidance, channels, dims, leaves, keys, bm,
                 concept_latent, kw_pos, kw_base):
    total = 0
    if objective in ("concept_gap", "concept_gap_full"):
        x = p.add_noise(torch.zeros((1, channels, *dims)), noise(0), sigmas[0])
        for i in range(steps):
            x0_c = predict(x, sigmas[i], kw_pos)
            with torch.set_grad_enabled(objective == "concept_gap_full"):   # concept_gap holds the base branch
                x0_b = predict(x, sigmas[i], kw_base)
            total = total + (p.eps_from_x0(x, x0_c, sigmas[i]) - p.eps_from_x0(x, x0_b, sigmas[i])).pow(2).mean()
            x0_b = x0_b.detach()
            x0_g = x0_b + guidance * (x0_c.detach() - x0_b)
            x = p.euler_step(x, x0_g, sigmas[i], sigmas[i + 1])
    else:
        images = bm.process_latent_in(concept_latent.clone())
        for i in range(steps):
            eps = noise(1 + i)
            x_t = p.add_noise(images, eps, sigmas[i])
            total = total - (eps - p.eps_from_x0(x_t, predict(x_t, sigmas[i], kw_pos), sigmas[i])).pow(2).mean()
    # allow_unused: a weight the output never reads has dJ/dw = 0 (Qwen-Image's last block computes and drops
    # its text stream: txt_mlp.net.{0.proj,2}, attn.add_q_proj, attn.to_add_out)
    grads = torch.autograd.grad(total, [leaves[k] for k in keys], allow_unused=True)
    return {k: (leaves[k].detach() * (torch.zeros_like(leaves[k]) if g is None else g)).float()
            for k, g in zip(keys, grads)}


# ------------------------------------------------------------------------------------------ masks
def loaded_weight(patcher, key, lowvram=False):
    """The weight a forward pass actually uses after ComfyUI loads `patcher` (full or low-VRAM)."""
    if lowvram:
        patcher.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=1, load_weights=True)
        module = patcher.model.get_submodule(key.rsplit(".", 1)[0])
        w = module.weight.to(patcher.model.manual_cast_dtype or module.weight.dtype)  # as ops.cast_bias_weight
        for f in module.weight_function:
            w = f(w.clone())
    else:
        mm.load_models_gpu([patcher], force_full_load=True)
        w = patcher.model.get_submodule(key.rsplit(".", 1)[0]).weight
    w = w.detach().clone()
    patcher.unpatch_model(device_to=torch.device("cpu"))
    return w


def check_mask_round_trip(mp, lowvram=False, fp8_rounding=False):
    """Selected entries become exactly 0 (0.5x at strength 0.5), the rest keep their values, and unpatching
    restores the stored tensor bit for bit.

    fp8_rounding: ComfyUI writes a patched fp32 result back to fp8 by stochastic rounding
    (comfy.float.manual_stochastic_round_to_float8, computed in fp16), which moves a small fraction of
    exactly representable values by one fp8 step. That is ComfyUI's behaviour for any patch (LoRA too) on
    an fp8 weight; there the untouched entries are checked to be within one step, in at most 1% of places.
    """
    keys = resolve_scope(patchable_weights(mp), "ff")
    key = keys[len(keys) // 2]
    shape = dict(patchable_weights(mp))[key]
    module = mp.model.get_submodule(key.rsplit(".", 1)[0])
    original = module.weight.detach().clone()
    idx = torch.tensor([0, 3, 17, original.numel() - 1])
    mask = Mask({key: idx}, {key: shape}, fingerprint_of(mp))
    with torch.inference_mode():
        erased = loaded_weight(apply_mask(mp, mask, 1.0), key, lowvram)
        halved = loaded_weight(apply_mask(mp, mask, 0.5), key, lowvram)
    others = torch.ones(original.numel(), dtype=torch.bool)
    others[idx] = False
    assert torch.all(erased.reshape(-1)[idx] == 0)
    kept, was = erased.reshape(-1)[others].float(), original.reshape(-1)[others].float()
    if fp8_rounding:
        moved = kept != was
        assert moved.float().mean() <= 0.01
        assert torch.all((kept[moved] - was[moved]).abs() <= was[moved].abs() * 0.125 + 2 ** -9)  # one e4m3 step
        torch.testing.assert_close(halved.reshape(-1)[idx].float(), original.reshape(-1)[idx].float() * 0.5,
                                   rtol=0.125, atol=2 ** -9)
    else:
        assert torch.equal(kept, was)
        torch.testing.assert_close(halved.reshape(-1)[idx].float(), original.reshape(-1)[idx].float() * 0.5,
                                   rtol=0, atol=1e-7)
    assert torch.equal(module.weight, original) and module.weight.dtype == original.dtype and mp.patches == {}

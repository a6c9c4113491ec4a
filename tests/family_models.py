"""Reduced models of every family the pack supports, built from ComfyUI's own classes.

Each family keeps its real layer structure (block types, names, conditioning path, prediction type)
at reduced width and depth, so a forward+backward takes milliseconds on CPU:

    sd15  comfy.supported_models.SD15  -> BaseModel, eps, cross-attention context
    sd2v  comfy.supported_models.SD20  -> BaseModel, v-prediction, linear proj_in/out
    sdxl  comfy.supported_models.SDXL  -> model_base.SDXL, ADM `y` from pooled_output + size
    sd3   comfy.supported_models.SD3   -> model_base.SD3 (MMDiT joint blocks, dual attention block), flow
    flux  comfy.supported_models.Flux  -> model_base.Flux (double/single stream blocks, guidance embed), flow

Models are built under torch.inference_mode() like ComfyUI's loaders build them. `plain_autograd_alpha`
writes the CAD objective directly against BaseModel.apply_model, with the conditioning each family's
sampling path produces, as the independent reference the node path must match.
"""
import dataclasses

import torch

import comfy.ldm.flux.model
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


BUILDERS = {"sd15": _sd15, "sd2v": _sd2v, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux, "auraflow": _auraflow}
FAMILIES = ("sd15", "sd2v", "sdxl", "sd3", "flux")      # the ones with scope presets

# What the scope presets must find in each reduced model (counted by hand from the configs above).
EXPECTED = {
    #        ff matrices, attention matrices, parameterization, latent channels
    "sd15": dict(ff=14, attention=56, flow=False, channels=4),    # 7 transformer blocks x (2 ff, 2 x 4 attn)
    "sd2v": dict(ff=14, attention=56, flow=False, channels=4),
    "sdxl": dict(ff=14, attention=56, flow=False, channels=4),    # 2 (input) + 1 (middle) + 4 (output) blocks
    "sd3": dict(ff=6, attention=9, flow=True, channels=16),      # last context block is pre-only (qkv, no proj/mlp)
    "flux": dict(ff=12, attention=8, flow=True, channels=16),    # 2 double x 2 streams x 2 mlp + 2 single x linear1/2
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
    """CONDITIONING as the family's text encoder node produces it (random tensors of reduced width)."""
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cond = torch.randn((1, 7, CTX), generator=g)
        extras = {}
        if family in ("sdxl", "sd3", "flux"):
            extras["pooled_output"] = torch.randn((1, POOLED), generator=g)
        if family == "flux":
            extras["guidance"] = flux_guidance        # FluxGuidance node
        return [[cond, extras]]


def empty_latent(size=8):
    """EmptyLatentImage output (4 channels; fix_empty_latent_channels widens it for 16-channel families)."""
    with torch.inference_mode():
        return {"samples": torch.zeros((1, 4, size, size))}


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
    return kw


def plain_autograd_alpha(mp, family, objective, keys, pos, base, *, steps, seed, guidance, latent_size=8,
                         concept_latent=None):
    """alpha = w * dJ/dw with ordinary autograd through BaseModel.apply_model (no probes, no guider).

    Scoped weights are swapped for leaf tensors holding the stored values in the compute dtype (what a
    manual-cast op multiplies with), so the reference differentiates the same function the node path does.
    """
    bm = mp.model
    params = {f"diffusion_model.{n}": p for n, p in bm.diffusion_model.named_parameters()}
    compute = bm.manual_cast_dtype or bm.get_dtype()     # what the ops multiply with
    leaves = {k: params[k].detach().to(compute).clone().requires_grad_(True) for k in keys}
    sigmas = comfy.samplers.calculate_sigmas(mp.get_model_object("model_sampling"), "normal", steps).float().clone()
    p = parameterization(family)
    channels = EXPECTED[family]["channels"]
    hw = (latent_size, latent_size)
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
        return torch.randn((1, channels, *hw), generator=gen)

    # ComfyUI 0.33 runs Flux's rotary embedding through a comfy-kitchen kernel without a backward unless
    # in_training is set (as core's LoRA trainer sets it); 0.3.75 has no such flag.
    training_flag = getattr(mm, "in_training", None)
    if training_flag is not None:
        mm.in_training = True
    try:
        return _plain_alpha(objective, predict, noise, p, sigmas, steps, guidance, channels, hw, leaves, keys,
                            bm, concept_latent, kw_pos, kw_base)
    finally:
        if training_flag is not None:
            mm.in_training = training_flag


def _plain_alpha(objective, predict, noise, p, sigmas, steps, guidance, channels, hw, leaves, keys, bm,
                 concept_latent, kw_pos, kw_base):
    total = 0
    if objective in ("concept_gap", "concept_gap_full"):
        x = p.add_noise(torch.zeros((1, channels, *hw)), noise(0), sigmas[0])
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
    grads = torch.autograd.grad(total, [leaves[k] for k in keys])
    return {k: (leaves[k].detach() * g).float() for k, g in zip(keys, grads)}


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
    mask = Mask({key: idx}, {key: shape}, fingerprint_of(mp), {"mode": "erase"})
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

"""Small SD1.5-structured models from ComfyUI's own classes (comfyui.md §9), built like the real loader:
under torch.inference_mode(), so the weights are inference tensors."""
import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models

UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
    "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 64,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}


def tiny_sd15(seed=0, v_prediction=False, inference=True, scale=0.05):
    """A ModelPatcher around a random SD1.5-structured BaseModel (~0.5M parameters)."""
    model_type = comfy.model_base.ModelType.V_PREDICTION if v_prediction else comfy.model_base.ModelType.EPS
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(inference):
        cfg = comfy.supported_models.SD15(dict(UNET_CONFIG))
        cfg.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.BaseModel(cfg, model_type=model_type, device=torch.device("cpu"))
        for name, p in model.diffusion_model.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith(".weight") and p.ndim == 1:
                p.data.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.data.copy_(torch.randn(p.shape, generator=g) * scale)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def assert_untouched(mp, weights_before):
    """After CAD ran: no weight wrapper left on the shared modules, no requires_grad or .grad, no patch, and the
    weights bit-identical to `weights_before` (a state_dict copy taken before)."""
    modules = list(mp.model.diffusion_model.modules())
    assert all(not getattr(m, "weight_function", []) and not getattr(m, "bias_function", []) for m in modules)
    assert all(not p.requires_grad and p.grad is None for p in mp.model.parameters())
    assert mp.patches == {} and mp.weight_wrapper_patches == {}
    after = mp.model.state_dict()
    assert all(torch.equal(weights_before[k], after[k]) for k in weights_before)


def conditioning(seed, tokens=77, dim=64):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return [[torch.randn((1, tokens, dim), generator=g), {}]]


def empty_latent(size=16):
    with torch.inference_mode():
        return {"samples": torch.zeros((1, 4, size // 2, size // 2))}


def sample(mp, positive, negative, steps, seed=11):
    """What KSampler (euler, normal, CFG 3) returns for the tiny model: the tests' way to compare images."""
    import comfy.sample
    with torch.inference_mode():
        latent = empty_latent()["samples"]
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample(mp, noise, steps, 3.0, "euler", "normal", positive, negative, latent, seed=seed,
                                   disable_pbar=True)

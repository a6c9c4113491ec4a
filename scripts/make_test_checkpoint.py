"""Build a random-init SD1.5 checkpoint that ComfyUI's real loader accepts.

No real weights can be downloaded, so tests and the demo use a checkpoint built from
ComfyUI's own classes:
  * UNet: SD1.5 layout but narrow (model_channels 320 and context_dim 768 are what
    ComfyUI's SD15 detection requires; one level, one res block, depth 1)
  * CLIP: full-size CLIP-L (ComfyUI's SD1 clip; its shape is fixed by sd1_clip_config.json)
  * VAE: ComfyUI's AutoencoderKL with the standard SD config (the loader picks the config
    from the key names, so it has to be the standard one)
Every tensor is filled from a seeded generator (ComfyUI ops skip weight init), and the
file is written in fp16 with ComfyUI's own checkpoint key layout.

    python -m scripts.make_test_checkpoint [--out PATH] [--seed 0] [--check]
"""
import argparse
import inspect
import math
import os
import time

from scripts.pack_bootstrap import import_comfyui

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bump when the construction below changes, so cached files are rebuilt.
GENERATOR_VERSION = 2  # 2: built right on ComfyUI 0.33 too (v1 files made there had the CLIP weights as UNet)
DEFAULT_PATH = os.path.join(REPO, ".cache", "test-models", f"sd15_tiny_random_v{GENERATOR_VERSION}.safetensors")

UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "context_dim": 768,  # fixed by SD15 detection
    "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "use_temporal_resblock": False, "use_temporal_attention": False,
}
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _fill_(module, generator):
    """Deterministic init that keeps activations O(1): norms are identity, biases zero,
    other weights N(0, 1/fan_in) so outputs stay finite but still depend on the inputs."""
    import torch
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    for name, sub in sorted(module.named_modules(), key=lambda kv: kv[0]):
        for pname, p in sorted(sub.named_parameters(recurse=False), key=lambda kv: kv[0]):
            with torch.no_grad():
                if isinstance(sub, norm_types):
                    p.fill_(1.0 if pname == "weight" else 0.0)
                elif pname == "bias" or p.ndim < 2:
                    p.zero_()
                else:
                    fan_in = math.prod(p.shape[1:])
                    if isinstance(sub, torch.nn.Embedding):
                        fan_in = 1 / 0.0004  # std 0.02, the usual embedding init
                    p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))


def build_state_dict(seed=0):
    """Return (state_dict fp16 with checkpoint keys, param counts dict)."""
    import_comfyui(cpu=True)
    import torch
    import comfy.model_base
    import comfy.sd1_clip
    import comfy.supported_models
    from comfy.ldm.models.autoencoder import AutoencoderKL

    g = torch.Generator().manual_seed(seed)
    cfg = comfy.supported_models.SD15(dict(UNET_CONFIG))
    cfg.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.BaseModel(cfg, model_type=comfy.model_base.ModelType.EPS, device=torch.device("cpu"))
    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    vae = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
    for m in (model.diffusion_model, clip, vae):
        _fill_(m, g)

    counts = {name: sum(p.numel() for p in m.parameters())
              for name, m in (("unet", model.diffusion_model), ("clip", clip), ("vae", vae))}
    # ComfyUI's own saving path renames keys (model.diffusion_model., cond_stage_model., first_stage_model.). Since
    # 0.33 it takes the UNet's state dict first (positional arguments would put the CLIP weights in its place).
    unet = ({"unet_state_dict": model.diffusion_model.state_dict()}
            if "unet_state_dict" in inspect.signature(model.state_dict_for_saving).parameters else {})
    sd = model.state_dict_for_saving(clip_state_dict=clip.state_dict(), vae_state_dict=vae.state_dict(), **unet)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    return sd, counts


def make_sd15_test_checkpoint(path=DEFAULT_PATH, seed=0, force=False):
    """Create the checkpoint at `path` unless it already exists. Returns the path."""
    if os.path.isfile(path) and not force:
        return path
    from safetensors.torch import save_file
    t0 = time.time()
    sd, counts = build_state_dict(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(sd, tmp, metadata={"cad_test_checkpoint": f"sd15_tiny_random_v{GENERATOR_VERSION}", "seed": str(seed)})
    os.replace(tmp, path)  # atomic: a half-written file is never picked up as cached
    total = sum(counts.values())
    print(f"[make_test_checkpoint] {path}: params unet={counts['unet']:,} clip={counts['clip']:,} "
          f"vae={counts['vae']:,} total={total:,}; {os.path.getsize(path) / 2**20:.1f} MiB; {time.time() - t0:.1f}s")
    return path


def check_checkpoint(path):
    """Load through the real loader and run MODEL/CLIP/VAE once; returns a dict of facts."""
    import_comfyui(cpu=True)
    import torch
    import comfy.sample
    import comfy.sd
    import comfy.supported_models
    import comfy.utils

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        path, output_vae=True, output_clip=True, embedding_directory=None)
    assert model is not None and clip is not None and vae is not None, "MODEL/CLIP/VAE missing"
    config = model.model.model_config
    assert type(config) is comfy.supported_models.SD15, f"detected {type(config).__name__}, expected SD15"
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a cat"))
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    assert torch.isfinite(cond[0][0]).all(), "CLIP output not finite"
    image = vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert image.shape[1:] == (64, 64, 3) and torch.isfinite(image).all(), f"VAE decode bad: {image.shape}"
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    samples = comfy.sample.sample(model, noise, 4, 3.0, "euler", "normal", cond, empty, latent, seed=0,
                                  disable_pbar=True)
    assert torch.isfinite(samples).all(), "KSampler output has NaN/inf"
    return {"config": type(config).__name__, "cond_shape": tuple(cond[0][0].shape),
            "image_shape": tuple(image.shape), "samples_std": float(samples.std())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_PATH)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    ap.add_argument("--check", action="store_true", help="load it with ComfyUI's loader and run it")
    a = ap.parse_args()
    path = make_sd15_test_checkpoint(a.out, seed=a.seed, force=a.force)
    print(path)
    if a.check:
        print(check_checkpoint(path))


if __name__ == "__main__":
    main()

"""The toy text-to-image model, built from ComfyUI's own classes so CAD sees real SD layer names.

- UNet: ComfyUI's SD UNetModel (spatial transformers with GEGLU `.ff.` and cross-attention), small.
  It must be at least as wide (64) as the latent has channels (48): at width 32 the first conv was a
  bottleneck and the noise prediction never got below MSE 0.39.
- Text encoder: ComfyUI's CLIP text model at a tiny width, driven by the bundled SD1 tokenizer, so the
  ordinary CLIP Text Encode node works on it.
- "VAE": none is needed for 32 px images. The latent is the image itself, 4x4 pixel-unshuffled
  (48 channels at 8x8; 4x cheaper to train than 2x2), and decoding shows it 2x upscaled, so ComfyUI's
  fixed 8x latent-to-pixel ratio holds: Empty Latent Image 64x64 gives the model's native 8x8 latent.
"""
import hashlib
import os

import torch
import torch.nn.functional as F

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.utils

from ...cad_core import CADError

IMAGE_SIZE = 32
LATENT_SIZE = 8
PATCH = 4  # pixels per latent cell along each axis
LATENT_CHANNELS = 3 * PATCH * PATCH
CONTEXT_DIM = 32
WEIGHTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toyworld_v2.safetensors")
UNET_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "text_encoder."

UNET_CONFIG = {
    "use_checkpoint": False, "image_size": LATENT_SIZE, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "model_channels": 64,
    "num_res_blocks": [1, 1], "channel_mult": [1, 1], "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
    "context_dim": CONTEXT_DIM, "use_temporal_resblock": False, "use_temporal_attention": False,
}

TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": CONTEXT_DIM, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4 * CONTEXT_DIM, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": CONTEXT_DIM, "vocab_size": 49408,
}


class ToyOps(comfy.ops.disable_weight_init):
    """ComfyUI's UNet asks for 32 GroupNorm groups; at this width that is a near per-channel norm, which
    gave checkerboard samples in the prototype. 8 groups do not."""

    class GroupNorm(comfy.ops.disable_weight_init.GroupNorm):
        def __init__(self, num_groups, num_channels, *args, **kwargs):
            super().__init__(min(num_groups, 8), num_channels, *args, **kwargs)


class ToyLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = LATENT_CHANNELS
    scale_factor = 1.0


class ToyWorldConfig(comfy.supported_models_base.BASE):
    unet_config = UNET_CONFIG
    unet_extra_config = {"num_heads": 4, "num_head_channels": -1}
    latent_format = ToyLatentFormat
    custom_operations = ToyOps
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]


class ToyTextModel(comfy.sd1_clip.SDClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, textmodel_json_config=TEXT_CONFIG, layer="last",
                         model_options={**model_options, "model_name": "toy_clip"}, return_projected_pooled=False)


class ToyClip(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
        super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=ToyTextModel)


class PixelLatentVAE:
    """Stands in for a VAE: latent = 4x4 pixel-unshuffle of the 32 px image in [-1, 1]."""

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        image = latent_to_image(samples.float())
        image = F.interpolate(image, scale_factor=8 // PATCH, mode="nearest")
        return image.movedim(1, -1).cpu()

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels[..., :3].movedim(-1, 1).float()
        h, w = x.shape[-2] // 8, x.shape[-1] // 8
        return image_to_latent(F.interpolate(x, size=(PATCH * h, PATCH * w), mode="area"))

    # ComfyUI queries these on some paths (tiled decoding, video); the toy world is 2-D, 8x.
    def spacial_compression_decode(self):
        return 8

    def spacial_compression_encode(self):
        return 8

    def temporal_compression_decode(self):
        return None


def image_to_latent(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 48, H/4, W/4) in [-1, 1]."""
    return F.pixel_unshuffle(images * 2 - 1, PATCH)


def latent_to_image(latent: torch.Tensor) -> torch.Tensor:
    """(B, 48, h, w) -> (B, 3, 4h, 4w) in [0, 1]."""
    return (F.pixel_shuffle(latent, PATCH).clamp(-1, 1) + 1) / 2


def build_unet(device="cpu"):
    """A BaseModel around the toy UNet, weights uninitialised (ComfyUI ops skip init)."""
    # v-prediction: with eps-prediction, a small systematic noise error at high sigma accumulated over
    # the sampling steps into visibly noisy images; v keeps the x0 error bounded there.
    return comfy.model_base.BaseModel(ToyWorldConfig(dict(UNET_CONFIG)),
                                      model_type=comfy.model_base.ModelType.V_PREDICTION, device=torch.device(device))


def build_text_encoder():
    return ToyClip(device="cpu", dtype=torch.float32)


def verify_weights_file(path: str = WEIGHTS_FILE) -> str:
    """The committed weights must match their checksum: a damaged file would silently give a broken demo."""
    if not os.path.isfile(path):
        raise CADError(f"The toy-world weights are missing ({path}). Reinstall the pack, or retrain them with "
                       f"`python -m scripts.train_toyworld`.")
    expected = open(path + ".sha256").read().split()[0]
    actual = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if actual != expected:
        raise CADError(f"The toy-world weights do not match their checksum (sha256 {actual}, expected {expected}); "
                       f"the file is damaged. Reinstall the pack or retrain with `python -m scripts.train_toyworld`.")
    return actual


def load_toyworld(path: str = WEIGHTS_FILE):
    """MODEL (ModelPatcher), CLIP and VAE of the trained toy world, as ComfyUI nodes expect them."""
    state = comfy.utils.load_torch_file(path, safe_load=True)
    base_model = build_unet()
    unet_sd = {k[len(UNET_PREFIX):]: v.float() for k, v in state.items() if k.startswith(UNET_PREFIX)}
    base_model.diffusion_model.load_state_dict(unet_sd, strict=True)
    model = comfy.model_patcher.ModelPatcher(base_model, load_device=comfy.model_management.get_torch_device(),
                                             offload_device=comfy.model_management.unet_offload_device())
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, ToyClip)
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float32})
    text_sd = {k[len(TEXT_PREFIX):]: v.float() for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    clip.load_sd(text_sd)
    return model, clip, PixelLatentVAE()

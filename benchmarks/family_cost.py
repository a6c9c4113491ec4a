"""Full-size cost on paper: for each model family the pack meets, what CAD's `ff` scope holds and what its
state needs next to the model on a 24 GiB card. Computed, not measured: every model is built at full size
from ComfyUI's own classes (comfy.supported_models -> model_base) on the meta device, so no weight is
allocated; the numbers are counts of the shapes ComfyUI would create.

    python -m benchmarks.family_cost            # full size; writes benchmarks/results/family_cost.{md,json}
    python -m benchmarks.family_cost --tiny     # one or two blocks per model (checks the script; prints only)
    python -m benchmarks.family_cost --out /tmp/family_cost   # write <out>.md and <out>.json instead

Configurations are what comfy/model_detection.py derives from each released checkpoint's tensors (the
branch is named next to each builder). As a check, every built model's own tensors are handed back to
ComfyUI's detect_unet_config + model_config_from_unet_config: the class it picks and the weights of the
model it would build must equal ours ("detection round trip" in the JSON and the table's notes).
"""
import argparse
import dataclasses
import json
import math
import os
import time
from typing import Callable

from benchmarks import _common as C

GiB = 2 ** 30
CARD_GIB = 24
RESERVE_GIB = {"image": 4, "video": 8}   # activations, latents, text states, CUDA context: an assumption


# ----------------------------------------------------------------------------------- configurations
# Each builder returns (comfy.supported_models class name, unet config) for the released checkpoint; `tiny`
# keeps every width and cuts the number of blocks (meta-device cost is Python work per module).

def _depth(config: dict, tiny: bool, **small) -> dict:
    return {**config, **small} if tiny else config


def sd15(tiny):
    """model_detection: the UNet branch (input_blocks...); = benchmarks/_common.SD15_UNET."""
    return "SD15", {**C.SD15_UNET, **(C.TINY["sd15"] if tiny else {})}


def sdxl(tiny):
    return "SDXL", {**C.SDXL_UNET, **(C.TINY["sdxl"] if tiny else {})}


def sd35_large(tiny):
    """mmdit branch: x_embedder.proj [2432, 16, 2, 2] -> depth 2432 // 64 = 38; pos_embed [1, 36864, 2432];
    context_embedder 4096 -> 2432; y_embedder from 2048 (CLIP-L + G pooled); ln_q present -> rms; no attn2
    (x_block_self_attn_layers is Medium's)."""
    return "SD3", _depth({
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 38, "input_size": None,
        "adm_in_channels": 2048,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 2432}},
        "num_patches": 36864, "pos_embed_max_size": 192, "qk_norm": "rms", "pos_embed_scaling_factor": None,
        "x_block_self_attn_layers": []}, tiny, depth=2)
    # tiny: depth sets the width (64 * depth) too, so the reduced model is also narrower


_FLUX1 = {"image_model": "flux", "axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000,
          "out_channels": 16, "qkv_bias": True, "txt_ids_dims": [], "in_channels": 16, "hidden_size": 3072,
          "context_in_dim": 4096, "patch_size": 2, "depth": 19, "depth_single_blocks": 38}


def flux1_dev(tiny):
    """Flux branch: img_in [3072, 64] (16 ch x 2x2), txt_in from T5-XXL 4096, vector_in from CLIP-L 768,
    19 double_blocks + 38 single_blocks, guidance_in present (dev)."""
    return "Flux", _depth({**_FLUX1, "vec_in_dim": 768, "guidance_embed": True, "yak_mlp": False,
                           "txt_norm": False}, tiny, depth=1, depth_single_blocks=1)


def flux2_dev(tiny):
    """Flux branch, double_stream_modulation_img present -> flux2: img_in [6144, 128] (patch 1), txt_in from
    15360 (3 Mistral-Small-3.1 layers x 5120), 48 heads x 128, 8 double + 48 single blocks, guidance_in."""
    return "Flux2", _depth({
        "image_model": "flux2", "axes_dim": [32, 32, 32, 32], "num_heads": 48, "mlp_ratio": 3.0, "theta": 2000,
        "out_channels": 128, "global_modulation": True, "mlp_silu_act": True, "qkv_bias": False, "ops_bias": False,
        "default_ref_method": "index", "ref_index_scale": 10.0, "txt_ids_dims": [3], "in_channels": 128,
        "hidden_size": 6144, "context_in_dim": 15360, "patch_size": 1, "vec_in_dim": None, "depth": 8,
        "depth_single_blocks": 48, "guidance_embed": True, "yak_mlp": False, "txt_norm": False},
        tiny, depth=1, depth_single_blocks=1)


def chroma(tiny):
    """Flux branch with distilled_guidance_layer -> chroma: Flux.1-schnell's blocks (19 + 38, 3072 wide),
    no vector_in/guidance_in; the approximator: in 64, hidden 5120, out 3072, 5 layers."""
    config = {**_FLUX1, "image_model": "chroma", "in_channels": 64, "out_channels": 64, "vec_in_dim": None,
              "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5}
    return "Chroma", _depth(config, tiny, depth=1, depth_single_blocks=1)


def qwen_image(tiny):
    """Qwen Image branch (txt_norm): in_channels from img_in [3072, 64], 60 transformer_blocks; widths are
    the class defaults (24 heads x 128, joint_attention_dim 3584 = Qwen2.5-VL-7B)."""
    return "QwenImage", _depth({"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}, tiny, num_layers=2)


def z_image_turbo(tiny):
    """Lumina 2 branch, cap_embedder.1 [3840, 2560] -> dim 3840 (Z-Image), cap_feat_dim 2560 (Qwen3-4B), 30
    layers, cap_pad_token present -> pad_tokens_multiple 32; refiners: the class default of 2 each."""
    return "ZImage", _depth({
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
        "n_layers": 30, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
        "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}, tiny, n_layers=2)


def hidream_i1_full(tiny):
    """HiDream branch (caption_projection): a fixed config, 16 double + 32 single blocks, 20 heads x 128
    (2560 wide), 4 routed experts (2 active) + a shared one, Llama-3.1-8B layers 0..31 per block."""
    llama = list(range(32)) + [31] * 16
    config = {"image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
              "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
              "llama_layers": llama, "num_attention_heads": 20, "num_routed_experts": 4, "num_activated_experts": 2,
              "num_layers": 16, "num_single_layers": 32, "out_channels": 16, "patch_size": 2, "text_emb_dim": 2048}
    return "HiDream", _depth(config, tiny, num_layers=1, num_single_layers=1, llama_layers=llama[:2])


_WAN = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "freq_dim": 256,
        "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}


def wan22_ti2v_5b(tiny):
    """Wan 2.1 branch (head.modulation): dim 3072 -> 24 heads, head.head out 48 x 4 -> out_dim 48 (Wan 2.2
    VAE), ffn.0 [14336, 3072], 30 blocks, patch_embedding in 48 -> WAN22_T2V."""
    return "WAN22_T2V", _depth({**_WAN, "dim": 3072, "out_dim": 48, "num_heads": 24, "ffn_dim": 14336,
                                "num_layers": 30, "in_dim": 48}, tiny, num_layers=2)


def wan22_a14b_expert(tiny):
    """Wan 2.1 branch: dim 5120 -> 40 heads, ffn.0 [13824, 5120], 40 blocks, 16-channel latent (Wan 2.1 VAE),
    no img_emb -> t2v. The A14B pair is two such models (high-noise and low-noise expert), loaded one at a
    time; this is one of them."""
    return "WAN21_T2V", _depth({**_WAN, "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824,
                                "num_layers": 40, "in_dim": 16}, tiny, num_layers=2)


def hunyuan_video(tiny):
    """Hunyuan Video branch (txt_in.individual_token_refiner): img_in.proj [3072, 16, 1, 2, 2], 24 heads, 20
    double + 40 single blocks, txt_in from 4096 (LLaVA-Llama-3-8B), vector_in (CLIP-L 768), guidance_in."""
    return "HunyuanVideo", _depth({
        "image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
        "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096,
        "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40,
        "theta": 256, "qkv_bias": True, "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False,
        "vision_in_dim": None, "meanflow_sum": False}, tiny, depth=1, depth_single_blocks=1)


def ltx_video_2b(tiny):
    """Lightricks ltxv branch: 28 transformer_blocks, attn2.to_k [2048, 2048] -> head dim 2048 // 32 = 64,
    cross_attention_dim 2048 (2B, v0.9.x); caption_channels and heads: class defaults (T5-XXL 4096, 32)."""
    return "LTXV", _depth({"image_model": "ltxv", "num_layers": 28, "attention_head_dim": 64,
                           "cross_attention_dim": 2048, "use_keyframes_abs_pos_embedding": False}, tiny, num_layers=2)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable[[bool], tuple]
    dtype: str                  # what users load (2 bytes a weight either way)
    resolution: tuple           # (width, height) or (width, height, frames)
    fp8: bool = False           # also a common fp8 checkpoint (its size and passes in the table)
    known: str = ""             # the size these models are known for (total diffusion-model parameters)
    note: str = ""


ENTRIES = (
    Entry("SD1.5", sd15, "fp16", (512, 512), known="0.86B UNet"),
    Entry("SDXL", sdxl, "fp16", (1024, 1024), known="2.57B UNet"),
    Entry("SD3.5 Large", sd35_large, "fp16", (1024, 1024), known="8.1B"),
    Entry("Flux.1-dev", flux1_dev, "bf16", (1024, 1024), fp8=True, known="11.9B"),
    Entry("Flux.2-dev", flux2_dev, "bf16", (1024, 1024), fp8=True, known="32B"),
    Entry("Chroma", chroma, "bf16", (1024, 1024), known="8.9B"),
    Entry("Qwen-Image", qwen_image, "bf16", (1328, 1328), fp8=True, known="20B"),
    Entry("Z-Image Turbo", z_image_turbo, "bf16", (1024, 1024), known="6B"),
    Entry("HiDream-I1 Full", hidream_i1_full, "fp16", (1024, 1024), fp8=True, known="17B"),
    Entry("Wan 2.2 TI2V 5B", wan22_ti2v_5b, "fp16", (1280, 704, 121), known="5B"),
    Entry("Wan 2.2 A14B (one expert)", wan22_a14b_expert, "fp16", (1280, 720, 81), fp8=True,
          known="14B per expert, 27B pair", note="the high-noise and the low-noise expert each have this shape; "
                                                 "the row is one of them"),
    Entry("HunyuanVideo 1.0", hunyuan_video, "bf16", (1280, 720, 129), known="13B",
          note="generic scope: `ff` holds the double blocks' img_mlp/txt_mlp and the token refiner's mlp; the 40 "
               "single blocks' fused linear1/linear2 (no mlp/ff in their names) are not in it"),
    Entry("LTX-Video 2B", ltx_video_2b, "bf16", (768, 512, 97), known="2B"),
)

# Keys model_detection sets on ComfyUI 0.33 that older ComfyUI's parameter classes do not know (dropped there,
# as older detection does not set them; they do not change any shape).
NEWER_KEYS = ("txt_ids_dims", "yak_mlp", "txt_norm", "meanflow_sum", "vec_in_dim")
# VAE compression (spatial, temporal) per latent format, for ComfyUI versions whose latent formats do not say it.
COMPRESSION = {"SD15": (8, 1), "SDXL": (8, 1), "SD3": (8, 1), "Flux": (8, 1), "Flux2": (16, 1), "Wan21": (8, 4),
               "Wan22": (16, 4), "HunyuanVideo": (8, 4), "LTXV": (32, 8)}


# ----------------------------------------------------------------------------------------- building
def params_fields(image_model: str) -> set | None:
    """Field names of the parameter dataclass a model family's config goes through (None: plain kwargs)."""
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.ldm.hunyuan_video.model
    cls = {"flux": comfy.ldm.flux.model.FluxParams, "flux2": comfy.ldm.flux.model.FluxParams,
           "chroma": comfy.ldm.chroma.model.ChromaParams,
           "hunyuan_video": comfy.ldm.hunyuan_video.model.HunyuanVideoParams}.get(image_model)
    return None if cls is None else {f.name for f in dataclasses.fields(cls)}


def for_this_comfyui(config: dict) -> tuple[dict, list]:
    """The config without the NEWER_KEYS this ComfyUI's parameter class lacks, and the keys dropped."""
    fields = params_fields(config.get("image_model", ""))
    dropped = [k for k in NEWER_KEYS if k in config and fields is not None and k not in fields]
    return {k: v for k, v in config.items() if k not in dropped}, dropped


def build_meta(model_config):
    """The diffusion model of a comfy.supported_models config, built by its model_base class on the meta device."""
    import torch
    model_config.set_inference_dtype(torch.bfloat16, None)
    return model_config.get_model({}, device=torch.device("meta")).diffusion_model


def detection_round_trip(diffusion_model, class_name: str, shapes) -> str:
    """'ok' if ComfyUI's model detection, given this model's tensors as a checkpoint, picks the same class and
    builds the same weights; else what differs."""
    import comfy.model_detection
    from cad_pack.nodes.bridge import op_weight_shapes
    sd = dict(diffusion_model.state_dict())
    detected = comfy.model_detection.detect_unet_config(sd, "")
    if detected is None:
        return "not detected"
    config = comfy.model_detection.model_config_from_unet_config(detected, sd)
    if config is None:
        return "no comfy.supported_models class matches the detected config"
    if type(config).__name__ != class_name:
        return f"detected as {type(config).__name__}"
    again = op_weight_shapes(build_meta(config))
    if again != shapes:
        diff = [(a, b) for a, b in zip(again, shapes) if a != b][:1] or f"{len(again)} vs {len(shapes)} weights"
        return f"detected config builds other weights (first difference: {diff})"
    return "ok"


# ------------------------------------------------------------------------------------------ costing
def latent_shape(latent_format, resolution) -> list:
    """[1, C, (T,) H, W] of the latent for this resolution, from the model's latent format."""
    spatial, temporal = COMPRESSION[type(latent_format).__name__]
    for attr, value in (("spacial_downscale_ratio", spatial), ("temporal_downscale_ratio", temporal)):
        stated = getattr(latent_format, attr, None)
        assert stated in (None, value), f"{type(latent_format).__name__}.{attr} is {stated}, table says {value}"
    width, height, *frames = resolution
    hw = [height // spatial, width // spatial]
    if latent_format.latent_dimensions == 3:    # video, and Qwen-Image's one-frame Wan 2.1 latent
        return [1, latent_format.latent_channels, (frames[0] - 1) // temporal + 1 if frames else 1, *hw]
    return [1, latent_format.latent_channels, *hw]


def weight_bytes(diffusion_model, fp8: bool) -> int:
    """Bytes of the diffusion model's parameters: 2 each, or for fp8 1 per matrix entry (>= 2-D) and 2 else."""
    return sum(p.numel() * (1 if fp8 and p.ndim >= 2 else 2) for p in diffusion_model.parameters())


def passes(ff_named, weights: int, reserve_gib: float) -> dict:
    """plan_chunks' pass count when CAD's state may take what is left of the card after weights and reserve."""
    from cad_pack.cad_core.budget import plan_chunks
    from cad_pack.cad_core.errors import CADError
    budget = CARD_GIB * GiB - weights - reserve_gib * GiB
    if budget <= 0:
        return {"budget_gib": budget / GiB, "passes": None, "text": "does not fit: needs partial loading"}
    try:
        n = len(plan_chunks(ff_named, budget))
    except CADError as e:     # the largest matrix alone does not fit
        return {"budget_gib": budget / GiB, "passes": None, "text": f"budget below one matrix ({e})"}
    return {"budget_gib": budget / GiB, "passes": n, "text": f"{n} ({budget / GiB:.1f} GiB free)"}


def scope_stats(named, scope: str) -> dict:
    from cad_pack.cad_core import resolve_scope
    from cad_pack.cad_core.budget import scope_bytes
    shapes = dict(named)
    keys = resolve_scope(named, scope)
    return {"keys": keys, "matrices": len(keys), "weights": sum(math.prod(shapes[k]) for k in keys),
            "state_bytes": scope_bytes([shapes[k] for k in keys])}


def cost(entry: Entry, tiny: bool) -> dict:
    """One row: build the model on meta, resolve its scopes, price them."""
    import comfy.supported_models
    from cad_pack.cad_core.families import detect_family
    from cad_pack.nodes.bridge import op_weight_shapes
    started = time.perf_counter()
    class_name, full_config = entry.builder(tiny)
    config, dropped = for_this_comfyui(full_config)
    model_config = getattr(comfy.supported_models, class_name)(dict(config))
    dm = build_meta(model_config)
    named = op_weight_shapes(dm)
    ff, attention = scope_stats(named, "ff"), scope_stats(named, "attention")
    family = detect_family(k for k, _ in named)
    video = len(entry.resolution) == 3
    reserve = RESERVE_GIB["video" if video else "image"]
    shapes = dict(named)
    ff_named = [(k, shapes[k]) for k in ff["keys"]]
    loads = {entry.dtype: weight_bytes(dm, fp8=False), **({"fp8": weight_bytes(dm, fp8=True)} if entry.fp8 else {})}
    row = {
        "model": entry.name, "class": class_name, "family": family.name if family else "generic",
        "config": full_config, "dropped_on_this_comfyui": dropped,
        "parameters": sum(p.numel() for p in dm.parameters()), "known": entry.known,
        "op_weights": len(named), "matrices": sum(1 for _, s in named if len(s) == 2),
        "ff": {k: v for k, v in ff.items() if k != "keys"},
        "attention": {k: v for k, v in attention.items() if k != "keys"},
        "largest_ff_matrix": max(ff_named, key=lambda ks: math.prod(ks[1]))[1],
        "resolution": list(entry.resolution),
        "latent_shape": latent_shape(model_config.latent_format, entry.resolution),
        "reserve_gib": reserve, "weights_bytes": loads,
        "passes_24gib": {dtype: passes(ff_named, b, reserve) for dtype, b in loads.items()},
        "note": entry.note,
    }
    row["detection_round_trip"] = detection_round_trip(dm, class_name, named)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


# ------------------------------------------------------------------------------------------- output
def billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def resolution_text(row) -> str:
    r = row["resolution"]
    px = f"{r[0]}x{r[1]}" + (f", {r[2]} frames" if len(r) == 3 else "")
    return f"{px} -> [{', '.join(map(str, row['latent_shape']))}]"


def markdown(rows, info, tiny: bool, seconds: float) -> str:
    headers = ["model", "family record", "parameters", "known as", "ff matrices", "ff weights", "CAD state for ff",
               "attention weights", "weights loaded", "usual resolution -> latent", "passes on 24 GiB (ff)"]
    body = []
    for r in rows:
        loads = " / ".join(f"{b / GiB:.1f} GiB {d}" for d, b in r["weights_bytes"].items())
        fits = "; ".join(f"{d}: {p['text']}" for d, p in r["passes_24gib"].items())
        body.append([r["model"] + ("*" if r["note"] else ""), r["family"], billions(r["parameters"]), r["known"],
                     r["ff"]["matrices"],
                     f"{r['ff']['weights'] / 1e9:.2f}B", f"{r['ff']['state_bytes'] / GiB:.1f} GiB",
                     f"{r['attention']['weights'] / 1e9:.2f}B", loads, resolution_text(r), fits])
    odd = [f"{r['model']}: {r['detection_round_trip']}" for r in rows if r["detection_round_trip"] != "ok"]
    dropped = sorted({k for r in rows for k in r["dropped_on_this_comfyui"]})
    lines = [
        f"# CAD at full size, on paper ({time.strftime('%Y-%m-%d')})", "",
        "**Computed, not measured.** Each model is built at full size from ComfyUI's own classes "
        f"(comfy.supported_models -> model_base, ComfyUI {info['comfyui']}, torch {info['torch']}) on the "
        "**meta device** (no weight allocated); its weights are listed with the pack's op_weight_shapes (what "
        "ComfyUI can patch), the `ff` and `attention` scopes resolved with cad_core.resolve_scope (the family "
        "record's preset, or the generic module-name fallback where no record matches), CAD's state with "
        f"cad_core.budget.scope_bytes ({info['bytes_per_weight']} bytes per scoped weight: fp32 gradient sum + fp32 "
        "weight copy) and the passes with cad_core.budget.plan_chunks. Written by benchmarks/family_cost.py"
        + (" --tiny (REDUCED models: not the full-size result)" if tiny else "") + f" in {seconds:.0f} s.", "",
        "Configurations: what comfy/model_detection.py derives from each released checkpoint's tensors (see the "
        "builders in the script and the JSON). Every model passed the detection round trip (its tensors, handed to "
        "ComfyUI's detect_unet_config as a checkpoint, give the same class and the same weights)"
        + ("" if not odd else ", except: " + "; ".join(odd))
        + (" (--tiny: reduced configs are not ones detection derives, so mismatches are expected)" if tiny else "")
        + ".", "",
        f"Budget assumption: a {CARD_GIB} GiB card holds the whole model at the loaded dtype, plus "
        f"{RESERVE_GIB['image']} GiB (images) or {RESERVE_GIB['video']} GiB (video) for activations, latents and the "
        "CUDA context; CAD's per-weight state may take the rest. Set on such a card, `memory_budget_mb` would be "
        "that rest plus the activations, which CAD measures itself at run time (here assumed to fit the reserve). "
        "\"does not fit\" = the weights and "
        "reserve alone exceed the card: ComfyUI would have to load the model partially (low-VRAM), which this "
        "table does not price. Weights loaded: 2 bytes per parameter (fp16 or bf16, the dtype the released "
        "checkpoints are commonly loaded in; the label says which); fp8: 1 byte per matrix entry (>= 2-D "
        "parameters), 2 bytes for the rest (norms, biases, modulation vectors). GiB = 2^30 bytes (1,024 MiB); "
        "B = 10^9 weights.", "",
        C.table(headers, body), "",
        *[f"\\* {r['model']}: {r['note']}.  " for r in rows if r["note"]], "",
        "Parameters: every parameter of the diffusion model (text encoders and VAE excluded). Latent shapes come "
        "from each model's latent format (channels, 2-D or 3-D) and its VAE compression (8x, 16x for Flux.2 and "
        "Wan 2.2 5B, 32x x 8 frames for LTX-Video; video frames (n - 1) / 4 + 1). The resolution does not enter the "
        "pass count here (the reserve is fixed); it is listed for what a run at that size means.",
    ]
    if dropped:
        lines += ["", f"On this ComfyUI the config keys {', '.join(dropped)} (set by newer model_detection) were "
                      "left out: its parameter classes do not have them; they change no shape."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="one or two blocks per model (seconds; checks the script)")
    ap.add_argument("--out", default=None, help="write <out>.md and <out>.json (default: benchmarks/results/"
                                                 "family_cost for a full run, nothing for --tiny)")
    ap.add_argument("--only", default=None, help="comma-separated model names (for checking one row)")
    args = ap.parse_args()
    C.setup(cpu=True)
    import logging
    logging.getLogger().setLevel(logging.WARNING)      # model_base logs each build at INFO
    from cad_pack.cad_core.budget import BYTES_PER_SCOPED_WEIGHT
    info = {**C.machine(), "bytes_per_weight": BYTES_PER_SCOPED_WEIGHT}
    entries = [e for e in ENTRIES if not args.only or e.name in args.only.split(",")]
    started = time.perf_counter()
    rows = []
    for entry in entries:
        rows.append(cost(entry, args.tiny))
        r = rows[-1]
        print(f"{r['model']}: {billions(r['parameters'])} parameters, ff {r['ff']['matrices']} matrices "
              f"{r['ff']['weights'] / 1e9:.2f}B, {r['seconds']} s, round trip {r['detection_round_trip']}", flush=True)
    seconds = time.perf_counter() - started
    text = markdown(rows, info, args.tiny, seconds)
    print(text)
    out = args.out or (None if args.tiny else os.path.join(C.RESULTS, "family_cost"))
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out + ".md", "w") as f:
            f.write(text)
        with open(out + ".json", "w") as f:
            json.dump({"machine": info, "tiny": args.tiny, "seconds": round(seconds, 1), "card_gib": CARD_GIB,
                       "reserve_gib": RESERVE_GIB, "rows": rows}, f, indent=1, default=str)


if __name__ == "__main__":
    main()

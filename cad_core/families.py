"""One record per model family: everything the pack knows about an architecture, in one place.

Scope presets (scopes.py), block names and their short labels (blocks.py, the node charts, the map), the
README's supported-models table (scripts/readme_tables.py) and the family tests read these records.
Adding a family = adding a record here, its reduced model in scripts/family_models.py and its README row
(regenerated). Patterns are written against ComfyUI's own parameter names (checked on models built from
comfy.supported_models).

What is asked of the model itself rather than recorded (so it holds for every ComfyUI version): how it
mixes noise into latents (comfy bridge: parameterization_of) and whether its conditioning path needs
'pooled_output' (needs_pooled_output).
"""
import re
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class ModelFamily:
    name: str                          # short id, stored in nothing: only for messages and tests
    display: str                       # what users call it
    recognise: str                     # regex: a weight name only this family has
    ff: str                            # regex over weight names: the feed-forward (MLP) matrices
    attention: str                     # regex: the attention projections
    blocks: tuple[tuple[str, str], ...]  # (regex of a block's name, short label for chart axes), in model order
    comfy_models: str                  # README: ComfyUI model classes
    noising: str                       # README: how the sampler noises latents (asked of the model at run time)
    ff_names: str                      # README: what the ff preset selects
    attention_names: str               # README: what the attention preset selects
    conditioning: str = ""             # README: what its conditioning needs beyond CLIP Text Encode's output
    unless: str = ""                   # regex: a name that makes a model another architecture after all
    # README: how the pack knows the preset works (reduced models on both ComfyUI versions, unless said)
    evidence: str = "reduced model, ComfyUI 0.3.75 and 0.33.0; full size computed only"

    def scope_pattern(self, part: str) -> re.Pattern:
        return re.compile({"ff": self.ff, "attention": self.attention}[part])


UNET = ModelFamily(
    name="unet", display="SD1.x / SD2.x / SDXL UNet",
    recognise=r"(^|\.)input_blocks\.",
    ff=r"\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)\.weight$",
    attention=r"\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight$",
    blocks=((r"input_blocks\.\d+", "in"), (r"middle_block", "mid"), (r"output_blocks\.\d+", "out")),
    comfy_models="BaseModel (SD1.x eps, SD2.x v or eps); model_base.SDXL (ADM `y` from pooled_output + size)",
    noising="x0 + σε",
    ff_names="`transformer_blocks.N.ff.net.{0.proj,2}`",
    attention_names="`attn1/attn2 .to_q/.to_k/.to_v/.to_out.0`",
    conditioning="SDXL: `pooled_output`",
    evidence="reduced models, ComfyUI 0.3.75 and 0.33.0; full size measured: SD1.5 on CPU, SD1.5 and SDXL on an H200",
)

# Flux-style blocks, shared by Flux, Flux.2 and Chroma. The single-stream blocks fuse attention and MLP in linear1
# (qkv + mlp_in) and linear2 (proj + mlp_out); the presets count both as feed-forward.
_FLUX_FF = r"(double_blocks\.\d+\.(img_mlp|txt_mlp)\.\d+|single_blocks\.\d+\.linear[12])\.weight$"
_FLUX_ATTENTION = r"double_blocks\.\d+\.(img_attn|txt_attn)\.(qkv|proj)\.weight$"
_FLUX_BLOCKS = ((r"double_blocks\.\d+", "double"), (r"single_blocks\.\d+", "single"))
_FLUX_FF_NAMES = "`double_blocks.N.{img,txt}_mlp.{0,2}`, `single_blocks.N.linear{1,2}` (these fuse attention and MLP)"
_FLUX_ATTENTION_NAMES = "`double_blocks.N.{img,txt}_attn.{qkv,proj}`"

FLUX2 = ModelFamily(
    name="flux2", display="Flux.2",
    recognise=r"(^|\.)double_stream_modulation_img\.",
    ff=_FLUX_FF, attention=_FLUX_ATTENTION, blocks=_FLUX_BLOCKS,
    comfy_models="model_base.Flux2 (global modulation, 128-channel latent)", noising="(1−σ)x0 + σε (flow)",
    ff_names=_FLUX_FF_NAMES + "; MLPs SiLU-gated", attention_names=_FLUX_ATTENTION_NAMES,
    conditioning="guidance (FluxGuidance); `pooled_output` key on ComfyUI 0.3.x",
)

CHROMA = ModelFamily(
    name="chroma", display="Chroma",
    recognise=r"(^|\.)distilled_guidance_layer\.",
    ff=_FLUX_FF, attention=_FLUX_ATTENTION, blocks=_FLUX_BLOCKS,
    comfy_models="model_base.Chroma (Flux blocks, modulation from distilled_guidance_layer)",
    noising="(1−σ)x0 + σε (flow)", ff_names=_FLUX_FF_NAMES, attention_names=_FLUX_ATTENTION_NAMES,
    conditioning="text only (`pooled_output` key on ComfyUI 0.3.x)",
)

FLUX = ModelFamily(
    name="flux", display="Flux (double/single-stream DiT)",
    recognise=r"(^|\.)double_blocks\.",
    unless=r"(^|\.)txt_in\.individual_token_refiner\.",     # HunyuanVideo: Flux-like names, other blocks
    ff=_FLUX_FF, attention=_FLUX_ATTENTION, blocks=_FLUX_BLOCKS,
    comfy_models="model_base.Flux (dev, schnell)",
    noising="(1−σ)x0 + σε (flow)",
    ff_names=_FLUX_FF_NAMES, attention_names=_FLUX_ATTENTION_NAMES,
    conditioning="`pooled_output` on ComfyUI 0.3.x (optional on 0.33)",
)

MMDIT = ModelFamily(
    name="mmdit", display="SD3 / SD3.5 MMDiT",
    recognise=r"(^|\.)joint_blocks\.",
    ff=r"joint_blocks\.\d+\.(x_block|context_block)\.mlp\.fc[12]\.weight$",
    attention=r"joint_blocks\.\d+\.(x_block|context_block)\.attn2?\.(qkv|proj)\.weight$",
    blocks=((r"joint_blocks\.\d+", "joint"),),
    comfy_models="model_base.SD3 (MMDiT)",
    noising="(1−σ)x0 + σε (flow)",
    ff_names="`joint_blocks.N.{x,context}_block.mlp.fc{1,2}`",
    attention_names="`attn/attn2 .qkv/.proj`",
    conditioning="`pooled_output`",
)

QWEN_IMAGE = ModelFamily(
    name="qwen_image", display="Qwen-Image",
    recognise=r"(^|\.)transformer_blocks\.\d+\.txt_mlp\.net\.",
    ff=r"transformer_blocks\.\d+\.(img_mlp|txt_mlp)\.net\.(0\.proj|2)\.weight$",
    attention=r"transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
              r"\.weight$",
    blocks=((r"transformer_blocks\.\d+", "block"),),
    comfy_models="model_base.QwenImage (MMDiT, one-frame 5-D latent)", noising="(1−σ)x0 + σε (flow)",
    ff_names="`transformer_blocks.N.{img,txt}_mlp.net.{0.proj,2}`",
    attention_names="`transformer_blocks.N.attn.{to_q,to_k,to_v,to_out.0}` (image), "
                    "`.{add_q_proj,add_k_proj,add_v_proj,to_add_out}` (text)",
    conditioning="text only",
)

LUMINA2 = ModelFamily(
    name="lumina2", display="Z-Image / Lumina 2 (NextDiT)",
    recognise=r"(^|\.)context_refiner\.\d+\.",
    ff=r"(layers|noise_refiner|context_refiner)\.\d+\.feed_forward\.w[123]\.weight$",
    attention=r"(layers|noise_refiner|context_refiner)\.\d+\.attention\.(qkv|out)\.weight$",
    blocks=((r"noise_refiner\.\d+", "noise"), (r"context_refiner\.\d+", "ctx"), (r"layers\.\d+", "layer")),
    comfy_models="model_base.Lumina2 (Z-Image Turbo, Lumina Image 2.0)", noising="(1−σ)x0 + σε (flow)",
    ff_names="`{layers,noise_refiner,context_refiner}.N.feed_forward.w{1,2,3}` (SwiGLU)",
    attention_names="`{layers,noise_refiner,context_refiner}.N.attention.{qkv,out}`",
    conditioning="text only (num_tokens from the text encoder)",
)

HIDREAM = ModelFamily(
    name="hidream", display="HiDream-I1",
    recognise=r"(^|\.)double_stream_blocks\.\d+\.",
    ff=r"(double|single)_stream_blocks\.\d+\.block\.(ff_i|ff_t)\.(shared_experts\.|experts\.\d+\.)?w[123]\.weight$",
    attention=r"(double|single)_stream_blocks\.\d+\.block\.attn1\.(to_q|to_k|to_v|to_out)(_t)?\.weight$",
    blocks=((r"double_stream_blocks\.\d+", "double"), (r"single_stream_blocks\.\d+", "single")),
    comfy_models="model_base.HiDream (mixture-of-experts feed-forward)", noising="(1−σ)x0 + σε (flow)",
    ff_names="`{double,single}_stream_blocks.N.block.ff_{i,t}.{shared_experts,experts.E}.w{1,2,3}` "
             "(the router `gate` is not a matrix ComfyUI patches)",
    attention_names="`…block.attn1.{to_q,to_k,to_v,to_out}` and `…_t` (text) ",
    conditioning="`pooled_output`, `conditioning_llama3` (QuadrupleCLIPLoader + CLIP Text Encode)",
)

WAN = ModelFamily(
    name="wan", display="Wan 2.1 / 2.2 (video)",
    recognise=r"(^|\.)blocks\.\d+\.cross_attn\.[qkvo]\.",
    ff=r"(^|\.)blocks\.\d+\.ffn\.(0|2)\.weight$",
    attention=r"(^|\.)blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]\.weight$",
    blocks=((r"blocks\.\d+", "block"),),
    comfy_models="model_base.WAN21 (2.1, 2.2 A14B), model_base.WAN22 (2.2 TI2V 5B); 5-D video latents",
    noising="(1−σ)x0 + σε (flow)", ff_names="`blocks.N.ffn.{0,2}`",
    attention_names="`blocks.N.{self_attn,cross_attn}.{q,k,v,o}`", conditioning="text only",
    evidence="reduced model (5-D latents), ComfyUI 0.3.75 and 0.33.0, also end to end through the server; "
             "full size computed only",
)

# Order matters where names overlap: Flux.2 and Chroma are told from Flux by names only they have.
FAMILIES = (UNET, FLUX2, CHROMA, FLUX, MMDIT, QWEN_IMAGE, LUMINA2, HIDREAM, WAN)

# Any other transformer: its feed-forward and attention matrices found from the names ComfyUI's own model code
# gives the modules inside a repeated block (`<blocks>.<N>.` ... `mlp` / `ff` / `ffn` / `feed_forward`, or `attn` /
# `attention`), 2-D weights only. Used when no record recognises a model, with a notice naming what it chose.
_IN_A_BLOCK = r"\.\d+\.(?:\w+\.)*(?:\w+_)?"
_REST = r"(?:[A-Z0-9_]\w*)?\.(?:\w+\.)*weight$"
GENERIC = ModelFamily(
    name="generic", display="any other transformer (ff/attention found by module name)",
    recognise=r"(?!)",                                  # never chosen by detect_family: the fallback
    ff=_IN_A_BLOCK + r"(?:mlp|ffn?|feed_?forward)" + _REST,
    attention=_IN_A_BLOCK + r"(?:attn|attention)" + _REST,
    blocks=(),
    comfy_models="any model ComfyUI loads whose blocks name their MLPs mlp/ff/ffn/feed_forward and their attention "
                 "attn/attention (e.g. HunyuanVideo, LTX-Video)",
    noising="asked of the model", ff_names="2-D weights under `…mlp…`, `…ff…`, `…ffn…`, `…feed_forward…` in a block",
    attention_names="2-D weights under `…attn…`, `…attention…` in a block",
    conditioning="as the model's own nodes make it",
    evidence="reduced AuraFlow, HunyuanVideo and LTX-Video, ComfyUI 0.3.75 and 0.33.0",
)

# Block names of architectures without a record, so their charts still group weights by block.
GENERIC_BLOCKS = ((r"single_transformer_blocks\.\d+", "single"), (r"transformer_blocks\.\d+", "block"),
                  (r"blocks\.\d+", "block"), (r"layers\.\d+", "layer"))


def detect_family(keys: Iterable[str]) -> ModelFamily | None:
    """The family whose weight names these are; None for an architecture without a record."""
    keys = list(keys)
    for family in FAMILIES:
        pattern, unless = re.compile(family.recognise), re.compile(family.unless) if family.unless else None
        if any(pattern.search(k) for k in keys) and not (unless and any(unless.search(k) for k in keys)):
            return family
    return None


def supported_families() -> str:
    return ", ".join(f.display for f in FAMILIES)

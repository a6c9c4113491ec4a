"""A concept erased in a video model end to end through the real server: a reduced Wan 2.2 (TI2V 5B layout) saved
as a diffusion-model file, loaded by core's UNETLoader, attributed on a 5-D video latent (Empty HunyuanVideo
Latent, as Wan workflows use), erased, sampled by KSampler; the original model samples the same before and after.
Conditioning comes from a test-only node (tests/server_nodes/), because Wan's text encoder (UMT5-XXL) cannot be
made small."""
import os

import numpy as np
import pytest
import torch

from conftest import ARTIFACTS, REPO

pytestmark = pytest.mark.server

WAN_FILE = os.path.join(REPO, ".cache", "test-models", "wan22_tiny_v1.safetensors")
# What comfy/model_detection.py reads back from the file: dim 128 (one head of 128), ffn 256, 2 blocks, 48-channel
# in/out (Wan 2.2 TI2V 5B), text width 4096 (the class default: UMT5-XXL).
WAN_CONFIG = {"image_model": "wan2.1", "model_type": "t2v", "dim": 128, "out_dim": 48, "num_heads": 1, "ffn_dim": 256,
              "num_layers": 2, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
              "cross_attn_norm": True, "eps": 1e-6, "in_dim": 48}


def tiny_wan_file():
    """The reduced Wan 2.2 diffusion model, written once (seeded) to .cache/test-models/."""
    if os.path.exists(WAN_FILE):
        return WAN_FILE
    import comfy.supported_models
    import comfy.utils
    from scripts.family_models import _init_
    config = comfy.supported_models.WAN22_T2V(dict(WAN_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("cpu"))
    _init_(model, torch.Generator().manual_seed(0), scale=0.1)
    os.makedirs(os.path.dirname(WAN_FILE), exist_ok=True)
    partial = WAN_FILE + ".partial"
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in model.diffusion_model.state_dict().items()}, partial)
    os.replace(partial, WAN_FILE)
    return WAN_FILE


@pytest.fixture(scope="module")
def video_server():
    from scripts.comfy_server import ComfyServer, reset_dir
    base = os.path.join(ARTIFACTS, "server_video")
    reset_dir(base)
    server = ComfyServer(base, log_path=os.path.join(ARTIFACTS, "comfy_server_video.log"),
                         extra_packs=[os.path.join(REPO, "tests", "server_nodes", "cad_test_nodes")],
                         model_files={"diffusion_models": [tiny_wan_file()]})
    with server:
        yield server


def common(multiplier=1.0):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": os.path.basename(WAN_FILE), "weight_dtype": "default"}},
        "2": {"class_type": "CADTestConditioning", "inputs": {"width": 4096, "tokens": 8, "seed": 1}},   # "a cat"
        "3": {"class_type": "CADTestConditioning", "inputs": {"width": 4096, "tokens": 8, "seed": 2}},   # ""
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                 "batch_size": 1}},
        # zeros times any multiplier: the same latent under a new cache key, so ComfyUI samples again
        "4m": {"class_type": "LatentMultiply", "inputs": {"samples": ["4", 0], "multiplier": multiplier}},
    }


def sampled(model, tag):
    return {f"{tag}_k": {"class_type": "KSampler", "inputs": {
                "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4m", 0], "seed": 0,
                "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            f"{tag}_s": {"class_type": "SaveLatent", "inputs": {"samples": [f"{tag}_k", 0],
                                                                "filename_prefix": f"video/{tag}"}}}


def latent_of(server, result, tag):
    from safetensors.torch import load_file
    entry = result["outputs"][f"{tag}_s"]["latents"][0]
    return load_file(os.path.join(server.base_dir, entry["type"], entry["subfolder"], entry["filename"]))["latent_tensor"]


def run(server, graph):
    result = server.run(graph, timeout=600)
    assert result["status"] == "success", f"{result['error']}\n{server.log_tail()}"
    return result


def test_erase_in_a_video_model_end_to_end(video_server):
    before = latent_of(video_server, run(video_server, {**common(2.0), **sampled(["1", 0], "before")}), "before")
    graph = {**common(3.0),
             "5": {"class_type": "CADAttribute", "inputs": {
                 "model": ["1", 0], "positive": ["2", 0], "base": ["3", 0], "latent": ["4", 0],
                 "objective": "concept_gap", "steps": 3, "guidance": 3.0, "seed": 0, "samples": 1, "scope": "ff",
                 "schedule": "single", "scope_regex": ""}},
             "6": {"class_type": "CADEraseMask", "inputs": {"attribution": ["5", 0], "ratio": 0.1,
                                                            "granularity": "per_row"}},
             "7": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": ["6", 0], "strength": 1.0}},
             "8": {"class_type": "CADSaveAttribution", "inputs": {"attribution": ["5", 0],
                                                                  "filename_prefix": "video/attribution"}},
             **sampled(["7", 0], "erased")}
    result = run(video_server, graph)
    after = latent_of(video_server, run(video_server, {**common(4.0), **sampled(["1", 0], "after")}), "after")

    summary = result["outputs"]["5"]["cad_summary"][0]
    assert [b["block"] for b in summary["blocks"]] == ["blocks.0", "blocks.1"]
    assert summary["matrices"] == 4 and summary["weights"] == 2 * (256 * 128 + 128 * 256)   # ffn.0 and ffn.2
    assert summary["positive"] > 0 and summary["positive_mass"] > 0
    assert 0 < result["outputs"]["6"]["cad_mask"][0]["selected"]
    from safetensors import safe_open
    saved = result["outputs"]["8"]["cad_saved"][0]["file"]
    with safe_open(os.path.join(video_server.base_dir, "models", "cad", saved), framework="pt") as f:
        import json
        meta = json.loads(f.metadata()["cad.meta"])
    assert len(meta["latent_shape"]) == 5 and meta["latent_shape"][:3] == [1, 48, 2]   # batch, channels, frames
    erased = latent_of(video_server, result, "erased")
    assert erased.shape == before.shape and erased.ndim == 5 and erased.shape[2] == 2
    assert torch.equal(before, after), "the original MODEL samples differently after CAD ran"
    assert not torch.equal(erased, before) and float((erased - before).abs().max()) > 0
    assert np.isfinite(erased.numpy()).all()

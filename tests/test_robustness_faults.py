"""Faults during CAD Attribute inside a real ComfyUI server: cancel (POST /interrupt) mid-run and a
model that produces NaN. The server must stay up, the base model must sample bit-identically to a
run that never saw CAD, a later attribution must give the same numbers as before the fault, and
memory must come back.

Uses its own server process, so "before any CAD node" really means before any CAD node ran there.
"""
import json
import os
import time

import numpy as np
import pytest

from conftest import running_server
from robustness_graphs import (ARTIFACTS, attribute_graph, attribute_node, image_pixels, sample_graph,
                               server_rss)

pytestmark = pytest.mark.server

# Bytes the server may keep after a cancelled attribution. Measured on 2 CPU cores: -15..+16 MB without a leak,
# +107 MB when one cancelled run's gradient sums and weight copies are kept (SCOPE below).
RSS_MARGIN = 80 * 2**20
NAN_UNET = "cad_nan_unet.safetensors"
CANCEL_AT_STEP = 3
# Every 2-D UNet weight of the test checkpoint: 13.4M weights, so one attribution's own state (fp32 gradient
# sums + fp32 weight copies) is ~107 MB, a leak the memory check can see.
SCOPE = "all_linear"


@pytest.fixture(scope="module")
def server(sd15_test_checkpoint):
    with running_server("server_faults", sd15_test_checkpoint) as srv:
        yield srv


@pytest.fixture(scope="module")
def baseline(server):
    """The plain model's image, sampled before any CAD node ran in this server process."""
    result = server.run(sample_graph(server.ckpt_name, latent_multiplier=1.0), timeout=300)
    assert result["status"] == "success", result["error"]
    return image_pixels(server, result["outputs"], "plain")


def run_ok(server, graph):
    result = server.run(graph, timeout=300)
    assert result["status"] == "success", f"{result['error']}\n{server.log_tail()}"
    return result


def attribution_numbers(result):
    s = result["outputs"]["5"]["cad_summary"][0]
    return {k: s[k] for k in ("weights", "positive", "negative", "positive_mass", "negative_mass")}, s["blocks"]


def test_cancel_mid_attribution(server, baseline):
    # A complete short attribution first: warms up autograd once and gives the numbers to compare with later.
    before = attribution_numbers(run_ok(server, attribute_graph(server.ckpt_name, latent_multiplier=2.0, scope=SCOPE)))
    rss_before = server_rss(server)

    progress, interrupted_at = [], []

    def cancel_mid_run(msg):  # a few steps in: gradients have been accumulated, the next backward is pending
        if msg["type"] == "progress" and msg["data"].get("node") == "5" and not interrupted_at:
            progress.append(msg["data"])
            if msg["data"]["value"] >= CANCEL_AT_STEP:
                interrupted_at.append(time.time())
                assert server.interrupt() == 200

    # 1000 steps: minutes if the cancel did not work
    long_run = attribute_graph(server.ckpt_name, latent_multiplier=3.0, steps=1000, scope=SCOPE)
    started = time.time()
    result = server.run(long_run, timeout=300, on_message=cancel_mid_run)
    finished = time.time()
    assert interrupted_at, f"CAD Attribute did not reach step {CANCEL_AT_STEP} before the prompt ended: {progress}"
    assert result["status"] == "interrupted", result["status"]
    stopped = [m["data"] for m in result["messages"] if m["type"] == "execution_interrupted"]
    assert stopped and stopped[0]["node_id"] == "5" and stopped[0]["node_type"] == "CADAttribute"
    assert progress[-1]["value"] < progress[-1]["max"] == 1000
    assert finished - interrupted_at[0] < 30, "the interrupt took effect late"
    assert server.proc.poll() is None, "the server died"

    # The next prompts run, the plain model samples bit-identically, attribution gives the same numbers.
    after_image = image_pixels(server, run_ok(server, sample_graph(server.ckpt_name, latent_multiplier=4.0))["outputs"],
                               "plain")
    assert np.array_equal(after_image, baseline)
    after = attribution_numbers(run_ok(server, attribute_graph(server.ckpt_name, latent_multiplier=5.0, scope=SCOPE)))
    assert after == before, "an attribution after the cancel differs: state leaked from the cancelled run"
    rss_after = server_rss(server)

    figures = {"rss_before_cancel_mb": round(rss_before / 2**20, 1), "rss_after_cancel_mb": round(rss_after / 2**20, 1),
               "delta_mb": round((rss_after - rss_before) / 2**20, 1), "margin_mb": RSS_MARGIN // 2**20,
               "cancelled_at_step": progress[-1]["value"], "prompt_seconds": round(finished - started, 2)}
    with open(os.path.join(ARTIFACTS, "robustness_cancel_memory.json"), "w") as f:
        json.dump(figures, f, indent=1)
    print(f"\ncancel memory: {figures}")
    assert rss_after - rss_before < RSS_MARGIN, figures
    assert "Processing interrupted" in server.log_text()


def write_nan_unet(checkpoint, path):
    """The test checkpoint's UNet alone, with one feed-forward weight entry set to NaN."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    prefix = "model.diffusion_model."
    with safe_open(checkpoint, framework="pt") as f:
        unet = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    unet["middle_block.1.transformer_blocks.0.ff.net.2.weight"][3, 7] = float("nan")
    save_file(unet, path)


def test_nan_inside_attribution_is_a_clear_error_and_leaves_nothing(server, baseline):
    folder = os.path.join(server.base_dir, "models", "diffusion_models")
    os.makedirs(folder, exist_ok=True)
    write_nan_unet(server.checkpoint, os.path.join(folder, NAN_UNET))
    graph = attribute_graph(server.ckpt_name, latent_multiplier=6.0)
    graph["1u"] = {"class_type": "UNETLoader", "inputs": {"unet_name": NAN_UNET, "weight_dtype": "default"}}
    graph["5"] = attribute_node(model=("1u", 0), latent=("4m", 0))
    result = server.run(graph, timeout=300)
    assert result["status"] == "error", result["status"]
    error = result["error"]
    assert error["node_id"] == "5" and error["exception_type"].endswith("CADError"), error["exception_type"]
    message = error["exception_message"]
    assert "nan" in message.lower() and "NaN/inf predictions" in message, message
    assert server.proc.poll() is None

    # The checkpoint's own model is untouched and still samples exactly as before any CAD node.
    image = image_pixels(server, run_ok(server, sample_graph(server.ckpt_name, latent_multiplier=7.0))["outputs"], "plain")
    assert np.array_equal(image, baseline)

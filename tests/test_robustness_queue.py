"""One loaded checkpoint shared by many branches and many queued prompts: each branch's output must be
exactly what that branch produces alone, whatever ran before it (no patch leaks between branches or
prompts). Real ComfyUI server, prompts queued back-to-back without waiting. The sampler's latents are
compared bit for bit (stricter than 8-bit pixels, and without a VAE decode per branch).
"""
import os
from itertools import combinations

import pytest
import torch

from cad_pack.cad_core import Mask, MaskInfo, save_mask

from robustness_graphs import attribute_node, saved_latent, server_model_fingerprint, with_branches

pytestmark = pytest.mark.server

FILE_MASK = "robustness_queue_mask.safetensors"
FF2 = "diffusion_model.{}.1.transformer_blocks.0.ff.net.2.weight"


def branches():
    """tag -> nodes ending in the MODEL that tag's KSampler samples (None: the checkpoint's own MODEL)."""
    def erase(tag, node, ratio, granularity, strength):
        return {f"{tag}_m": {"class_type": node, "inputs": {"attribution": ["5", 0], "ratio": ratio,
                                                            "granularity": granularity}},
                f"{tag}_a": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": [f"{tag}_m", 0],
                                                                      "strength": strength}}}
    return {
        "plain": None,
        "row": erase("row", "CADEraseMask", 0.01, "per_row", 1.0),
        "amplify": erase("amplify", "CADAmplifyMask", 0.02, "global", 0.5),
        "file": {"file_m": {"class_type": "CADLoadMask", "inputs": {"file": FILE_MASK, "model": ["1", 0]}},
                 "file_a": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": ["file_m", 0],
                                                                     "strength": 1.0}}},
    }


def graph_of(server, tags, latent_multiplier):
    every = branches()
    graph = with_branches(server.ckpt_name, {t: every[t] for t in tags}, latent_multiplier=latent_multiplier,
                          output="latent")
    if set(tags) & {"row", "amplify"}:  # the branches whose masks come from CAD Attribute
        graph["5"] = attribute_node(steps=2)
    return graph


def test_branches_and_queued_prompts_sharing_one_checkpoint_match_each_branch_alone(comfy_server):
    fingerprint = server_model_fingerprint(comfy_server)
    folder = os.path.join(comfy_server.base_dir, "models", "cad")
    keys = {FF2.format("middle_block"): (320, 1280), FF2.format("output_blocks.0"): (320, 1280)}
    save_mask(Mask({k: torch.arange(0, 320 * 1280, 3) for k in keys}, keys, fingerprint, MaskInfo(mode="erase")),
              os.path.join(folder, FILE_MASK))

    tags = list(branches())
    # the plain model's prompt comes right after a masked one: a patch left on the shared MODEL would show
    plan = [("all", tags, 1.0), ("alone", ["row"], 2.0), ("alone", ["plain"], 3.0), ("alone", ["amplify"], 4.0),
            ("alone", ["file"], 5.0)]
    queued = [(name, branch_tags, comfy_server.queue(graph_of(comfy_server, branch_tags, m)))
              for name, branch_tags, m in plan]  # back-to-back: the queue holds them all at once
    images = {}
    for name, branch_tags, prompt_id in queued:
        entry = comfy_server.wait(prompt_id, timeout=600)
        assert entry["status"]["status_str"] == "success", (name, entry["status"])
        for tag in branch_tags:
            images.setdefault(tag, []).append((name, saved_latent(comfy_server, entry["outputs"], tag)))

    for tag, seen in images.items():
        reference_name, reference = next((n, im) for n, im in seen if n == "alone")
        for name, image in seen:
            assert torch.equal(image, reference), f"branch {tag}: the {name} prompt differs from it alone"
    # and the masks really do different things, so equality above is not trivial
    first = {tag: seen[0][1] for tag, seen in images.items()}
    for a, b in combinations(first, 2):
        assert not torch.equal(first[a], first[b]), f"branches {a} and {b} gave the same latent"

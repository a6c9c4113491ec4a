"""API graphs and small helpers shared by the robustness tests (tests/test_robustness_*.py)."""
import io
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(REPO, "tests", ".artifacts")


def _clip_and_latent(loader="1", latent_multiplier=1.0):
    """Prompt encodings from the checkpoint's CLIP and a 64x64 latent.

    EmptyLatentImage is all zeros, so LatentMultiply(m) is an exact no-op for any m > 0; a new m gives
    the KSampler a new cache signature, so ComfyUI really samples again on the same loaded MODEL.
    """
    return {
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": [loader, 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": [loader, 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4m": {"class_type": "LatentMultiply", "inputs": {"samples": ["4", 0], "multiplier": float(latent_multiplier)}},
    }


def sample_branch(tag, model, loader="1", seed=0, steps=3, output="image"):
    """KSampler -> VAEDecode -> SaveImage on `model` (or KSampler -> SaveLatent: the sampler's exact output,
    without the VAE decode that dominates a CPU run), node ids prefixed with `tag`."""
    nodes = {f"{tag}_k": {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4m", 0],
        "seed": seed, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}}
    if output == "latent":
        nodes[f"{tag}_s"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{tag}_k", 0],
                                                                   "filename_prefix": f"robustness/{tag}"}}
        return nodes
    nodes[f"{tag}_d"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_k", 0], "vae": [loader, 2]}}
    nodes[f"{tag}_s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{tag}_d", 0],
                                                              "filename_prefix": f"robustness/{tag}"}}
    return nodes


def sample_graph(ckpt, latent_multiplier=1.0, tag="plain"):
    """A normal text-to-image prompt with no CAD node."""
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    graph.update(_clip_and_latent(latent_multiplier=latent_multiplier))
    graph.update(sample_branch(tag, ["1", 0]))
    return graph


def attribute_node(model=("1", 0), steps=3, seed=0, samples=1, scope="ff", latent=("4", 0), objective="concept_gap"):
    return {"class_type": "CADAttribute", "inputs": {
        "model": list(model), "positive": ["2", 0], "base": ["3", 0], "latent": list(latent),
        "objective": objective, "steps": steps, "guidance": 3.0, "seed": seed, "samples": samples,
        "scope": scope, "schedule": "single", "scope_regex": ""}}


def attribute_graph(ckpt, latent_multiplier=1.0, **attribute_kw):
    """Checkpoint -> CAD Attribute -> Save CAD Attribution (an output node, so the attribution runs)."""
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    graph.update(_clip_and_latent(latent_multiplier=latent_multiplier))
    graph["5"] = attribute_node(latent=("4m", 0), **attribute_kw)
    graph["6"] = {"class_type": "CADSaveAttribution", "inputs": {"attribution": ["5", 0],
                                                                 "filename_prefix": "robustness/attribution"}}
    return graph


def with_branches(ckpt, branches, latent_multiplier=1.0, output="image"):
    """One checkpoint loader shared by several KSampler branches.

    branches: {tag: None (the plain model) | dict of extra nodes whose last entry outputs the MODEL}.
    """
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    graph.update(_clip_and_latent(latent_multiplier=latent_multiplier))
    for tag, nodes in branches.items():
        if nodes is None:
            graph.update(sample_branch(tag, ["1", 0], output=output))
            continue
        graph.update(nodes)
        graph.update(sample_branch(tag, [list(nodes)[-1], 0], output=output))
    return graph


def server_model_fingerprint(server):
    """The test checkpoint's CAD fingerprint as the server computes it (a 1-step attribution, saved)."""
    cached = getattr(server, "_cad_fingerprint", None)
    if cached:
        return cached
    from safetensors import safe_open
    result = server.run(attribute_graph(server.ckpt_name, latent_multiplier=0.5, steps=1), timeout=300)
    assert result["status"] == "success", result["error"]
    saved = result["outputs"]["6"]["cad_saved"][0]["file"]
    with safe_open(os.path.join(server.base_dir, "models", "cad", saved), framework="pt") as f:
        server._cad_fingerprint = f.metadata()["cad.fingerprint"]
    return server._cad_fingerprint


def image_pixels(server, outputs, tag):
    """Decoded pixels of the image SaveImage `tag` wrote (PNG metadata holds the prompt, so bytes differ)."""
    from PIL import Image
    entry = outputs[f"{tag}_s"]["images"][0]
    raw = server.view(entry["filename"], entry["subfolder"], entry["type"])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def saved_latent(server, outputs, tag):
    """The latent SaveLatent `tag` wrote, read back from the server's output folder."""
    from safetensors.torch import load_file
    entry = outputs[f"{tag}_s"]["latents"][0]
    return load_file(os.path.join(server.base_dir, entry["type"], entry["subfolder"], entry["filename"]))["latent_tensor"]


def server_rss(server):
    """Resident memory of the ComfyUI server process, in bytes."""
    import psutil
    return psutil.Process(server.proc.pid).memory_info().rss


def snapshot_files(root, skip=()):
    """{relative path: (size, mtime_ns)} of every file under root; symlinks are recorded, never followed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skip]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.normpath(os.path.join(rel_dir, name))] = (st.st_size, st.st_mtime_ns)
    return found

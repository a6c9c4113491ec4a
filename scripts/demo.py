"""README demo: original vs. CAD-erased vs. CAD-amplified "a photo of a cat" on a real
ComfyUI server (CPU), using the random test checkpoint (so the images are noise-like; the
point is the pipeline, not the pictures).

Writes output/demo/{original,erase,amplify}.png, grid.png (labelled side by side) and
summary.json (the CAD nodes' UI outputs).    Run: make demo   (or .venv/bin/python scripts/demo.py)
"""
import argparse
import io
import json
import os
import sys
import time

from comfy_server import REPO, ComfyServer, reset_dir
from make_test_checkpoint import DEFAULT_PATH, make_sd15_test_checkpoint

OUT_DIR = os.path.join(REPO, "output", "demo")
STEPS = 8
# branch name -> SaveImage node id
SAVE_NODES = {"original": "12", "erase": "25", "amplify": "35"}
CAD_NODES = {"20": "CADAttribute (concept_gap)", "21": "CADEraseMask", "22": "ApplyCADMask (erase)",
             "30": "CADAttribute (concept_likelihood)", "31": "CADAmplifyMask", "32": "ApplyCADMask (amplify)"}


def build_graph(ckpt_name, concept="a photo of a cat", seed=0, size=64, ratio=0.01):
    def ksampler(model):
        return {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}

    def attribute(objective):
        return {"class_type": "CADAttribute", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "base": ["3", 0], "latent": ["4", 0],
            "objective": objective, "steps": STEPS, "guidance": 3.0, "seed": seed, "samples": 1,
            "scope": "ff", "schedule": "single"}}

    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": concept, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        # original
        "10": ksampler(["1", 0]),
        # erase: the components that carry the concept gap most (most positive alpha), ablated
        "20": attribute("concept_gap"),
        "21": {"class_type": "CADEraseMask", "inputs": {"attribution": ["20", 0], "ratio": ratio, "granularity": "per_row"}},
        "22": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": ["21", 0], "strength": 1.0}},
        "23": ksampler(["22", 0]),
        # amplify: the components that most suppress the concept likelihood (most negative alpha), ablated
        "30": attribute("concept_likelihood"),
        "31": {"class_type": "CADAmplifyMask", "inputs": {"attribution": ["30", 0], "ratio": ratio, "granularity": "per_row"}},
        "32": {"class_type": "ApplyCADMask", "inputs": {"model": ["1", 0], "mask": ["31", 0], "strength": 1.0}},
        "33": ksampler(["32", 0]),
    }
    # each branch: KSampler id n -> VAEDecode n+1 -> SaveImage n+2 (the ids in SAVE_NODES)
    for sampler_id, name in (("10", "original"), ("23", "erase"), ("33", "amplify")):
        dec_id, save_id = str(int(sampler_id) + 1), str(int(sampler_id) + 2)
        g[dec_id] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler_id, 0], "vae": ["1", 2]}}
        g[save_id] = {"class_type": "SaveImage", "inputs": {"images": [dec_id, 0], "filename_prefix": f"cad_demo/{name}"}}
        assert SAVE_NODES[name] == save_id
    return g


def make_grid(images, scale=4, label_h=24):
    """Images side by side, upscaled (nearest) so 64 px results are visible, label above each."""
    from PIL import Image, ImageDraw
    w = max(im.width for _, im in images) * scale
    h = max(im.height for _, im in images) * scale
    grid = Image.new("RGB", (w * len(images), h + label_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (label, im) in enumerate(images):
        grid.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (i * w, label_h))
        tw = draw.textlength(label)
        draw.text((i * w + (w - tw) / 2, 6), label, fill="black")
    return grid


def main():
    from PIL import Image
    ap = argparse.ArgumentParser(description="CAD demo on a real ComfyUI server (CPU)")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--concept", default="a photo of a cat")
    a = ap.parse_args()

    t0 = time.time()
    ckpt = make_sd15_test_checkpoint(DEFAULT_PATH)
    reset_dir(OUT_DIR)
    base = os.path.join(REPO, ".cache", "demo-server")
    reset_dir(base)
    with ComfyServer(base, checkpoint=ckpt, log_path=os.path.join(OUT_DIR, "server.log")) as srv:
        print(f"[demo] ComfyUI up on {srv.url} in {srv.startup_seconds:.1f}s (log: {srv.log_path})")
        graph = build_graph(srv.ckpt_name, concept=a.concept)
        t_run = time.time()
        try:
            result = srv.run(graph, timeout=a.timeout)
        except AssertionError as e:  # 400: e.g. the CAD nodes are not registered
            print(f"[demo] ComfyUI rejected the workflow:\n{e}\n--- server log tail ---\n{srv.log_tail()}")
            return 1
        run_s = time.time() - t_run
        if result["status"] != "success":
            print(f"[demo] workflow {result['status']}: {json.dumps(result['error'], indent=1)}\n{srv.log_tail()}")
            return 1
        images, paths = [], {}
        for name, node in SAVE_NODES.items():
            info = result["outputs"][node]["images"][0]
            im = Image.open(io.BytesIO(srv.view(info["filename"], info["subfolder"], info["type"])))
            paths[name] = os.path.join(OUT_DIR, f"{name}.png")
            im.save(paths[name])
            images.append((name, im))

    paths["grid"] = os.path.join(OUT_DIR, "grid.png")
    make_grid(images).save(paths["grid"])
    summary = {
        "prompt_id": result["prompt_id"], "concept": a.concept, "steps": STEPS,
        "run_seconds": round(run_s, 1), "total_seconds": round(time.time() - t0, 1),
        "images": {k: os.path.relpath(v, REPO) for k, v in paths.items()},
        "cad": {nid: {"node": label, "ui": result["outputs"].get(nid)} for nid, label in CAD_NODES.items()},
    }
    paths["summary"] = os.path.join(OUT_DIR, "summary.json")
    with open(paths["summary"], "w") as f:
        json.dump(summary, f, indent=2)
    print(f"[demo] workflow ran in {run_s:.1f}s, total {summary['total_seconds']}s")
    for name, p in paths.items():
        print(f"  {name:9s} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

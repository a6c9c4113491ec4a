"""README demo: the pack's main job on its embedded default, the CAD Demo Model.

Starts a real headless ComfyUI (CPU) with the pack, loads the shipped example workflow
(example_workflows/cad_demo_erase_amplify.json, UI format), converts it to API format with the
server's /object_info, runs it, and writes to output/demo/:
  grid.png       rows = prompts, columns = original / CAD-Erase / CAD-Amplify
  summary.md     shape and colour accuracy of every cell, scored by the toy world's scorers
  summary.json   the same numbers plus the CAD nodes' UI outputs
Run: make demo   (or .venv/bin/python -m scripts.demo)
"""
import argparse
import io
import json
import os
import sys
import time

import numpy as np

from scripts.comfy_server import REPO, ComfyServer, reset_dir
from scripts.pack_bootstrap import import_pack
from scripts.example_workflows import DEMO_BRANCHES as BRANCHES, DEMO_NAME
from scripts.make_example_workflows import workflow_path
from scripts.workflow_format import ui_to_api

OUT_DIR = os.path.join(REPO, "output", "demo")
UI_FILE = workflow_path(DEMO_NAME)
# The nodes whose summaries the report quotes, and which mask makes a branch (an unmasked model: "original").
SUMMARY_TYPES = ("CADAttribute", "CADEraseConcept", "CADEraseMask", "CADAmplifyMask")
BRANCH_OF_MASK = {"CADEraseMask": "erase", "CADAmplifyMask": "amplify"}


def nodes_of_type(graph: dict, *class_types: str) -> list:
    """Ids of the graph's nodes of these types, in id order."""
    return [nid for nid in sorted(graph, key=int) if graph[nid]["class_type"] in class_types]


def upstream(graph: dict, node_id: str, input_name: str) -> str:
    """Id of the node feeding `input_name` of `node_id`."""
    return str(graph[node_id]["inputs"][input_name][0])


def prompt_text(graph: dict, node_id: str, conditioning: str = "positive") -> str:
    """The text of the CLIP Text Encode feeding `node_id` (through a VAE Decode and a KSampler for a
    Save Image), read from the graph that runs, so labels and scores follow the workflow file."""
    follow = {"SaveImage": "images", "VAEDecode": "samples"}
    while graph[node_id]["class_type"] != "CLIPTextEncode":
        node_id = upstream(graph, node_id, follow.get(graph[node_id]["class_type"], conditioning))
    return graph[node_id]["inputs"]["text"]


def branch_of(graph: dict, save_id: str) -> str:
    """The branch a Save Image shows: which edit the model of its KSampler (through a VAE Decode) carries."""
    model = upstream(graph, upstream(graph, upstream(graph, save_id, "images"), "samples"), "model")
    if graph[model]["class_type"] == "CADEraseConcept":
        return "erase_concept"
    if graph[model]["class_type"] != "ApplyCADMask":
        return "original"
    return BRANCH_OF_MASK[graph[upstream(graph, model, "mask")]["class_type"]]


def save_nodes_of(graph: dict) -> dict:
    """{(prompt, branch): Save Image id}, in id order, read from the graph that runs."""
    return {(prompt_text(graph, nid), branch_of(graph, nid)): nid for nid in nodes_of_type(graph, "SaveImage")}


def cell_scores(images, prompt):
    """Shape and colour accuracy of one cell's images for the shape and colour its prompt names."""
    import torch
    import_pack(cpu=True)  # the toy world's scorers live in the pack (nodes/toyworld)
    from cad_pack.nodes.toyworld.scorers import classify_colours, classify_shapes, load_shape_classifier
    from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES
    colour, shape = prompt.split()[1:3]
    x = torch.from_numpy(np.stack([np.asarray(im.resize((32, 32)), dtype=np.float32) / 255 for im in images]))
    x = x.permute(0, 3, 1, 2)
    classifier = load_shape_classifier()
    return {"shape": float((classify_shapes(classifier, x) == SHAPES.index(shape)).float().mean()),
            "colour": float((classify_colours(x) == COLOUR_NAMES.index(colour)).float().mean())}


def make_grid(cells, prompts, target, scale=2, label_w=130, label_h=22):
    """cells[(prompt, branch)] = list of PIL images; one row per prompt, one column per branch."""
    from PIL import Image, ImageDraw
    first = cells[(prompts[0], BRANCHES[0])][0]
    w, h = first.width * scale, first.height * scale
    n = len(cells[(prompts[0], BRANCHES[0])])
    col_w = n * w + 8
    grid = Image.new("RGB", (label_w + col_w * len(BRANCHES), label_h + h * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for b, branch in enumerate(BRANCHES):
        title = {"original": "original", "erase_concept": f"CAD Erase Concept '{target}'",
                 "erase": f"CAD Erase Mask '{target}'", "amplify": "CAD-Amplify (after the mask)"}[branch]
        draw.text((label_w + b * col_w + 4, 5), title, fill="black")
    for p, prompt in enumerate(prompts):
        draw.text((6, label_h + p * h + h // 2 - 6), prompt, fill="black")
        for b, branch in enumerate(BRANCHES):
            for i, im in enumerate(cells[(prompt, branch)]):
                grid.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (label_w + b * col_w + i * w, label_h + p * h))
    return grid


def main():
    from PIL import Image
    ap = argparse.ArgumentParser(description="CAD demo on a real ComfyUI server (CPU)")
    ap.add_argument("--timeout", type=int, default=600)
    a = ap.parse_args()

    t0 = time.time()
    reset_dir(OUT_DIR)
    base = os.path.join(REPO, ".cache", "demo-server")
    reset_dir(base)
    with open(UI_FILE) as f:
        ui_workflow = json.load(f)
    with ComfyServer(base, log_path=os.path.join(OUT_DIR, "server.log")) as srv:
        print(f"[demo] ComfyUI up on {srv.url} in {srv.startup_seconds:.1f}s")
        graph = ui_to_api(ui_workflow, srv.object_info())
        save_nodes = save_nodes_of(graph)
        prompts = list(dict.fromkeys(prompt for prompt, _ in save_nodes))
        erase_attribute = upstream(graph, nodes_of_type(graph, "CADEraseMask")[0], "attribution")
        target = prompt_text(graph, erase_attribute).removeprefix("a ")
        cad_nodes = nodes_of_type(graph, *SUMMARY_TYPES)
        t_run = time.time()
        try:
            result = srv.run(graph, timeout=a.timeout)
        except AssertionError as e:  # 400: the workflow failed validation
            print(f"[demo] ComfyUI rejected the workflow:\n{e}\n--- server log tail ---\n{srv.log_tail()}")
            return 1
        run_s = time.time() - t_run
        if result["status"] != "success":
            print(f"[demo] workflow {result['status']}: {json.dumps(result['error'], indent=1)}\n{srv.log_tail()}")
            return 1
        cells = {}
        for (prompt, branch), node in save_nodes.items():
            cells[(prompt, branch)] = [
                Image.open(io.BytesIO(srv.view(i["filename"], i["subfolder"], i["type"]))).convert("RGB")
                for i in result["outputs"][node]["images"]]

    make_grid(cells, prompts, target).save(os.path.join(OUT_DIR, "grid.png"))
    scores = {f"{prompt} | {branch}": cell_scores(ims, prompt) for (prompt, branch), ims in cells.items()}
    lines = ["| prompt | " + " | ".join(BRANCHES) + " |", "|---" * (len(BRANCHES) + 1) + "|"]
    for prompt in prompts:
        row = [f"shape {scores[f'{prompt} | {b}']['shape']:.2f}, colour {scores[f'{prompt} | {b}']['colour']:.2f}"
               for b in BRANCHES]
        lines.append(f"| {prompt} | " + " | ".join(row) + " |")
    texts = {nid: (result["outputs"].get(nid, {}).get("text") or [""])[0] for nid in cad_nodes}
    report = "\n".join(["# CAD demo", "", f"Workflow: {os.path.relpath(UI_FILE, REPO)}; run {run_s:.1f}s.", "",
                        *lines, "", "```", *texts.values(), "```", ""])
    with open(os.path.join(OUT_DIR, "summary.md"), "w") as f:
        f.write(report)
    with open(os.path.join(OUT_DIR, "summary.json"), "w") as f:
        json.dump({"scores": scores, "run_seconds": round(run_s, 1), "total_seconds": round(time.time() - t0, 1),
                   "cad": {nid: result["outputs"].get(nid) for nid in cad_nodes}}, f, indent=1)
    print(report)
    print(f"[demo] total {time.time() - t0:.1f}s; wrote {os.path.relpath(OUT_DIR, REPO)}/grid.png, summary.md, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

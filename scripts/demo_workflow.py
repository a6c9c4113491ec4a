"""The demo workflow on the CAD Demo Model: original vs CAD-Erase vs CAD-Amplify, for a few prompts.

    .venv/bin/python scripts/demo_workflow.py     # rewrite example_workflows/cad_demo_erase_amplify.json

Erase: attribute 'a <shape>' against the empty prompt (concept_gap), ablate the top positive components.
Amplify: on the erased model, attribute the likelihood of pictures of the shape (sampled from the
original model with an ordinary KSampler and passed in as concept_latent), ablate the most negative
components on top, which brings the shape back. Everything is ordinary ComfyUI nodes plus the pack's.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
UI_FILE = os.path.join(REPO, "example_workflows", "cad_demo_erase_amplify.json")

TARGET = "cross"
PROMPTS = ("a red cross", "a blue cross", "a green circle", "a yellow triangle")
BRANCHES = ("original", "erase", "amplify")
ERASE_RATIO, AMPLIFY_RATIO, STEPS, IMAGES = 0.05, 0.05, 20, 4
NOTE = (f"# CAD demo: erase, then amplify back\nCAD Attribute (erase) scores the toy model's feed-forward "
        f"weights for 'a {TARGET}' against the empty prompt; CAD Erase Mask + Apply CAD Mask remove the top "
        f"{ERASE_RATIO:.0%} per row. CAD Attribute (amplify) then measures, on the erased model, how well it "
        f"denoises pictures of a {TARGET} drawn by the original model; ablating the most negative components "
        f"brings the shape back. Each prompt is sampled with the original, erased and amplified models "
        f"(`make demo` scores every image).")


def build_api_graph(target=TARGET, prompts=PROMPTS, erase_ratio=ERASE_RATIO, amplify_ratio=AMPLIFY_RATIO):
    g = {}

    def node(nid, class_type, title=None, **inputs):
        g[str(nid)] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or class_type}}
        return [str(nid), 0]

    model = node(1, "CADDemoModel", "CAD Demo Model")
    clip = [model[0], 1]
    vae = [model[0], 2]
    empty = node(2, "CLIPTextEncode", "base: empty prompt", text="", clip=clip)
    concept = node(3, "CLIPTextEncode", f"concept: a {target}", text=f"a {target}", clip=clip)
    one = node(4, "EmptyLatentImage", "attribution size", width=64, height=64, batch_size=1)
    many = node(5, "EmptyLatentImage", "images per prompt", width=64, height=64, batch_size=IMAGES)
    gap = node(10, "CADAttribute", "CAD Attribute (erase)", model=model, positive=concept, base=empty, latent=one,
               objective="concept_gap", steps=STEPS, guidance=3.0, seed=0, samples=2, scope="ff",
               schedule="single", scope_regex="")
    erase_mask = node(11, "CADEraseMask", "CAD Erase Mask", attribution=gap, ratio=erase_ratio, granularity="per_row")
    erased = node(12, "ApplyCADMask", "Apply CAD Mask (erase)", model=model, mask=erase_mask, strength=1.0)
    pictures = node(20, "KSampler", f"pictures of a {target} (original model)", model=model, positive=concept,
                    negative=empty, latent_image=many, seed=1, steps=STEPS, cfg=3.0, sampler_name="euler",
                    scheduler="normal", denoise=1.0)
    lik = node(21, "CADAttribute", "CAD Attribute (amplify)", model=erased, positive=concept, base=empty, latent=one,
               objective="concept_likelihood", steps=STEPS, guidance=3.0, seed=0, samples=IMAGES, scope="ff",
               schedule="single", scope_regex="", concept_latent=pictures)
    amp_mask = node(22, "CADAmplifyMask", "CAD Amplify Mask", attribution=lik, ratio=amplify_ratio,
                    granularity="per_row")
    amplified = node(23, "ApplyCADMask", "Apply CAD Mask (amplify)", model=erased, mask=amp_mask, strength=1.0)
    models = {"original": model, "erase": erased, "amplify": amplified}
    save_nodes = {}
    for p, text in enumerate(prompts):
        cond = node(100 + 10 * p, "CLIPTextEncode", text, text=text, clip=clip)
        for b, branch in enumerate(BRANCHES):
            sampled = node(101 + 10 * p + 3 * b, "KSampler", f"{branch}: {text}", model=models[branch],
                           positive=cond, negative=empty, latent_image=many, seed=100 + p, steps=STEPS, cfg=3.0,
                           sampler_name="euler", scheduler="normal", denoise=1.0)
            image = node(102 + 10 * p + 3 * b, "VAEDecode", samples=sampled, vae=vae)
            save = node(103 + 10 * p + 3 * b, "SaveImage", images=image,
                        filename_prefix=f"cad_demo/{branch}_{text.replace(' ', '_')}")
            save_nodes[(text, branch)] = save[0]
    return g, save_nodes


def write_ui_workflow(object_info: dict, path: str = UI_FILE) -> dict:
    sys.path.insert(0, HERE)
    from workflow_format import add_note, api_to_ui
    graph, _ = build_api_graph()
    ui = add_note(api_to_ui(graph, object_info), NOTE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(ui, f, indent=1)
    return ui


def main():
    sys.path.insert(0, HERE)
    from comfy_server import ComfyServer, reset_dir
    base = os.path.join(REPO, ".cache", "workflow-server")
    reset_dir(base)
    with ComfyServer(base) as srv:
        write_ui_workflow(srv.object_info())
    print(f"wrote {os.path.relpath(UI_FILE, REPO)}")


if __name__ == "__main__":
    main()

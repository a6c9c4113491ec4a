"""The example workflows shipped in example_workflows/ (ComfyUI's template browser lists them under
"comfyui-cad"), as API graphs on the embedded CAD Demo Model.

Each builder returns an `Example`: the API graph, which nodes show the comparison images (for the
thumbnail and the tests), and a note shown on the canvas. scripts/make_example_workflows.py writes them
in UI format, with a thumbnail from their real output.

The demo's workflow (`make demo` runs the shipped cad_demo_erase_amplify.json) is built here too, by
demo_graph(), with the same pieces: 64x64 latents, 20 steps, CFG 3, per_row selection; each workflow
runs in seconds on two CPU cores.
"""
from dataclasses import dataclass, field

STEPS, CFG, IMAGES = 20, 3.0, 4
ERASE_RATIO, AMPLIFY_RATIO = 0.05, 0.01
TARGET = "cross"
# cad_3: CAD Erase Concept with typed prompts (benchmarks/results/erase_vs_peers.md): the square erased in every
# colour, the other shapes kept; the attribution over every linear layer locates the weights to edit
SELECTIVE_TARGET = "square"
SHAPE_NAMES = ("circle", "square", "triangle", "cross")
COLOUR_NAMES = ("red", "green", "blue", "yellow")
SAVED_PREFIX = "examples/toy_cross"
# What Save CAD Attribution writes the first time into an empty models/cad/, and Load then reads.
SAVED_FILE = SAVED_PREFIX + "_00001_.safetensors"
# What Save CAD Mask as LoRA writes the first time into an empty models/loras/, and LoraLoaderModelOnly then reads.
LORA_PREFIX = "cad_examples/toy_cross_erase"
LORA_FILE = LORA_PREFIX + "_00001_.safetensors"
# The demo: erase the target, amplify it back, each prompt sampled with every branch's model and saved.
DEMO_NAME = "cad_demo_erase_amplify"
DEMO_PROMPTS = ("a red cross", "a blue cross", "a green circle", "a yellow triangle")
DEMO_BRANCHES = ("original", "erase_concept", "erase", "amplify")
DEMO_AMPLIFY_RATIO = 0.05
DEMO_NOTE = (f"# CAD demo: erase one shape two ways, then amplify back\nCAD Erase Concept erases the typed "
             f"'a <colour> {TARGET}' prompts and keeps the other shapes' prompts where CAD Attribute (all linear) "
             f"locates 'a {TARGET}': the cross-attention K/V in closed form and, in robust mode, the image-pathway "
             f"weights trained against an attacker: the pack's selective erase. CAD Attribute (erase) "
             f"scores the feed-forward weights for 'a {TARGET}' against the empty prompt; CAD Erase Mask + Apply CAD "
             f"Mask zero the top {ERASE_RATIO:.0%} per row (the paper's ablation). CAD Attribute (amplify) then "
             f"measures, on that zeroed model, how well it denoises pictures of a {TARGET} drawn by the original "
             f"model; ablating the most negative components brings the shape back. Each prompt is sampled with every "
             f"model (`make demo` scores every image).")


@dataclass
class Example:
    name: str
    graph: dict
    note: str
    # (row label, id of a Preview/Save Image node): the images the thumbnail shows, top to bottom
    image_rows: list = field(default_factory=list)


class GraphBuilder:
    """Numbered API-graph nodes; `add` returns the link to the node's first output."""

    def __init__(self):
        self.graph = {}

    def add(self, nid, class_type, title=None, **inputs):
        self.graph[str(nid)] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title or class_type}}
        return [str(nid), 0]


def _toy_model(g, latent_ids=(3, 4)):
    """The demo model, the empty base prompt and the two latent sizes every example uses."""
    model = g.add(1, "CADDemoModel", "CAD Demo Model")
    clip, vae = [model[0], 1], [model[0], 2]
    empty = g.add(2, "CLIPTextEncode", "base: empty prompt", text="", clip=clip)
    one = g.add(latent_ids[0], "EmptyLatentImage", "attribution size", width=64, height=64, batch_size=1)
    many = g.add(latent_ids[1], "EmptyLatentImage", "images per prompt", width=64, height=64, batch_size=IMAGES)
    return model, clip, vae, empty, one, many


def _concept(g, nid, clip, text):
    return g.add(nid, "CLIPTextEncode", f"concept: {text}", text=text, clip=clip)


def _attribute(g, nid, model, concept, empty, latent, title, objective="concept_gap", samples=2, scope="ff",
               scope_regex="", **extra):
    return g.add(nid, "CADAttribute", title, model=model, positive=concept, base=empty, latent=latent,
                 objective=objective, steps=STEPS, guidance=CFG, seed=0, samples=samples, scope=scope,
                 schedule="single", scope_regex=scope_regex, **extra)


def _mask_and_apply(g, nid, kind, model, attribution, ratio, title, apply_title="Apply CAD Mask",
                    granularity="per_row", **extra):
    """CAD Erase/Amplify Mask (`kind`) at nid and Apply CAD Mask at nid+1; returns (mask, edited model)."""
    mask = g.add(nid, kind, title, attribution=attribution, ratio=ratio, granularity=granularity, **extra)
    return mask, g.add(nid + 1, "ApplyCADMask", apply_title, model=model, mask=mask, strength=1.0)


def _map(g, attribution, mask):
    """CAD Attribution Map (which blocks carry the concept, and what the mask takes) into a Preview Image."""
    picture = g.add(15, "CADAttributionMap", "CAD Attribution Map", attribution=attribution, mask=mask,
                    width=768, height=384)
    g.add(16, "PreviewImage", "attribution map (image)", images=picture)


def _ksampler(g, nid, title, model, cond, empty, latent, seed):
    return g.add(nid, "KSampler", title, model=model, positive=cond, negative=empty, latent_image=latent,
                 seed=seed, steps=STEPS, cfg=CFG, sampler_name="euler", scheduler="normal", denoise=1.0)


def _sample_and_show(g, nid, model, cond, empty, latent, vae, title, seed, save_prefix=None):
    """KSampler -> VAE Decode -> Preview Image (Save Image under `save_prefix` if given) at nid, nid+1, nid+2;
    returns the last one's id."""
    image = g.add(nid + 1, "VAEDecode", samples=_ksampler(g, nid, title, model, cond, empty, latent, seed), vae=vae)
    if save_prefix is None:
        g.add(nid + 2, "PreviewImage", f"{title} (images)", images=image)
    else:
        g.add(nid + 2, "SaveImage", images=image, filename_prefix=save_prefix)
    return str(nid + 2)


def _compare(g, nid, models, prompts, clip, empty, latent, vae, stride=20, prompt_title="prompt: {}",
             save_folder=None):
    """Each prompt sampled with each (label, model), same seed per prompt; returns the image rows.
    With `save_folder` the images are saved as <save_folder>/<label>_<prompt>, else previewed."""
    rows = []
    for p, text in enumerate(prompts):
        cond = g.add(nid + stride * p, "CLIPTextEncode", prompt_title.format(text), text=text, clip=clip)
        for m, (label, model) in enumerate(models):
            title = f"{label}: {text}"
            prefix = f"{save_folder}/{label}_{text.replace(' ', '_')}" if save_folder else None
            rows.append((title, _sample_and_show(g, nid + stride * p + 1 + 3 * m, model, cond, empty, latent, vae,
                                                 title, seed=100 + p, save_prefix=prefix)))
    return rows


def _red_shape(g, clip, shape, nid):
    """'a red <shape>', to be scored against _colour_base ('a red'): the scores then single out the shape,
    not the colour (on the toy model this erases far more selectively than 'a <shape>' against '')."""
    return _concept(g, nid, clip, f"a red {shape}")


def _colour_base(g, clip):
    return g.add(7, "CLIPTextEncode", "base: a red", text="a red", clip=clip)


def _red_target_attribution(g, model, clip, one):
    """CAD Attribute (node 10) of 'a red <TARGET>' (node 5) against 'a red' (node 7)."""
    concept, base = _red_shape(g, clip, TARGET, 5), _colour_base(g, clip)
    return _attribute(g, 10, model, concept, base, one, f"CAD Attribute: a red {TARGET} vs a red")


def _original_vs_erased(g, model, erased, clip, empty, many, vae, *prompts):
    """_compare of the original and the erased model (default prompt: 'a red <TARGET>')."""
    return _compare(g, 100, [("original", model), ("erased", erased)], list(prompts or [f"a red {TARGET}"]), clip,
                    empty, many, vae)


def _erase(g, model, attribution, protect=None, title="CAD Erase Mask"):
    extra = {"protect": protect} if protect else {}
    mask, erased = _mask_and_apply(g, 11, "CADEraseMask", model, attribution, ERASE_RATIO, title, **extra)
    _map(g, attribution, mask)
    return erased


def erase_a_concept():
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g)
    attribution = _red_target_attribution(g, model, clip, one)
    erased = _erase(g, model, attribution)
    rows = _original_vs_erased(g, model, erased, clip, empty, many, vae, f"a red {TARGET}", "a green circle")
    note = (f"# Erase a concept\nCAD Attribute scores every feed-forward weight of the toy model for 'a red "
            f"{TARGET}' against 'a red', so the scores single out the shape rather than the colour (positive = "
            f"carries it). CAD Erase Mask picks the top {ERASE_RATIO:.0%} of each row, Apply CAD Mask zeroes them "
            f"in a copy of the model, and each prompt is sampled with both models from the same seed. The circle "
            f"shows what the edit leaves alone. After a run the CAD nodes chart their scores per block; CAD Attribution Map draws the same chart as an image, with the "
            f"share of each block the mask takes.")
    return Example("cad_1_erase_a_concept", g.graph, note, rows)


def amplify_a_concept():
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g)
    concept = _concept(g, 5, clip, f"a {TARGET}")
    pictures = _ksampler(g, 6, f"pictures of a {TARGET}", model, concept, empty, many, seed=1)
    attribution = _attribute(g, 10, model, concept, empty, one, f"CAD Attribute: likelihood of a {TARGET}",
                             objective="concept_likelihood", concept_latent=pictures)
    mask, amplified = _mask_and_apply(g, 11, "CADAmplifyMask", model, attribution, AMPLIFY_RATIO, "CAD Amplify Mask")
    _map(g, attribution, mask)
    rows = _compare(g, 100, [("original", model), ("amplified", amplified)], [f"a green {TARGET}"], clip, empty,
                    many, vae)
    note = (f"# Amplify a concept\nWith objective concept_likelihood, CAD Attribute measures how well the model "
            f"denoises pictures of a {TARGET} (here its own samples, wired into concept_latent). Negative scores "
            f"work against the concept: CAD Amplify Mask selects the most negative ones and Apply CAD Mask "
            f"removes them. The toy model already draws this shape well, so the change here is small (larger ratios "
            f"start to damage the pictures); amplifying shows best as a repair after an erase "
            f"(cad_demo_erase_amplify).")
    return Example("cad_2_amplify_a_concept", g.graph, note, rows)


def erase_concept_widgets() -> dict:
    """CAD Erase Concept's widgets as a workflow sets them: the node's own defaults (cad_core.EraseSettings)."""
    from cad_core.erase_settings import erase_default   # the engine alone: pure torch, no ComfyUI needed
    return {name: erase_default(name) for name in ("mode", "train_steps", "overshoot", "preserve", "text_rows",
                                                   "mass_share")} | {"strength": 1.0}


def typed_prompts(target):
    """CAD Erase Concept's typed prompts for erasing a shape of the toy world: 'a <colour> <shape>' guided to
    'a <colour>' and 'a <shape>' to the empty prompt (the guide's blank last line), every other shape kept."""
    kept = [s for s in SHAPE_NAMES if s != target]
    return {"erase": "\n".join([*(f"a {c} {target}" for c in COLOUR_NAMES), f"a {target}"]),
            "guide": "\n".join([*(f"a {c}" for c in COLOUR_NAMES), ""]),
            "keep": "\n".join([*(f"a {c} {s}" for s in kept for c in COLOUR_NAMES), *(f"a {s}" for s in kept)])}


def erase_while_protecting():
    """The common job in one short graph: type what to erase and what to keep."""
    g = GraphBuilder()
    model = g.add(1, "CADDemoModel", "CAD Demo Model")
    clip, vae = [model[0], 1], [model[0], 2]
    empty = g.add(2, "CLIPTextEncode", "base: empty prompt", text="", clip=clip)
    latent = g.add(3, "EmptyLatentImage", "latent (CAD Attribute uses its size only)", width=64, height=64,
                   batch_size=IMAGES)
    concept = _concept(g, 4, clip, f"a {SELECTIVE_TARGET}")
    attribution = _attribute(g, 5, model, concept, empty, latent, f"CAD Attribute: where 'a {SELECTIVE_TARGET}' "
                             f"lives (every linear layer)", samples=1, scope="all_linear")
    erased = g.add(6, "CADEraseConcept", f"CAD Erase Concept: {SELECTIVE_TARGET}", model=model, clip=clip,
                   attribution=attribution, **typed_prompts(SELECTIVE_TARGET), **erase_concept_widgets())
    rows = []
    for nid, cond, text, role in ((7, concept, f"a {SELECTIVE_TARGET}", "erased"), (10, None, "a circle", "kept")):
        cond = cond or g.add(nid + 3, "CLIPTextEncode", f"prompt: {text}", text=text, clip=clip)
        title = f"{role}: {text}"
        rows.append((title, _sample_and_show(g, nid, erased, cond, empty, latent, vae, title, seed=100)))
    note = (f"# Erase one shape, keep the others\nType the prompts to erase and the ones to keep into CAD Erase "
            f"Concept. CAD Attribute scores every linear layer for 'a {SELECTIVE_TARGET}' against the empty prompt. "
            f"CAD Erase Concept solves the cross-attention K/V matrices that hold 95% of that score so that each "
            f"'a <colour> {SELECTIVE_TARGET}' acts like 'a <colour>' while every kept prompt acts as before, and "
            f"(mode robust) fine-tunes the image-pathway weights CAD locates against an attacker that keeps looking "
            f"for an embedding that brings the {SELECTIVE_TARGET} back. The {SELECTIVE_TARGET} goes, the circle "
            f"stays (benchmarks/results/erase_vs_peers.md compares this with UCE, RECE, ESD and SalUn, under "
            f"attack).")
    return Example("cad_3_erase_while_protecting", g.graph, note, rows)


def save_attribution():
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g)
    attribution = _red_target_attribution(g, model, clip, one)
    g.add(14, "CADSaveAttribution", "Save CAD Attribution", attribution=attribution, filename_prefix=SAVED_PREFIX)
    erased = _erase(g, model, attribution)
    rows = _original_vs_erased(g, model, erased, clip, empty, many, vae)
    note = (f"# Save an attribution (step 1 of 2)\nAttributing costs a backward pass per step; Save CAD "
            f"Attribution keeps the scores in models/cad/{SAVED_PREFIX}_NNNNN_.safetensors, with a fingerprint "
            f"of the model, so other workflows can reuse them. Run this, then open cad_4b_load_attribution.")
    return Example("cad_4a_save_attribution", g.graph, note, rows)


def load_attribution():
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g)
    attribution = g.add(10, "CADLoadAttribution", "Load CAD Attribution", file=SAVED_FILE, model=model)
    erased = _erase(g, model, attribution)
    rows = _original_vs_erased(g, model, erased, clip, empty, many, vae)
    note = (f"# Load an attribution (step 2 of 2)\nRun cad_4a_save_attribution first: it writes "
            f"models/cad/{SAVED_FILE} (press R afterwards to refresh the file list). Load CAD Attribution reads "
            f"it without recomputing and, with the model connected, refuses a file made for another model. The "
            f"erased images match step 1's: same scores, same mask, same seed.")
    return Example("cad_4b_load_attribution", g.graph, note, rows)


def export_lora():
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g)
    attribution = _red_target_attribution(g, model, clip, one)
    erased = _erase(g, model, attribution)
    g.add(17, "CADSaveMaskAsLoRA", "Save CAD Mask as LoRA", model=model, mask=["11", 0], filename_prefix=LORA_PREFIX)
    rows = _original_vs_erased(g, model, erased, clip, empty, many, vae)
    note = (f"# Export the erase as a LoRA (step 1 of 2)\nSave CAD Mask as LoRA writes the mask's edit to "
            f"models/loras/{LORA_PREFIX}_NNNNN_.safetensors: for each matrix the mask touches, a full 'diff' that "
            f"is minus the weight on the masked entries. Any LoRA loader then applies the erase without the CAD "
            f"nodes. Run this, then open cad_5b_load_lora.")
    return Example("cad_5a_export_lora", g.graph, note, rows)


def load_lora():
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g)
    erased = g.add(10, "LoraLoaderModelOnly", "Load LoRA (core)", model=model, lora_name=LORA_FILE,
                   strength_model=1.0)
    rows = _original_vs_erased(g, model, erased, clip, empty, many, vae)
    note = (f"# Load the exported erase with core's LoRA loader (step 2 of 2)\nRun cad_5a_export_lora first: it "
            f"writes models/loras/{LORA_FILE} (press R afterwards to refresh the file list). LoraLoaderModelOnly "
            f"at strength_model 1 gives exactly the weights Apply CAD Mask gave, so the erased images match step "
            f"1's pixel for pixel; strength_model 0.5 halves the masked weights, like Apply CAD Mask's strength.")
    return Example("cad_5b_load_lora", g.graph, note, rows)


def demo_graph(target=TARGET, prompts=DEMO_PROMPTS, erase_ratio=ERASE_RATIO, amplify_ratio=DEMO_AMPLIFY_RATIO):
    """`make demo`'s API graph and its Save Image nodes, {(prompt, branch): id}: erase the target with CAD Erase
    Concept (typed prompts, the other shapes kept) and by zeroing ('a <target>' against the empty prompt), then
    amplify it back on the zeroed model from the likelihood of the original model's pictures of it; every prompt
    sampled with each branch's model (DEMO_BRANCHES) and saved."""
    g = GraphBuilder()
    model, clip, vae, empty, one, many = _toy_model(g, latent_ids=(4, 5))
    concept = _concept(g, 3, clip, f"a {target}")
    gap = _attribute(g, 10, model, concept, empty, one, "CAD Attribute (erase)")
    _, erased = _mask_and_apply(g, 11, "CADEraseMask", model, gap, erase_ratio, "CAD Erase Mask",
                                "Apply CAD Mask (erase)")
    pictures = _ksampler(g, 20, f"pictures of a {target} (original model)", model, concept, empty, many, seed=1)
    lik = _attribute(g, 21, erased, concept, empty, one, "CAD Attribute (amplify)", objective="concept_likelihood",
                     samples=IMAGES, concept_latent=pictures)
    _, amplified = _mask_and_apply(g, 22, "CADAmplifyMask", erased, lik, amplify_ratio, "CAD Amplify Mask",
                                   "Apply CAD Mask (amplify)")
    located = _attribute(g, 30, model, concept, empty, one, f"CAD Attribute (all linear): where 'a {target}' lives",
                         samples=1, scope="all_linear")
    concept_erased = g.add(31, "CADEraseConcept", f"CAD Erase Concept: {target}", model=model, clip=clip,
                           attribution=located, **typed_prompts(target), **erase_concept_widgets())
    models = dict(zip(DEMO_BRANCHES, (model, concept_erased, erased, amplified)))
    rows = _compare(g, 100, [(branch, models[branch]) for branch in DEMO_BRANCHES], prompts, clip, empty, many, vae,
                    stride=13, prompt_title="{}", save_folder="cad_demo")
    cells = [(text, branch) for text in prompts for branch in DEMO_BRANCHES]  # the order _compare adds them in
    return g.graph, {cell: nid for cell, (_, nid) in zip(cells, rows)}


def demo_erase_amplify():
    """`make demo`'s workflow: original vs erased vs amplified, four prompts; the thumbnail shows the first."""
    graph, save_nodes = demo_graph()
    rows = [(branch, save_nodes[(DEMO_PROMPTS[0], branch)]) for branch in DEMO_BRANCHES]
    return Example(DEMO_NAME, graph, DEMO_NOTE, rows)


BUILDERS = (erase_a_concept, amplify_a_concept, erase_while_protecting, save_attribution, load_attribution,
            export_lora, load_lora, demo_erase_amplify)


def all_examples():
    return [build() for build in BUILDERS]

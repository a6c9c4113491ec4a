"""CAD Erase Concept and Save CAD Edit as LoRA: the closed-form edit on the K/V matrices CAD locates, through the
nodes. On the toy world it must erase a shape and keep the others (typed prompts, the node's defaults); on the
reduced SD1.5 / SDXL models it patches a clone only (the original samples bit-identically, unpatching restores
the weights bit for bit), scales with strength, stacks on a LoRA, and its LoRA file gives the same weights through
core's LoraLoaderModelOnly; what it cannot do is refused with a message that says why."""
import hashlib

import pytest
import torch

from cad_pack.cad_core import AttributionRequest, CADError
from cad_pack.nodes.bridge import attribute_model, patchable_weights
from cad_pack.nodes.bridge.edits import KV_REGEX, text_kv_keys
from cad_pack.nodes.erase_concept_node import CADEraseConcept, paired_guides

from scripts.family_models import CTX, build, conditioning, empty_latent, loaded_weight
from tiny_models import assert_untouched
from tiny_models import sample as sample_tiny


class RowsClip:
    """Stands in for a checkpoint's CLIP on the reduced models: each prompt gets its own fixed rows of the model's
    text width (the toy-world test below goes through a real CLIP)."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return [[torch.randn((1, 7, CTX), generator=torch.Generator().manual_seed(seed)), {}]]


def kv_attribution(mp, family):
    request = AttributionRequest(steps=2, scope="regex", scope_regex=KV_REGEX)
    with torch.inference_mode():
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), empty_latent(), request)


def erase(mp, attribution, strength=1.0, keep="a dog\na bird", clip=None, mode="closed form", **kw):
    with torch.inference_mode():   # as ComfyUI's executor runs every node
        out = CADEraseConcept.execute(model=mp, clip=clip or RowsClip(), attribution=attribution, erase="a cat",
                                      keep=keep, strength=strength, mode=mode, **kw)
    return out.args[0], out.args[1]


def linear_attribution(mp, family):
    request = AttributionRequest(steps=2, scope="all_linear")
    with torch.inference_mode():
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), empty_latent(), request)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_edit_patches_a_clone_scales_with_strength_and_unpatches_bit_exactly(family):
    mp = build(family, seed=3)
    pos, neg = conditioning(family, 1), conditioning(family, 2)
    before_weights = {k: v.clone() for k, v in mp.model.state_dict().items()}
    picture = sample_tiny(mp, pos, neg, steps=2)
    attribution = kv_attribution(mp, family)
    patched, edit = erase(mp, attribution)
    assert set(edit.deltas) <= set(text_kv_keys(mp, CTX)) and edit.info.located == tuple(edit.deltas)
    key = next(iter(edit.deltas))
    original = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight.detach().clone()
    delta = edit.deltas[key]
    assert delta.abs().max() > 0
    torch.testing.assert_close(loaded_weight(patched, key), original + delta, rtol=0, atol=0)
    half, _ = erase(mp, attribution, strength=0.5)
    torch.testing.assert_close(loaded_weight(half, key), original + 0.5 * delta, rtol=0, atol=0)
    assert not torch.equal(sample_tiny(patched, pos, neg, steps=2), picture)
    # the input MODEL: no patch, no wrapper, same weights, the same picture bit for bit
    assert torch.equal(sample_tiny(mp, pos, neg, steps=2), picture)
    assert_untouched(mp, before_weights)


def test_robust_mode_trains_located_image_pathway_weights_on_a_clone_only(monkeypatch):
    """Robust mode on the reduced SD1.5: K/V in closed form plus trained image-pathway weights, each trained row
    changing at most train_share of its entries (the most positive CAD scores); the input MODEL samples bit for bit
    as before and keeps its weights; the LoRA-style patch scales with strength; progress reaches its total."""
    import comfy.utils
    mp = build("sd15", seed=3)
    pos, neg = conditioning("sd15", 1), conditioning("sd15", 2)
    before_weights = {k: v.clone() for k, v in mp.model.state_dict().items()}
    picture = sample_tiny(mp, pos, neg, steps=2)
    attribution = linear_attribution(mp, "sd15")
    updates = []

    class Bar:
        def __init__(self, total):
            pass

        def update_absolute(self, done, total):
            updates.append((done, total))
    monkeypatch.setattr(comfy.utils, "ProgressBar", Bar)
    patched, edit = erase(mp, attribution, mode="robust", train_steps=4)
    kv = set(text_kv_keys(mp, CTX))
    trained = [k for k in edit.deltas if k not in kv]
    assert trained and set(edit.deltas) & kv and edit.info.erase_mode == "robust"
    assert edit.info.trained_weights >= sum(int((edit.deltas[k] != 0).sum()) for k in trained) > 0
    share = edit.info.train_share
    for key in trained:
        d = edit.deltas[key]
        assert int((d != 0).sum(1).max()) <= int(share * d.shape[1]), key     # only the located entries of a row
        changed = d != 0
        assert bool((attribution.scores[key][changed] > 0).all()), key         # all of them positive components
    key = trained[0]
    original = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight.detach().clone()
    torch.testing.assert_close(loaded_weight(patched, key), original + edit.deltas[key], rtol=0, atol=0)
    assert updates and updates[-1][0] == updates[-1][1] and [d for d, _ in updates] == sorted(d for d, _ in updates)
    assert "robust:" in edit.summary_text()
    assert torch.equal(sample_tiny(mp, pos, neg, steps=2), picture)
    assert_untouched(mp, before_weights)


def test_robust_mode_exports_through_save_cad_edit_as_lora_and_trains_a_half_precision_model(tmp_path,
                                                                                            monkeypatch):
    """The robust edit of a bf16-stored model (trained on an fp32 copy) is finite, and its LoRA file, loaded by
    core's LoraLoaderModelOnly, gives the same weights as the node's own patches."""
    import folder_paths
    import nodes as comfy_nodes
    from cad_pack.nodes.export_node import CADSaveEditAsLoRA
    mp = build("sd15", seed=4, dtype=torch.bfloat16)
    attribution = linear_attribution(mp, "sd15")
    patched, edit = erase(mp, attribution, mode="robust", train_steps=3)
    assert all(d.dtype == torch.float32 and torch.isfinite(d).all() for d in edit.deltas.values())
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    name = CADSaveEditAsLoRA.execute(edit=edit, filename_prefix="robust_cat").args[0]
    loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(mp, name, 1.0)[0]
    for k in edit.deltas:
        assert torch.equal(loaded_weight(loaded, k), loaded_weight(patched, k)), k


def test_robust_mode_honours_cancel_and_leaves_the_model_as_it_was(monkeypatch):
    import comfy.model_management
    mp = build("sd15", seed=3)
    before_weights = {k: v.clone() for k, v in mp.model.state_dict().items()}
    attribution = linear_attribution(mp, "sd15")
    monkeypatch.setattr(comfy.model_management, "processing_interrupted", lambda: True)
    with pytest.raises(CADError, match="cancelled"):
        erase(mp, attribution, mode="robust", train_steps=4)
    assert_untouched(mp, before_weights)


def test_the_edit_stacks_on_a_lora_and_its_lora_file_gives_the_same_weights(tmp_path, monkeypatch):
    import folder_paths
    import nodes as comfy_nodes
    from cad_pack.nodes.export_node import CADSaveEditAsLoRA
    mp = build("sd15", seed=4)
    attribution = kv_attribution(mp, "sd15")
    key = text_kv_keys(mp, CTX)[0]
    lora = {key: torch.full(dict(patchable_weights(mp))[key], 0.01)}
    with_lora = mp.clone()
    with_lora.add_patches({k: (v,) for k, v in lora.items()}, 1.0)
    patched, edit = erase(with_lora, attribution, mass_share=1.0)   # every K/V matrix with mass, `key` among them
    assert key in edit.deltas
    original = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight.detach().clone()
    torch.testing.assert_close(loaded_weight(patched, key), original + lora[key] + edit.deltas[key], rtol=0, atol=0)

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    name = CADSaveEditAsLoRA.execute(edit=edit, filename_prefix="erase_cat").args[0]
    loaded = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(mp, name, 1.0)[0]
    plain, _ = erase(mp, attribution, mass_share=1.0)
    for k in edit.deltas:
        assert torch.equal(loaded_weight(loaded, k), loaded_weight(plain, k)), k


@pytest.mark.slow
def test_the_toy_world_loses_the_typed_shape_and_keeps_the_others():
    """Typed prompts and the node's defaults on the CAD Demo Model: 'square' erased (its four colours, guided to
    the colour alone), the other shapes listed under keep; attribution 'a square' against '' on K/V, seed 0;
    pictures on seeds no attribution used. The square must mostly go while every other shape and every colour
    keeps >= 90%. Measured on the committed model: square 1.00 -> 0.00, the others kept 1.00."""
    from cad_pack.nodes.toyworld.evaluate import ToyWorld
    from cad_pack.nodes.toyworld.world import COLOUR_NAMES, SHAPES, caption
    world = ToyWorld.load()
    attribution = world.attribute("square", scope="regex", scope_regex=KV_REGEX, contrast="empty")
    others = [s for s in SHAPES if s != "square"]
    with torch.inference_mode():
        model, edit = CADEraseConcept.execute(
            model=world.model, clip=world.clip, attribution=attribution, mode="closed form",
            erase="\n".join(caption("square", c) for c in COLOUR_NAMES),
            guide="\n".join(caption(None, c) for c in COLOUR_NAMES),
            keep="\n".join(caption(s, c) for s in others for c in COLOUR_NAMES)).args[:2]
    before = world.grid(world.model, per_colour=4, seed=10_000).by_shape()
    after = world.grid(model, per_colour=4, seed=10_000).by_shape()
    assert before["square"]["shape"] >= 0.9 and after["square"]["shape"] <= 0.25, (before["square"], after["square"])
    assert min(after[s]["shape"] / before[s]["shape"] for s in others) >= 0.9, (before, after)
    assert min(after[s]["colour"] for s in SHAPES) >= 0.9, after
    assert len(edit.deltas) < 14        # CAD located fewer than all 14 K/V matrices


@pytest.mark.slow
def test_the_robust_default_keeps_the_square_erased_under_an_embedding_attack():
    """The node's defaults (mode robust) with cad_3's typed prompts on the CAD Demo Model, attribution 'a square'
    against '' with scope all_linear: the square goes, the other shapes and the colours keep >= 90%, and a learned
    embedding (the attack's stated budget, 200 steps, seeds no erase used) brings it back in few pictures, where
    it brings back most of the closed form's."""
    from benchmarks import attacks
    from cad_pack.nodes.toyworld.evaluate import ToyWorld
    from cad_pack.nodes.toyworld.world import SHAPES
    from scripts.example_workflows import typed_prompts
    world = ToyWorld.load()
    attribution = world.attribute("square", scope="all_linear", contrast="empty")
    edited = {}
    for mode in ("robust", "closed form"):
        with torch.inference_mode():
            edited[mode] = CADEraseConcept.execute(model=world.model, clip=world.clip, attribution=attribution,
                                                   mode=mode, **typed_prompts("square")).args[0]
    before = world.grid(world.model, per_colour=4, seed=10_000).by_shape()
    after = world.grid(edited["robust"], per_colour=4, seed=10_000).by_shape()
    others = [s for s in SHAPES if s != "square"]
    assert before["square"]["shape"] >= 0.9 and after["square"]["shape"] <= 0.10, (before["square"], after["square"])
    assert min(after[s]["shape"] / before[s]["shape"] for s in others) >= 0.9, (before, after)
    assert min(after[s]["colour"] for s in SHAPES) >= 0.9, after
    pictures = attacks.shape_pictures(world, "square", 8, 91_000)
    asr = {}
    for mode, model in edited.items():
        found = attacks.run_attack("embedding", world, world.model, model, "square", pictures,
                                   attacks.Budget(steps=200, seed=91_001))
        asr[mode] = attacks.success_rate(world, model, found[200], "square", 32, 91_500)
    assert asr["robust"] <= 0.25 and asr["closed form"] >= 0.5, asr


def test_what_it_cannot_do_is_refused_with_the_reason():
    mp = build("sd15", seed=5)
    attribution = kv_attribution(mp, "sd15")
    with pytest.raises(CADError, match="keep is empty"):
        erase(mp, attribution, keep="\n  \n")
    with pytest.raises(CADError, match="erase is empty"), torch.inference_mode():
        CADEraseConcept.execute(model=mp, clip=RowsClip(), attribution=attribution, erase=" \n", keep="a dog")
    with pytest.raises(CADError, match="scores only cross-attention K/V.*'all_linear'"):
        erase(mp, attribution, mode="robust")      # the default mode needs the image pathway scored
    with pytest.raises(CADError, match="Unknown erase mode"):
        erase(mp, attribution, mode="gentle")
    with pytest.raises(CADError, match="train_steps 0 is outside its range"):
        erase(mp, attribution, mode="robust", train_steps=0)
    sdxl = build("sdxl", seed=5)
    with pytest.raises(CADError, match="pooled vector.*'closed form'"):
        erase(sdxl, linear_attribution(sdxl, "sdxl"), mode="robust", train_steps=1)
    with pytest.raises(CADError, match="guide has 2 lines but erase has 3"):
        paired_guides(["a", "b", "c"], "x\ny")
    assert paired_guides(["a", "b"], "") == ["", ""] and paired_guides(["a", "b", "c"], "x\n") == ["x", "x", "x"]
    assert paired_guides(["a", "b", "c"], "x\n\nz") == ["x", "", "z"] == paired_guides(["a", "b", "c"], "x\n\nz\n")
    assert paired_guides(["a", "b"], "x\n") == ["x", ""]      # one line per erased prompt: the blank is ''

    with torch.inference_mode():
        ff = attribute_model(mp, conditioning("sd15", 1), conditioning("sd15", 2), empty_latent(),
                             AttributionRequest(steps=2))
    with pytest.raises(CADError, match="scores none of the cross-attention K/V"):
        erase(mp, ff)
    with pytest.raises(CADError, match="fingerprint|another model|different model"):
        erase(build("sd15", seed=6), attribution)
    with pytest.raises(CADError, match="no cross-attention K/V weights that read the prompt"):
        text_kv_keys(build("flux", seed=0), CTX)
    with pytest.raises(CADError, match="rows of width 48"):
        text_kv_keys(mp, 48)


def test_the_node_ships_the_settings_the_benchmark_chose_on_validation():
    """CAD Erase Concept's defaults are EraseSettings', and the default mode's are the setting the benchmark chose
    for it on validation (benchmarks/results/erase_vs_peers.json), which calls the node's own path with them. The
    closed form's chosen overshoot is the default too; its chosen text_rows (12) is not, because the two modes share
    text_rows and robust mode, the default, was measured with 77 (to settle when the benchmark tunes it for both)."""
    import json
    import os
    from cad_pack.cad_core.erase_settings import erase_default
    from conftest import REPO
    with open(os.path.join(REPO, "benchmarks", "results", "erase_vs_peers.json")) as f:
        data = json.load(f)
    robust = data["chosen"]["cad-robust"]
    assert {k: erase_default(k) for k in robust} == robust
    assert erase_default("mode") == "robust" and erase_default("text_rows") == 77
    assert data["chosen"]["cad-closed-form"]["overshoot"] == erase_default("overshoot")
    inputs = CADEraseConcept.INPUT_TYPES()["optional"]
    for name in ("mode", "train_steps", "overshoot", "preserve", "text_rows", "mass_share"):
        assert inputs[name][1]["default"] == erase_default(name), name


def test_load_cad_edit_applies_a_saved_edit_to_its_model_only(tmp_path, monkeypatch):
    import folder_paths
    import safetensors.torch
    from cad_pack.cad_core import select_components
    from cad_pack.nodes.bridge import apply_mask
    from cad_pack.nodes.export_node import CADLoadEdit, CADSaveEditAsLoRA, CADSaveMaskAsLoRA
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    mp = build("sd15", seed=7)
    attribution = kv_attribution(mp, "sd15")
    patched, edit = erase(mp, attribution, strength=0.5)
    name = CADSaveEditAsLoRA.execute(edit=edit, filename_prefix="cat").args[0]
    with torch.inference_mode():
        loaded, loaded_edit = CADLoadEdit.execute(model=mp, lora_name=name, strength=0.5).args[:2]
    assert set(loaded_edit.deltas) == set(edit.deltas) and loaded_edit.info.erase == ("a cat",)
    for key in edit.deltas:
        assert torch.equal(loaded_weight(loaded, key), loaded_weight(patched, key)), key
    with pytest.raises(CADError, match="made for another model"), torch.inference_mode():
        CADLoadEdit.execute(model=build("sd15", seed=8), lora_name=name, strength=1.0)
    # a mask's LoRA loads too: the same weights as Apply CAD Mask
    mask = select_components(attribution, "erase", 0.05, "per_matrix")
    mask_file = CADSaveMaskAsLoRA.execute(model=mp, mask=mask, filename_prefix="mask").args[0]
    with torch.inference_mode():
        from_file = CADLoadEdit.execute(model=mp, lora_name=mask_file, strength=1.0).args[0]
        applied = apply_mask(mp, mask, 1.0)
    for key, idx in mask.indices.items():
        if idx.numel():
            assert torch.equal(loaded_weight(from_file, key), loaded_weight(applied, key)), key
    # a LoRA from elsewhere has no CAD fingerprint: refused, not applied unchecked
    safetensors.torch.save_file({k.replace(".weight", ".diff"): d for k, d in edit.deltas.items()},
                                str(tmp_path / "other.safetensors"))
    with pytest.raises(CADError, match="not a LoRA written by a CAD node"), torch.inference_mode():
        CADLoadEdit.execute(model=mp, lora_name="other.safetensors", strength=1.0)

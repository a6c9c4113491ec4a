"""The toy world: committed weights, the CAD Demo Model node, the scorers, and a fast erase check
that fails if erasing stops working."""
import hashlib
import os
import shutil

import pytest
import torch

from cad_pack.cad_core import CADError
from cad_pack.nodes.demo_model_node import CADDemoModel
from cad_pack.nodes.toyworld.model import WEIGHTS_FILE, verify_weights_file
from cad_pack.nodes.toyworld.scorers import clean_accuracy, load_shape_classifier


def test_committed_weights_match_their_checksum():
    expected = open(WEIGHTS_FILE + ".sha256").read().split()[0]
    assert verify_weights_file() == expected == hashlib.sha256(open(WEIGHTS_FILE, "rb").read()).hexdigest()


def test_a_damaged_weights_file_is_refused(tmp_path):
    copy = tmp_path / "toy.safetensors"
    shutil.copy(WEIGHTS_FILE, copy)
    shutil.copy(WEIGHTS_FILE + ".sha256", str(copy) + ".sha256")
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(CADError, match="do not match their checksum"):
        verify_weights_file(str(copy))


def test_demo_model_node_returns_working_model_clip_and_vae():
    from safetensors.torch import load_file
    import comfy.sample
    with torch.inference_mode():
        model, clip, vae = CADDemoModel.execute().args
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle"))
        empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        assert cond[0][0].shape == (1, 77, 32) and not torch.equal(cond[0][0], empty[0][0])
        latent = torch.zeros((2, 48, 8, 8))
        out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), 10, 3.0, "euler", "normal",
                                  cond, empty, latent, seed=0, disable_pbar=True)
        images = vae.decode(out)
    assert images.shape == (2, 64, 64, 3) and torch.isfinite(images).all()
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    # the text encoder really holds the trained weights (ComfyUI loads them non-strictly)
    saved = load_file(WEIGHTS_FILE)
    key = "text_model.encoder.layers.0.mlp.fc1.weight"
    loaded = clip.cond_stage_model.clip_l.transformer.state_dict()[key]
    assert torch.equal(loaded, saved["text_encoder." + key].float())
    # the pixel 'VAE' is exact: encoding the decoded images gives the (clamped) latents back
    torch.testing.assert_close(vae.encode(images), out.clamp(-1, 1), atol=1e-5, rtol=0)


def test_scorers_are_accurate_on_clean_images():
    accuracy = clean_accuracy(load_shape_classifier(), n=400, seed=99)
    assert accuracy["shape"] >= 0.98 and accuracy["colour"] >= 0.98


@pytest.mark.slow
def test_erasing_a_shape_works_beats_a_random_control_and_spares_another_shape():
    """A fast version of benchmarks/efficacy.py on fixed seeds: CAD-Erase of 'cross' (concept_gap,
    'a cross' against '', ff scope, per_row 0.1) must cut the cross's accuracy by at least 0.6 while the
    circle keeps at least 0.75, and ablating the same number of weights per matrix at random must not
    (at most 0.25). Measured on the committed model: cross 1.00 -> 0.00 with the circle at 0.88."""
    from cad_pack.nodes.toyworld.evaluate import ToyWorld, edited, erase_mask, matched_control
    world = ToyWorld.load()
    attribution = world.attribute("cross", contrast="empty", samples=2)
    mask = erase_mask(attribution, 0.1)
    erased_model = edited(world.model, mask)
    before = world.accuracy(world.model, "cross", per_colour=4)["shape"]
    erased = world.accuracy(erased_model, "cross", per_colour=4)["shape"]
    circle_after = world.accuracy(erased_model, "circle", per_colour=4)["shape"]
    control = world.accuracy(edited(world.model, matched_control(world.model, mask, "random")), "cross",
                             per_colour=4)["shape"]
    assert before >= 0.9, before
    assert before - erased >= 0.6, (before, erased)
    assert circle_after >= 0.75, circle_after
    assert before - control <= 0.25, (before, control)


@pytest.mark.slow
def test_protect_subtract_on_cross_attention_erases_the_circle_and_keeps_the_other_shapes():
    """The selective erase of benchmarks/selective_erase.py (attribution seed 0), through CAD Erase Mask itself: the
    circle attributed on the cross-attention K/V weights ('a circle' against ''), the three other shapes wired into
    protect, protect_2 and protect_3 (protect_mode subtract), per_matrix 0.1; pictures on seeds no attribution
    used. The circle must mostly go (<= 0.25; a random ablation of this size leaves 0.88) while every other shape
    keeps >= 90% of its accuracy, and the same count without protection (the one-shot selection) must not keep them.
    Measured on the committed model: circle 0.94 -> 0.00 with the others kept at 1.00; unprotected, the others keep
    0.38 at worst. (Other attribution seeds erase the circle less: selective_erase_seeds.md.)"""
    from cad_pack.nodes.mask_nodes import CADEraseMask
    from cad_pack.nodes.toyworld.evaluate import ToyWorld, edited
    from cad_pack.nodes.toyworld.world import SHAPES
    world = ToyWorld.load()
    kv = {"scope": "regex", "scope_regex": r"attn2\.to_[kv]", "contrast": "empty"}
    scores = {shape: world.attribute(shape, **kv) for shape in SHAPES}
    others = [s for s in SHAPES if s != "circle"]
    protected = dict(zip(("protect", "protect_2", "protect_3"), (scores[s] for s in others)))
    selective = CADEraseMask.execute(attribution=scores["circle"], ratio=0.1, granularity="per_matrix",
                                     **protected).args[0]
    one_shot = CADEraseMask.execute(attribution=scores["circle"], ratio=0.1, granularity="per_matrix").args[0]
    assert selective.count == one_shot.count  # a margin, not a veto: the same number of weights

    before = world.grid(world.model, per_colour=4, seed=10_000).by_shape()

    def kept(mask):
        after = world.grid(edited(world.model, mask), per_colour=4, seed=10_000).by_shape()
        return after["circle"]["shape"], min(after[s]["shape"] / before[s]["shape"] for s in others)

    circle, others_kept = kept(selective)
    assert before["circle"]["shape"] >= 0.9 and circle <= 0.25, (before["circle"], circle)
    assert others_kept >= 0.9, others_kept
    _, others_kept_unprotected = kept(one_shot)
    assert others_kept_unprotected <= 0.7, others_kept_unprotected


@pytest.mark.slow
def test_amplify_from_concept_gap_raises_a_weakly_drawn_shape_at_cfg_1():
    """The amplify section of benchmarks/selective_erase.py through CAD Amplify Mask itself: without guidance
    (CFG 1) the model draws the circle weakly; the circle's concept_gap attribution ('a circle' against '', ff,
    attribution seed 0), amplified at per_row 0.01, must raise it by >= 0.15 on seeds no attribution used while
    every other shape keeps >= 90% of its CFG-1 accuracy, and a random ablation of the same count per matrix must
    move it by no more than one picture in 16. Measured on the committed model: circle 0.69 -> 0.94, the others
    kept 1.00; the random control leaves it at 0.69."""
    from cad_pack.nodes.mask_nodes import CADAmplifyMask
    from cad_pack.nodes.toyworld.evaluate import ToyWorld, edited, matched_control
    from cad_pack.nodes.toyworld.world import SHAPES
    world = ToyWorld.load()
    attribution = world.attribute("circle", contrast="empty")
    mask = CADAmplifyMask.execute(attribution=attribution, ratio=0.01, granularity="per_row").args[0]
    others = [s for s in SHAPES if s != "circle"]

    def shapes(model):
        return world.grid(model, per_colour=4, seed=10_000, cfg=1.0).by_shape()

    before, after = shapes(world.model), shapes(edited(world.model, mask))
    control = shapes(edited(world.model, matched_control(world.model, mask, "random")))
    assert after["circle"]["shape"] - before["circle"]["shape"] >= 0.15, (before["circle"], after["circle"])
    assert min(after[s]["shape"] / before[s]["shape"] for s in others) >= 0.9, (before, after)
    assert abs(control["circle"]["shape"] - before["circle"]["shape"]) <= 1 / 16, (before["circle"], control["circle"])

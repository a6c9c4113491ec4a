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
from toyworld.scorers import clean_accuracy, load_shape_classifier


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


def test_erasing_a_shape_works_beats_a_random_control_and_spares_another_shape():
    """A fast version of benchmarks/efficacy.py on fixed seeds: CAD-Erase of 'cross' (concept_gap,
    'a cross' against '', ff scope, per_row 0.1) must cut the cross's accuracy by at least 0.6 while the
    circle keeps at least 0.75, and ablating the same number of weights per matrix at random must not
    (at most 0.25). Measured on the committed model: cross 1.00 -> 0.00 with the circle at 0.88."""
    from toyworld.evaluate import ToyWorld, edited, erase_mask, matched_control
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

"""Taking the edit out of the graph: a CAD-patched MODEL through core's own ModelSave and the stock diffusion-model
loader, and a CAD mask as a LoRA file (Save CAD Mask as LoRA) through the stock LoRA loader. Each must sample
exactly like Apply CAD Mask on the original."""
import os

import pytest
import safetensors.torch
import torch

import comfy.sd
import comfy.utils
from cad_pack.cad_core import AttributionRequest, CADError, select_components
from cad_pack.cad_core.export import lora_key
from cad_pack.nodes.bridge import apply_mask, attribute_model, patchable_weights
from cad_pack.nodes.bridge.export import lora_from_mask

from scripts.family_models import build, conditioning as family_conditioning, family_latent
from tiny_models import conditioning, sample, tiny_sd15

POS, NEG = conditioning(1), conditioning(2)


def erase_mask(mp, ratio=0.05):
    with torch.inference_mode():
        attribution = attribute_model(mp, POS, NEG, {"samples": torch.zeros((1, 4, 16, 16))},
                                      AttributionRequest(steps=2))
    return select_components(attribution, "erase", ratio, "per_row")


def with_lora(mp, tensors, strength):
    loaded, _ = comfy.sd.load_lora_for_models(mp, None, tensors, strength, 0)
    return loaded


def test_a_mask_as_a_lora_samples_exactly_like_apply_cad_mask():
    mp = tiny_sd15(seed=4)
    mask = erase_mask(mp)
    tensors = lora_from_mask(mp, mask)
    # one full diff per touched matrix, nothing else: the generic key form ComfyUI's loader maps
    touched = {k for k, idx in mask.indices.items() if idx.numel()}
    assert set(tensors) == {lora_key(k) for k in touched} and len(touched) >= 2
    for key in touched:
        diff, w = tensors[lora_key(key)], dict(mp.model.named_parameters())[key.removeprefix("model.")]
        assert diff.dtype == w.dtype and int((diff != 0).sum()) <= mask.indices[key].numel()
    reference = sample(apply_mask(mp, mask, 1.0), POS, NEG, steps=4)
    assert torch.equal(sample(with_lora(mp, tensors, 1.0), POS, NEG, steps=4), reference)
    assert not torch.equal(sample(mp, POS, NEG, steps=4), reference)          # the edit does change the image
    # strength_model scales like Apply CAD Mask's strength
    for strength in (0.5, 0.25):
        assert torch.equal(sample(with_lora(mp, tensors, strength), POS, NEG, steps=4),
                           sample(apply_mask(mp, mask, strength), POS, NEG, steps=4)), strength


def test_the_lora_cancels_the_weights_of_a_model_that_already_has_a_lora():
    """Exported from a MODEL with a LoRA on it, loaded after the same LoRA: the masked entries of the LoRA'd
    weight are exactly 0 again (the file is fp32 where another patch made the weight non-representable)."""
    mp = tiny_sd15(seed=4)
    key = next(k for k, _ in patchable_weights(mp) if k.endswith("ff.net.2.weight"))
    other = {key.removesuffix(".weight") + ".diff": torch.full(dict(patchable_weights(mp))[key], 0.1234567)}
    lora_d = with_lora(mp, other, 1.0)
    mask = erase_mask(lora_d)
    tensors = lora_from_mask(lora_d, mask)
    assert tensors[lora_key(key)].dtype == torch.float32
    stacked = with_lora(lora_d, tensors, 1.0)
    assert torch.equal(sample(stacked, POS, NEG, steps=4), sample(apply_mask(lora_d, mask, 1.0), POS, NEG, steps=4))


def test_an_fp16_model_gets_an_fp16_lora_that_is_still_exact():
    mp = build("sd15", seed=3, scale=0.1, dtype=torch.float16)
    pos, neg = family_conditioning("sd15", 1), family_conditioning("sd15", 2)
    with torch.inference_mode():
        attribution = attribute_model(mp, pos, neg, family_latent("sd15")[0],
                                      AttributionRequest(steps=2))
    mask = select_components(attribution, "erase", 0.05, "per_row")
    tensors = lora_from_mask(mp, mask)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    patched, loaded = apply_mask(mp, mask, 1.0), with_lora(mp, tensors, 1.0)
    import comfy.model_management as mm
    for model in (patched, loaded):
        mm.load_models_gpu([model], force_full_load=True)
        model.weights = {k: comfy.utils.get_attr(model.model, k).detach().clone() for k in mask.indices}
    for key in mask.indices:
        assert torch.equal(patched.weights[key], loaded.weights[key]), key
    mm.unload_all_models()


def test_a_mask_for_another_model_is_refused():
    mask = erase_mask(tiny_sd15(seed=4))
    with pytest.raises(CADError, match="This mask was made for another model"):
        lora_from_mask(tiny_sd15(seed=5), mask)


def test_core_checkpoint_save_of_a_cad_patched_model_loads_and_samples_identically(sd15_test_checkpoint, tmp_path):
    """Core's CheckpointSave path (comfy.sd.save_checkpoint on the patched MODEL, with CLIP and VAE) writes the erased
    weights; the stock loader (CheckpointLoaderSimple's load_checkpoint_guess_config) gives a model that samples the
    same image as the CAD-patched one. On the narrow SD1.5 test checkpoint (ComfyUI's detection must recognise it)."""
    with torch.inference_mode():
        mp, clip, vae = comfy.sd.load_checkpoint_guess_config(sd15_test_checkpoint, output_vae=True,
                                                              output_clip=True)[:3]
        pos = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
        neg = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        attribution = attribute_model(mp, pos, neg, {"samples": torch.zeros((1, 4, 8, 8))},
                                      AttributionRequest(steps=2))
    mask = select_components(attribution, "erase", 0.05, "per_row")
    patched = apply_mask(mp, mask, 1.0)
    path = str(tmp_path / "erased.safetensors")
    with torch.inference_mode():
        comfy.sd.save_checkpoint(path, patched, clip, vae)
        saved = safetensors.torch.load_file(path)
        for key, idx in mask.indices.items():
            stored = saved["model." + key]                  # checkpoints name UNet weights model.diffusion_model.*
            assert torch.all(stored.reshape(-1)[idx.long()] == 0) and stored.abs().sum() > 0, key
        del saved
        reloaded = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]

    erased = sample(patched, pos, neg, steps=4, seed=3)
    assert torch.equal(sample(reloaded, pos, neg, steps=4, seed=3), erased)
    assert not torch.equal(sample(mp, pos, neg, steps=4, seed=3), erased)


def test_core_extract_and_save_lora_is_not_exact_for_a_cad_erase():
    """Why the pack has its own LoRA writer: core's ModelMergeSubtract + Extract and Save Lora (full_diff) stores
    every matrix of the model in fp16, so on an fp32 model the erased entries come back as rounding residues, not
    0, and the file holds every matrix, touched or not."""
    from comfy_extras.nodes_lora_extract import LORAType, calc_lora_model
    from comfy_extras.nodes_model_merging import ModelSubtract
    mp = tiny_sd15(seed=4)
    mask = erase_mask(mp)
    erased = apply_mask(mp, mask, 1.0)
    with torch.inference_mode():
        (diff_model,) = ModelSubtract().merge(erased, mp, 1.0)
        core = calc_lora_model(diff_model, 8, "diffusion_model.", "diffusion_model.", {}, LORAType.FULL_DIFF)
    ours = lora_from_mask(mp, mask)
    assert {t.dtype for t in core.values()} == {torch.float16}
    assert len(core) > len(ours)                                          # untouched matrices too
    with torch.inference_mode():
        core_loaded = with_lora(mp, core, 1.0)
    import comfy.model_management as mm
    mm.load_models_gpu([core_loaded], force_full_load=True)
    residues = [comfy.utils.get_attr(core_loaded.model, k).reshape(-1)[idx.long()] for k, idx in mask.indices.items()]
    mm.unload_all_models()
    assert any(bool(r.abs().max() > 0) for r in residues)                 # not erased exactly


def test_the_node_writes_new_numbered_files_into_the_loras_folder(tmp_path, monkeypatch):
    import folder_paths
    from cad_pack.nodes.export_node import CADSaveMaskAsLoRA
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras",
                        ([str(tmp_path)], folder_paths.supported_pt_extensions))
    mp = tiny_sd15(seed=4)
    mask = erase_mask(mp)
    first = CADSaveMaskAsLoRA.execute(mp, mask, "cad/cat_erase")
    second = CADSaveMaskAsLoRA.execute(mp, mask, "cad/cat_erase")
    names = [out.result[0] for out in (first, second)]
    assert names == [os.path.join("cad", "cat_erase_00001_.safetensors"), os.path.join("cad", "cat_erase_00002_.safetensors")]
    assert first.ui["cad_saved"] == [{"file": names[0], "folder": "loras"}]
    assert f"saved models/loras/{names[0]}" in first.ui["text"][0]
    written = safetensors.torch.load_file(str(tmp_path / names[0]))
    expected = lora_from_mask(mp, mask)
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    assert CADSaveMaskAsLoRA.validate_inputs("../outside") != True    # noqa: E712 (a message, not False)

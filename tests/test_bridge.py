"""The ComfyUI bridge on a real ModelPatcher around a hand-built SD1.5-structured BaseModel.

Gradients through the node path (weight probes under inference mode, CFGGuider conditioning) must
equal plain autograd on the same latents; masks must patch and unpatch exactly.
"""
import pytest
import torch

from cad_pack.cad_core import AttributionRequest, Mask, MaskInfo, select_components
from cad_pack.nodes.bridge import apply_mask, attribute_model, fingerprint_of, patchable_weights

from scripts.family_models import loaded_weight
from scripts.family_models import plain_autograd_alpha as family_plain_autograd_alpha
from tiny_models import assert_untouched, conditioning, empty_latent, tiny_sd15
from tiny_models import sample as sample_tiny

POS, BASE = conditioning(1), conditioning(2)
STEPS, SEED, GUIDANCE = 3, 7, 3.0


def node_path(mp, objective, scope="ff", scope_regex="", concept_latent=None):
    request = AttributionRequest(objective=objective, steps=STEPS, guidance=GUIDANCE, seed=SEED, scope=scope,
                                 scope_regex=scope_regex)
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return attribute_model(mp, POS, BASE, empty_latent(), request, concept_latent=concept_latent)


def plain_autograd_alpha(mp, objective, keys, concept_latent=None):
    """The same objective written directly against BaseModel.apply_model with ordinary autograd."""
    return family_plain_autograd_alpha(mp, "sd15", objective, keys, POS, BASE, steps=STEPS, seed=SEED,
                                       guidance=GUIDANCE, concept_latent=concept_latent)


@pytest.mark.parametrize("v_prediction", [False, True], ids=["eps", "v"])
@pytest.mark.parametrize("objective", ["concept_gap", "concept_likelihood", "concept_gap_full"])
def test_node_path_gradients_equal_plain_autograd(objective, v_prediction):
    mp = tiny_sd15(seed=3, v_prediction=v_prediction)
    concept = None
    if objective == "concept_likelihood":
        with torch.inference_mode():
            concept = {"samples": torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5)) * 3}
    attribution = node_path(mp, objective, concept_latent=concept)
    keys = list(attribution.scores)
    assert len(keys) == 14 and all(".ff.net." in k for k in keys)

    reference_model = tiny_sd15(seed=3, v_prediction=v_prediction, inference=False)
    with torch.inference_mode(False):
        expected = plain_autograd_alpha(reference_model, objective, keys, None if concept is None else concept["samples"])
    for k in keys:
        assert attribution.scores[k].abs().max() > 0, k
        torch.testing.assert_close(attribution.scores[k], expected[k], rtol=1e-4, atol=1e-12 + 1e-4 * expected[k].abs().max().item())


def test_attribution_leaves_no_trace_on_the_model():
    mp = tiny_sd15(seed=4)
    before = {k: v.clone() for k, v in mp.model.state_dict().items()}
    node_path(mp, "concept_gap", scope="ff+attention")
    assert_untouched(mp, before)


def sample(mp, seed=11):
    return sample_tiny(mp, POS, BASE, steps=4, seed=seed)


def test_original_model_samples_bit_identically_after_cad_nodes():
    mp = tiny_sd15(seed=6)
    first = sample(mp)
    attribution = node_path(mp, "concept_gap")
    edited = apply_mask(mp, select_components(attribution, "erase", 0.1, "per_row"), 1.0)
    edited_image = sample(edited)
    again = sample(mp)
    assert torch.equal(first, again)
    assert not torch.equal(first, edited_image)  # the edit itself did something


def ff_key(mp):
    return next(k for k, _ in patchable_weights(mp) if k.endswith("ff.net.2.weight"))


def hand_mask(mp, key, indices):
    shape = dict(patchable_weights(mp))[key]
    return Mask({key: torch.tensor(indices)}, {key: shape}, fingerprint_of(mp), MaskInfo(mode="erase"))


@pytest.mark.parametrize("lowvram", [False, True], ids=["full", "lowvram"])
def test_mask_zeroes_halves_and_unpatches_exactly(lowvram):
    mp = tiny_sd15(seed=8)
    key = ff_key(mp)
    original = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight.detach().clone()
    idx = [0, 5, 17, 100]
    with torch.inference_mode():
        erased = loaded_weight(apply_mask(mp, hand_mask(mp, key, idx), 1.0), key, lowvram)
        halved = loaded_weight(apply_mask(mp, hand_mask(mp, key, idx), 0.5), key, lowvram)
    flat, others = torch.tensor(idx), torch.ones(original.numel(), dtype=torch.bool)
    others[flat] = False
    assert torch.all(erased.view(-1)[flat] == 0)
    assert torch.equal(erased.view(-1)[others], original.view(-1)[others])
    torch.testing.assert_close(halved.view(-1)[flat], original.view(-1)[flat] * 0.5, rtol=0, atol=1e-7)
    restored = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight
    assert torch.equal(restored, original) and mp.patches == {}


def test_mask_after_lora_zeroes_the_lora_modified_weight():
    mp = tiny_sd15(seed=9)
    key = ff_key(mp)
    original = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight.detach().clone()
    delta = torch.full_like(original, 0.25)
    with_lora = mp.clone()
    assert with_lora.add_patches({key: ("diff", (delta,))}) == [key]
    idx = [1, 2, 3, 64]
    with torch.inference_mode():
        w = loaded_weight(apply_mask(with_lora, hand_mask(mp, key, idx), 1.0), key)
    others = torch.ones(original.numel(), dtype=torch.bool)
    others[idx] = False
    assert torch.all(w.view(-1)[idx] == 0)
    torch.testing.assert_close(w.view(-1)[others], (original + delta).view(-1)[others], rtol=0, atol=1e-6)


def test_apply_refuses_a_mask_for_another_model():
    mp, other = tiny_sd15(seed=1), tiny_sd15(seed=2)
    mask = hand_mask(other, ff_key(other), [0, 1])
    with pytest.raises(Exception, match="made for another model"):
        apply_mask(mp, mask, 1.0)
    assert mp.patches == {}


def test_verify_measures_what_the_attribution_predicts_for_a_small_shrink():
    """Shrinking the selected weights by 2% stays in the linear regime: measured ~ predicted.

    Uses concept_likelihood: concept_gap stops the gradient through the base branch, while a real
    ablation changes both branches, so its measured change is not the first-order prediction.
    """
    from cad_pack.nodes.bridge import measure_on, verify_on
    mp = tiny_sd15(seed=14, scale=0.08)
    attribution = node_path(mp, "concept_likelihood")
    mask = select_components(attribution, "erase", 0.05, "per_matrix")
    with torch.inference_mode():
        unedited = measure_on(mp, POS, BASE, attribution)
        check = verify_on(mp, POS, BASE, attribution, mask, strength=0.02)
    # J measured at the visited latents equals the J the attribution accumulated there
    assert unedited == pytest.approx(attribution.info.unet_calls["objective_total"], rel=1e-5)
    assert check.predicted_change < 0  # erasing positive components lowers J
    assert check.measured_change == pytest.approx(check.predicted_change, rel=0.1)
    assert mp.patches == {}


def test_verify_gap_measures_the_edited_model():
    from cad_pack.nodes.bridge import measure_on
    mp = tiny_sd15(seed=15, scale=0.08)
    attribution = node_path(mp, "concept_gap")
    mask = select_components(attribution, "erase", 0.2, "per_matrix")
    with torch.inference_mode():
        unedited = measure_on(mp, POS, BASE, attribution)
        erased = measure_on(mp, POS, BASE, attribution, mask, 1.0)
        again = measure_on(mp, POS, BASE, attribution)
    assert unedited == pytest.approx(attribution.info.unet_calls["objective_total"], rel=1e-5)
    assert erased != unedited and again == unedited


def test_gap_with_the_base_held_matches_the_first_order_prediction():
    """concept_gap's alpha differentiates the concept branch only; holding the base branch at the unedited
    model's predictions measures exactly that J, so a small shrink lands on the prediction."""
    from cad_pack.cad_core import predicted_change
    from cad_pack.nodes.bridge import held_base_on, measure_on
    mp = tiny_sd15(seed=15, scale=0.08)
    attribution = node_path(mp, "concept_gap")
    mask = select_components(attribution, "erase", 0.05, "per_matrix")
    # J_gap is a squared distance: its second-order term outgrows the first already at a 0.5% shrink here
    strength = 0.001
    with torch.inference_mode():
        base_held = held_base_on(mp, POS, BASE, attribution)
        unedited = measure_on(mp, POS, BASE, attribution, held_base=base_held)
        held = measure_on(mp, POS, BASE, attribution, mask, strength, held_base=base_held) - unedited
        both = measure_on(mp, POS, BASE, attribution, mask, strength) - measure_on(mp, POS, BASE, attribution)
    predicted = predicted_change(attribution, mask, strength)
    assert unedited == pytest.approx(attribution.info.unet_calls["objective_total"], rel=1e-5)
    assert predicted < 0
    assert held == pytest.approx(predicted, rel=0.15)
    assert abs(both) < 0.1 * abs(held)  # both branches move alike when the base is not held: J barely changes
    assert mp.patches == {}


def test_every_concept_image_is_used_even_with_samples_1():
    mp = tiny_sd15(seed=16)
    with torch.inference_mode():
        concept = {"samples": torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(5))}
    attribution = node_path(mp, "concept_likelihood", concept_latent=concept)
    assert attribution.info.samples == 2
    assert attribution.info.unet_calls["forward_backward"] == 2 * STEPS
    assert attribution.info.unet_calls["forward_no_grad"] == 0  # given images: no own samples drawn


def test_no_grad_forwards_run_without_the_pack_wrappers_and_get_them_back():
    """The wrappers only matter with gradients; ComfyUI copies every wrapped weight per forward, so no-grad
    forwards lift the pack's wrappers (and only the pack's) and restore them, also after an error."""
    from cad_pack.nodes.bridge.probes import (CopyForBackward, cad_wrappers_lifted,
                                              modules_with_cad_wrappers)
    layer, plain = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    other = lambda w: w  # noqa: E731  (a user's weight function, e.g. a low-VRAM LoRA patch)
    layer.weight_function, plain.weight_function = [CopyForBackward(), other], [other]
    modules = modules_with_cad_wrappers(torch.nn.Sequential(layer, plain))
    assert modules == [layer]
    original = layer.weight_function
    with pytest.raises(RuntimeError):
        with cad_wrappers_lifted(modules):
            assert layer.weight_function == [other] and plain.weight_function == [other]
            raise RuntimeError("cancelled")
    assert layer.weight_function is original


class FirstWeights:
    """Records what each GradProbe kept as 'the weight alpha multiplies', next to the module's own weight."""

    def __init__(self, monkeypatch):
        from cad_pack.nodes.bridge import probes
        self.kept, real = {}, probes.GradProbe._first_weight

        def spy(probe, w):
            value = real(probe, w)
            self.kept[probe.key] = (value, probe.stored_weight())
            return value
        monkeypatch.setattr(probes.GradProbe, "_first_weight", spy)


def test_alpha_multiplies_the_lora_patched_weight_kept_by_reference(monkeypatch):
    """alpha = w * dJ/dw with the weight the forward really used, LoRA included. A fully loaded model holds exactly
    that weight (ComfyUI bakes patches in at load), so the probe keeps a reference to it, not a copy."""
    mp = tiny_sd15(seed=9)
    key = ff_key(mp)
    only_key = {"scope": "regex", "scope_regex": key.replace(".", r"\.")}
    original = mp.model.get_submodule(key.rsplit(".", 1)[0]).weight.detach().clone()
    delta = torch.full_like(original, 0.25)
    with_lora = mp.clone()
    with_lora.add_patches({key: ("diff", (delta,))})
    first = FirstWeights(monkeypatch)
    a = node_path(with_lora, "concept_gap", **only_key)
    value, stored = first.kept[key]
    assert value is stored
    torch.testing.assert_close(value.detach().float(), original + delta, rtol=0, atol=1e-6)
    # the same model with the LoRA merged into its weight gives the same scores
    merged = tiny_sd15(seed=9)
    with torch.inference_mode():
        merged.model.get_submodule(key.rsplit(".", 1)[0]).weight.add_(delta)
    b = node_path(merged, "concept_gap", **only_key)
    assert a.scores[key].abs().max() > 0
    torch.testing.assert_close(a.scores[key], b.scores[key], rtol=1e-5, atol=1e-12)


def test_a_weight_cast_to_another_dtype_is_kept_as_an_fp32_copy(monkeypatch):
    """fp16 weights computed in fp32 (ComfyUI's manual cast on CPU): the forward used the cast, which the module does
    not hold, so the probe keeps an fp32 CPU copy of it."""
    from scripts.family_models import build, conditioning as family_conditioning, family_latent
    mp = build("sd15", seed=3, scale=0.1, dtype=torch.float16)
    first = FirstWeights(monkeypatch)
    with torch.inference_mode():
        attribute_model(mp, family_conditioning("sd15", 1), family_conditioning("sd15", 2), family_latent("sd15")[0],
                        AttributionRequest(steps=2))
    assert first.kept
    for key, (value, stored) in first.kept.items():
        assert value is not stored and value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value, stored.float(), rtol=0, atol=0)

"""Per-block gradient checkpointing (nodes/bridge/checkpointing.py): the same alpha with it as without, for every
family, with and without chunks; it really keeps fewer activations; models without a family record never use it."""
import pytest
import torch

from cad_pack.cad_core import AttributionRequest, CADError, resolve_scope
from cad_pack.cad_core.families import detect_family
from cad_pack.nodes.bridge import attribute_model, patchable_weights
from cad_pack.nodes.bridge.checkpointing import checkpoint_units

from scripts.family_models import FAMILIES, NO_PRESET, build, conditioning, family_latent

STEPS, SEED = 3, 7


def attribute(mp, family, setting, scope="ff", memory_budget_mb=0):
    request = AttributionRequest(steps=STEPS, seed=SEED, scope=scope, gradient_checkpointing=setting,
                                 memory_budget_mb=memory_budget_mb)
    with torch.inference_mode():
        return attribute_model(mp, conditioning(family, 1), conditioning(family, 2), family_latent(family)[0], request)


def assert_same_scores(a, b, rtol=1e-5):
    assert list(a.scores) == list(b.scores)
    for k in a.scores:
        scale = a.scores[k].abs().max().item()
        torch.testing.assert_close(b.scores[k], a.scores[k], rtol=rtol, atol=1e-12 + rtol * scale, msg=k)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpointing_gives_the_same_alpha(family):
    mp = build(family, seed=3, scale=0.1)
    plain, checkpointed = attribute(mp, family, "off"), attribute(mp, family, "on")
    assert plain.info.gradient_checkpointing is False and checkpointed.info.gradient_checkpointing is True
    assert sum(bool(s.any()) for s in plain.scores.values()) >= len(plain.scores) // 2
    assert_same_scores(plain, checkpointed)


def test_checkpointing_with_chunks_gives_the_one_pass_alpha():
    mp = build("sd15", seed=3, scale=0.1)
    one_pass = attribute(mp, "sd15", "off")
    largest = max(s.numel() for s in one_pass.scores.values()) * 8 / 2**20
    activation = attribute(mp, "sd15", "on", memory_budget_mb=1_000_000).info.activation_mb
    chunked = attribute(mp, "sd15", "on", memory_budget_mb=activation + largest * 1.5)
    assert chunked.info.passes >= 2 and chunked.info.gradient_checkpointing is True
    assert_same_scores(one_pass, chunked)


class SavedBytes:
    """Bytes autograd saves for backward outside checkpointed blocks: the activations a run keeps alive."""

    def __init__(self):
        self.total = 0

    def __enter__(self):
        def pack(t):
            self.total += t.numel() * t.element_size()
            return t
        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self.hooks.__exit__(*exc)


@pytest.mark.parametrize("family", ["sd15", "flux", "wan22"])
def test_checkpointing_keeps_far_fewer_activations(family):
    mp = build(family, seed=3, scale=0.1)
    with SavedBytes() as plain:
        attribute(mp, family, "off")
    with SavedBytes() as checkpointed:
        attribute(mp, family, "on")
    assert plain.total > 0
    assert checkpointed.total < 0.5 * plain.total, (checkpointed.total, plain.total)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_of_a_family_is_a_checkpoint_unit(family):
    mp = build(family, seed=3, scale=0.1)
    diffusion_model = mp.model.diffusion_model
    units = [name for name, _ in checkpoint_units(diffusion_model)]
    assert units and len(set(units)) == len(units)
    assert not any(a.startswith(b + ".") for a in units for b in units)      # no unit inside another
    # every weight the ff and attention presets select lives inside a checkpointed unit
    preset = resolve_scope(patchable_weights(mp), "ff") + resolve_scope(patchable_weights(mp), "attention")
    outside = [k for k in preset if not any(k.removeprefix("diffusion_model.").startswith(u + ".") for u in units)]
    assert preset and not outside, outside[:3]
    if family == "sd15":   # UNet blocks are TimestepEmbedSequentials, run layer by layer: their layers are the units
        assert "input_blocks.1.0" in units and "input_blocks.1.1" in units and "middle_block.1" in units


@pytest.mark.parametrize("family", NO_PRESET)
def test_models_without_a_record_are_never_checkpointed(family, caplog):
    mp = build(family, seed=3, scale=0.1)
    assert detect_family(k for k, _ in patchable_weights(mp)) is None
    result = attribute(mp, family, "on", scope="ff+attention")
    assert result.info.gradient_checkpointing is False
    assert "only used for model families with a record" in caplog.text


def test_unknown_setting_is_refused():
    with pytest.raises(CADError, match="gradient_checkpointing must be one of auto, on, off"):
        attribute(build("sd15", seed=3, scale=0.1), "sd15", "sometimes")


def test_auto_is_on_on_a_cpu():
    mp = build("sd15", seed=3, scale=0.1)
    result = attribute(mp, "sd15", "auto")
    assert result.info.gradient_checkpointing is True
    assert result.info.checkpointing_reason == "auto: on, as always on a CPU"
    assert_same_scores(attribute(mp, "sd15", "off"), result)


@pytest.mark.parametrize("free_mb,expected", [(1, True), (1 << 30, False)], ids=["crowded", "roomy"])
def test_auto_on_a_gpu_checkpoints_when_autograd_would_crowd_free_memory(free_mb, expected, monkeypatch):
    """The GPU branch, with ComfyUI's free-memory answer faked: on when what a step would keep for backward without
    checkpointing (measured) exceeds a quarter of it."""
    import comfy.model_management
    from cad_pack.nodes.bridge.activation_memory import SavedForBackward
    from cad_pack.nodes.bridge.checkpointing import auto_decision
    real = comfy.model_management.get_free_memory

    def free_memory(dev=None, torch_free_too=False):
        if torch_free_too:                     # attention kernels ask for both numbers: leave them theirs
            return real(dev, torch_free_too)
        return free_mb * 2**20
    monkeypatch.setattr(comfy.model_management, "get_free_memory", free_memory)
    saved = SavedForBackward({"": 2**20, "a": 3 * 2**20, "b": 5 * 2**20}, unit_inputs=2**20)
    decided = auto_decision(torch.device("cuda"), lambda: saved)
    assert decided["gradient_checkpointing"] is expected and decided["free_memory_mb"] == free_mb
    assert decided["kept_without_checkpointing_mb"] == 9 + 2 * 5      # all saved, plus two units' working room
    assert ("on" if expected else "off") in decided["checkpointing_reason"]
    assert auto_decision(torch.device("cpu"), lambda: pytest.fail("a CPU needs no measurement"))[
        "gradient_checkpointing"] is True


def test_what_a_step_keeps_grows_with_the_latent():
    from cad_pack.nodes.bridge.activation_memory import measure_saved_for_backward
    mp = build("sd15", seed=3, scale=0.1, inference=False)   # ordinary weights: a plain forward may save them
    unet = mp.model.diffusion_model
    context = conditioning("sd15", 1)[0][0]

    def forward(side):
        x = torch.zeros((1, 4, side, side), requires_grad=True)   # a graph through every layer
        return lambda: unet(x, timesteps=torch.tensor([500.0]), context=context.clone())
    with torch.inference_mode(False):
        small = measure_saved_for_backward(unet, forward(8)).kept_bytes(False)
        large = measure_saved_for_backward(unet, forward(16)).kept_bytes(False)
    # 4x the pixels: 4x the convolutions' activations, 16x the attention maps'
    assert small > 0 and 4 * small < large < 16 * small

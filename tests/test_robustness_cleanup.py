"""attribute_model on a real ModelPatcher, stopped half-way: by a cancel (the way ComfyUI's progress
hook raises it, and the way comfy ops raise it mid-forward), by NaN predictions, and by an error
inside the UNet call. Each must leave the shared model exactly as clean as a finished run: no
weight wrapper, no requires_grad, no .grad, no patch, nothing kept alive, identical sampling.
"""
import gc

import pytest
import torch

import comfy.model_management as mm
import comfy.model_patcher
from cad_pack.cad_core import AttributionRequest, CADError, GradientAccumulator
from cad_pack.nodes.bridge import GradProbe, attribute_model

from tiny_models import assert_untouched, conditioning, empty_latent, tiny_sd15
from tiny_models import sample as sample_tiny

POS, BASE = conditioning(1), conditioning(2)
STEPS = 3


def attribute(mp, objective="concept_gap", schedule="single", on_progress=None):
    request = AttributionRequest(objective=objective, steps=STEPS, scope="ff+attention", schedule=schedule)
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return attribute_model(mp, POS, BASE, empty_latent(), request, on_progress=on_progress)


def attribute_like_comfy(mp, **kw):
    """Run as ComfyUI's executor does: the exception is caught and handed back, not re-raised."""
    try:
        attribute(mp, **kw)
    # ComfyUI 0.33 made InterruptProcessingException a BaseException (0.3.75: an Exception); the executor
    # catches it by name, so must this.
    except (Exception, mm.InterruptProcessingException) as ex:  # noqa: BLE001
        return ex
    return None


def sample(mp, seed=11):
    return sample_tiny(mp, POS, BASE, steps=2, seed=seed)


def alive(cls):
    return sum(1 for o in gc.get_objects() if type(o) is cls)


def assert_clean(mp, weights_before, image_before):
    assert_untouched(mp, weights_before)
    # ComfyUI's loaded-model list holds the user's patcher for this model, never a leftover gradient clone.
    assert all(lm.model is None or lm.model is mp or lm.model.model is not mp.model for lm in mm.current_loaded_models)
    assert torch.equal(sample(mp), image_before)


@pytest.fixture
def model():
    mp = tiny_sd15(seed=21)
    weights = {k: v.clone() for k, v in mp.model.state_dict().items()}
    return mp, weights, sample(mp)


def interrupt_by_progress_hook(at):
    """What comfy.utils.ProgressBar's hook does after POST /interrupt: raise at the next update."""
    seen = []

    def on_progress(done, total):
        seen.append(done)
        if done == at:
            raise mm.InterruptProcessingException()
    return on_progress, seen


def interrupt_by_flag(at):
    """POST /interrupt sets a flag; the next comfy op (mid-forward) raises."""
    seen = []

    def on_progress(done, total):
        seen.append(done)
        if done == at:
            mm.interrupt_current_processing(True)
    return on_progress, seen


@pytest.mark.parametrize("how,objective,schedule", [
    (interrupt_by_progress_hook, "concept_gap", "single"),
    (interrupt_by_flag, "concept_likelihood", "single"),
    (interrupt_by_flag, "concept_gap", "reference"),
], ids=["hook-gap", "flag-likelihood", "flag-gap-reference"])
def test_cancel_mid_attribution_leaves_the_model_clean(model, how, objective, schedule):
    mp, weights, image = model
    on_progress, seen = how(at=2)
    gc.collect()
    gc.disable()  # anything still alive below is kept by a reference, not waiting for the cycle collector
    try:
        probes, accumulators = alive(GradProbe), alive(GradientAccumulator)
        ex = attribute_like_comfy(mp, objective=objective, schedule=schedule, on_progress=on_progress)
        assert isinstance(ex, mm.InterruptProcessingException), repr(ex)
        assert seen[-1] == 2, seen  # it stopped where it was cancelled, not at the end
        del ex
        assert (alive(GradProbe), alive(GradientAccumulator)) == (probes, accumulators)
        assert not [o for o in gc.get_objects() if type(o) is comfy.model_patcher.ModelPatcher and o is not mp
                    and o.weight_wrapper_patches]
    finally:
        gc.enable()
        mm.interrupt_current_processing(False)
    assert_clean(mp, weights, image)


def test_attribution_after_a_cancel_equals_one_on_an_untouched_twin(model):
    mp, _, _ = model
    on_progress, _ = interrupt_by_flag(at=1)
    try:
        assert isinstance(attribute_like_comfy(mp, on_progress=on_progress), mm.InterruptProcessingException)
    finally:
        mm.interrupt_current_processing(False)
    got, expected = attribute(mp), attribute(tiny_sd15(seed=21))
    assert got.scores.keys() == expected.scores.keys()
    assert all(torch.equal(got.scores[k], expected.scores[k]) for k in expected.scores)


def nan_wrapper(apply_model, args):
    return apply_model(args["input"], args["timestep"], **args["c"]) * float("nan")


def failing_wrapper(after):
    calls = []

    def wrapper(apply_model, args):
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("simulated failure inside the UNet call")
        return apply_model(args["input"], args["timestep"], **args["c"])
    return wrapper


def test_nan_predictions_raise_a_clear_error_and_leave_the_model_clean(model):
    mp, weights, image = model
    broken = mp.clone()  # a test-only model: same weights, every prediction NaN
    broken.set_model_unet_function_wrapper(nan_wrapper)
    gc.collect()
    gc.disable()
    try:
        probes, accumulators = alive(GradProbe), alive(GradientAccumulator)
        ex = attribute_like_comfy(broken)
        assert isinstance(ex, CADError), repr(ex)
        message = str(ex)
        assert "became nan" in message and "NaN/inf predictions" in message, message
        del ex
        assert (alive(GradProbe), alive(GradientAccumulator)) == (probes, accumulators)
    finally:
        gc.enable()
    del broken
    assert_clean(mp, weights, image)


def test_error_inside_the_unet_call_leaves_the_model_clean(model):
    mp, weights, image = model
    broken = mp.clone()
    broken.set_model_unet_function_wrapper(failing_wrapper(after=3))
    ex = attribute_like_comfy(broken)
    assert isinstance(ex, RuntimeError) and "simulated failure" in str(ex)
    del ex, broken
    assert_clean(mp, weights, image)

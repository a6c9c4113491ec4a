"""What memory_budget_mb counts besides per-weight state: the bytes one differentiated step keeps for backward,
measured by a forward that drops what it would save (nodes/bridge/activation_memory.py). Checked against a real
differentiated forward that keeps everything, on reduced models of several families."""
import pytest
import torch

from cad_pack.cad_core import AttributionRequest, resolve_scope
from cad_pack.nodes.bridge import attribute_model, differentiable_source, patchable_weights
from cad_pack.nodes.bridge.activation_memory import OUTSIDE
from cad_pack.nodes.bridge.attribution import measure_activations

from scripts.family_models import build, conditioning, family_latent


class KeptForBackward:
    """Reference: every tensor autograd saves is kept (as in a real run) and each storage counted once, except the
    model's own parameters."""

    def __init__(self, diffusion_model):
        self.diffusion_model, self.storages, self.params, self.alive = diffusion_model, {}, None, []

    def pack(self, t):
        if self.params is None:     # read during the run: CAD swaps some plain parameters for copies while it runs
            self.params = {p.untyped_storage().data_ptr() for p in (*self.diffusion_model.parameters(),
                                                                    *self.diffusion_model.buffers())}
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params:
            self.storages[storage.data_ptr()] = storage.nbytes()
            self.alive.append(t)    # kept past its step's backward, so that no later tensor reuses its address
        return t

    @property
    def total(self):
        return sum(self.storages.values())


def measured(mp, family):
    latent = family_latent(family)[0]
    keys = resolve_scope(patchable_weights(mp), "ff")
    with torch.inference_mode(), differentiable_source(mp) as source:
        return measure_activations(mp, conditioning(family, 1), conditioning(family, 2), latent, source=source,
                                   keys=keys, guidance=3.0, seed=0)


def kept_per_step(mp, family, steps=2):
    """Two steps (a flow model's first step alone does not depend on its weights), averaged."""
    reference = KeptForBackward(mp.model.diffusion_model)
    with torch.inference_mode(), torch.autograd.graph.saved_tensors_hooks(reference.pack, lambda t: t):
        attribute_model(mp, conditioning(family, 1), conditioning(family, 2), family_latent(family)[0],
                        AttributionRequest(steps=steps, gradient_checkpointing="off"))
    return reference.total / steps


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux", "wan22"])
def test_measurement_matches_what_a_differentiated_step_keeps(family):
    mp = build(family, seed=3, scale=0.1)
    saved = measured(mp, family)
    reference = kept_per_step(mp, family)   # one differentiated forward per step + the objective's few tensors
    assert reference > 0
    assert 0.9 * reference <= saved.kept_bytes(checkpointed=False) <= 1.05 * reference, (saved, reference)


@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_checkpointing_keeps_one_block_instead_of_all(family):
    mp = build(family, seed=3, scale=0.1)
    saved = measured(mp, family)
    units = [name for name in saved.by_unit if name != OUTSIDE]
    assert len(units) >= 4                      # every block was seen running
    everything, one_block = saved.kept_bytes(False), saved.kept_bytes(True)
    assert saved.largest_unit < one_block < 0.6 * everything
    # two differentiated forwards per step (concept_gap_full) keep two forwards' worth, but recompute one block
    assert saved.kept_bytes(False, forwards=2) == 2 * everything
    assert saved.kept_bytes(True, forwards=2) == 2 * one_block - saved.largest_unit
    assert saved.peak_bytes(True) == one_block + 2 * saved.largest_unit
    assert saved.peak_bytes(False) == everything + 2 * saved.largest_unit

"""CAD Attribute on a ComfyUI MODEL: the core driver (cad_core.driver) with ComfyUI as its backend. Each pass is
cad_core.attribute() run through ComfyUI's own CFGGuider (guided_run.py) on a differentiable clone with gradient
probes; the driver plans the passes under a memory budget and joins them."""
import contextlib
import logging

import torch

import comfy.samplers

from ...cad_core import CADError, attribute, objective_named, seeded_noise
from ...cad_core.driver import attribute_request
from ...cad_core.request import DEFAULT_REQUEST, AttributionRequest
from ...cad_core.trajectory import loss_scale_for
from .activation_memory import measure_saved_for_backward
from .checkpointing import checkpointing_setting
from .differentiable import differentiable_source
from .guided_run import AttributionSampler, sample_on_gradient_clone
from .model_info import (check_conditioning, compute_dtype_of, fingerprint_of, parameterization_of,
                         patchable_weights, same_conditioning, sampler_latent)
from .probes import GraphProbe, ProbeCapture
from .scope_regex import bounded_matcher

SCHEDULER = "normal"


def attribute_model(model, positive, base, latent, request: AttributionRequest = DEFAULT_REQUEST, *,
                    concept_latent=None, on_progress=None):
    """CAD attribution of `model` for the concept in `positive` against `base`, as `request` asks (a memory budget
    included); never modifies `model`."""
    check_conditioning(model, positive, base)
    if objective_named(request.objective).contrasts_base and same_conditioning(positive, base):
        raise CADError(
            f"'positive' and 'base' are the same conditioning, so {request.objective} compares the concept with "
            f"itself: it is 0 at every step and every score would be 0. Connect the concept's prompt (e.g. 'a photo "
            f"of a cat') to positive and what it is measured against (usually the empty prompt) to base.")
    return attribute_request(ComfyBackend(model, positive, base, latent, request, concept_latent), request,
                             on_progress)


class ComfyBackend:
    """cad_core.driver.AttributionBackend for a ComfyUI MODEL and the conditioning of one request."""

    def __init__(self, model, positive, base, latent, request: AttributionRequest, concept_latent=None):
        self.model, self.positive, self.base, self.latent = model, positive, base, latent
        self.request, self.concept_latent = request, concept_latent
        self.on_cpu = torch.device(model.load_device).type == "cpu"
        self.source = None

    def patchable_weights(self):
        return patchable_weights(self.model)

    def regex_matcher(self, regex):
        return bounded_matcher(regex)

    def checkpointing(self, setting):
        return checkpointing_setting(setting, [k for k, _ in self.patchable_weights()])

    @contextlib.contextmanager
    def session(self):
        """One differentiable source (a non-dynamic reload under Dynamic VRAM) for the measurement and all passes."""
        with differentiable_source(self.model) as source:
            self.source = source
            try:
                yield
            finally:
                self.source = None

    def measure_activations(self, keys):
        return measure_activations(self.model, self.positive, self.base, self.latent, source=self.source, keys=keys,
                                   guidance=self.request.guidance, seed=self.request.seed,
                                   concept_latent=self.concept_latent)

    def run_pass(self, keys, checkpointing, on_progress):
        try:
            return self._pass(keys, checkpointing, on_progress, private_saves=False)
        except RuntimeError as e:
            if "modified by an inplace operation" not in str(e):
                raise
        # Some models update a tensor in place after an op saved it for backward (LTX-Video's blocks add the
        # attention outputs into their residual stream with addcmul_/+=), which autograd refuses. The failure comes
        # at the first backward pass, so little work is lost; the pass starts over with private copies of every
        # saved tensor (more memory for activations, same scores). Checkpointing cannot see such updates in its
        # recomputation; families with records do not make them.
        logging.info("CAD: this model updates tensors in place during its forward pass; attributing again with "
                     "private copies of the tensors autograd saves.")
        return self._pass(keys, False, on_progress, private_saves=True)

    def _pass(self, keys, checkpointing, on_progress, private_saves):
        model, request = self.model, self.request
        shapes = dict(self.patchable_weights())
        latent_image = sampler_latent(model, self.latent)[:1]
        images = sampler_latent(model, self.concept_latent) if self.concept_latent is not None else None
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), SCHEDULER,
                                                 request.steps).float()
        fingerprint, parameterization = fingerprint_of(model), parameterization_of(model)
        result, decided = {}, {}   # decided: what the sampler chose for this pass (no reference to the sampler
        # itself, which holds this closure: a cycle would keep the probes alive after a cancel)

        def sampler_for(grad_model, probes):
            capture = ProbeCapture(probes, shapes, grad_model.load_device)

            def run(concept, base_fn, sigmas_dev, noise, processed_latent):
                # Sample 0's first trajectory uses the seed itself, as KSampler would.
                draw = seeded_noise((1, *noise.shape[1:]), request.seed)
                given = processed_latent if images is not None else None
                result["attribution"] = attribute(
                    capture, concept, base_fn, sigmas=sigmas_dev, parameterization=parameterization,
                    objective=request.objective, guidance=request.guidance, schedule=request.schedule,
                    make_noise=lambda sample, restart: draw(sample, restart).to(noise),
                    samples=request.samples if given is None else max(request.samples, len(given)),  # every image
                    images=given, loss_scale=loss_scale_for(compute_dtype_of(model), noise[0].numel()),
                    on_progress=on_progress, fingerprint=fingerprint, refuse_all_zero=False,
                    info_fields={"sampler": f"ddim (deterministic), scheduler {SCHEDULER}", **decided,
                                 "latent_shape": tuple(latent_image.shape)})
                return processed_latent
            return AttributionSampler(run, grad_model, private_saves, checkpointing, decided)

        start = images if images is not None else latent_image
        sample_on_gradient_clone(model, self.source, keys, self.positive, self.base, request.guidance, request.seed,
                                 start, sigmas, sampler_for)
        return result["attribution"]


def measure_activations(model, positive, base, latent, *, source, keys, guidance, seed, concept_latent=None):
    """What one differentiated step of an attribution of `keys` keeps for its backward pass
    (activation_memory.SavedForBackward), measured by one differentiated forward on the run's latent size."""
    start = sampler_latent(model, concept_latent if concept_latent is not None else latent)[:1]
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), SCHEDULER, 1).float()
    measured = {}

    def sampler_for(grad_model, probes):
        def run(concept, base_fn, sigmas_dev, noise, processed_latent):
            x = processed_latent[:1].to(noise)
            measured["saved"] = measure_saved_for_backward(grad_model.model.diffusion_model,
                                                           lambda: concept(x, sigmas_dev[0]))
            return processed_latent
        return AttributionSampler(run, grad_model, checkpointing=False)

    sample_on_gradient_clone(model, source, keys, positive, base, guidance, seed, start, sigmas, sampler_for,
                             probe_type=GraphProbe)
    return measured["saved"]

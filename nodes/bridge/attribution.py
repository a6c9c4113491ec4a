"""CAD Attribute on a ComfyUI MODEL: cad_core.attribute() run through ComfyUI's own CFGGuider (conditioning is
prepared exactly as KSampler prepares it), on a differentiable clone with gradient probes, under a memory budget
in chunks when asked."""
import logging
from contextlib import nullcontext

import torch

import comfy.model_management
import comfy.samplers

from ...cad_core import CADError, attribute, objective_named, resolve_scope, seeded_noise
from ...cad_core.attribution import check_not_all_zero
from ...cad_core.scopes import scope_notice
from ...cad_core.budget import MB, join_chunks, plan_chunks, scope_bytes
from ...cad_core.trajectory import loss_scale_for
from .checkpointing import auto_decision, blocks_checkpointed, checkpointing_setting
from .differentiable import (differentiable_source, kernels_with_backward, ordinary_copies_of_plain_parameters,
                             saved_tensor_copies)
from .model_info import (check_conditioning, compute_dtype_of, fingerprint_of, parameterization_of,
                         patchable_weights, same_conditioning, sampler_latent)
from .activation_memory import measure_saved_for_backward
from .probes import (GradProbe, GraphProbe, ProbeCapture, cad_wrappers_lifted, install_missing_cad_wrappers, install_probes,
                     modules_with_cad_wrappers, probes_must_see_their_modules, remove_cad_wrappers)
from .scope_regex import bounded_matcher

SCHEDULER = "normal"


class AttributionSampler(comfy.samplers.Sampler):
    """Runs cad_core's visiting loop with conditioning prepared exactly as KSampler prepares it.

    patcher: the gradient clone whose CAD wrappers must be on its modules once ComfyUI has loaded it.
    private_saves: every tensor autograd saves during a differentiated forward is a private copy (models that
    update a tensor in place after saving it, see saved_tensor_copies).
    checkpointing: True/False, or "auto" (decided here, once the model is loaded: checkpointing.auto_decision).
    Differentiated forwards then keep only each block's inputs and recompute the rest in the backward pass.
    decided: what the run did (checkpointing, activation estimate, free memory), for the attribution's metadata.
    """

    def __init__(self, run, patcher=None, private_saves=False, checkpointing=False, decided=None):
        self.run, self.patcher, self.private_saves, self.checkpointing = run, patcher, private_saves, checkpointing
        self.decided = {} if decided is None else decided

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        inner, conds, options = model_wrap.inner_model, model_wrap.conds, extra_args["model_options"]

        if self.patcher is not None:  # ComfyUI has loaded the model by now
            install_missing_cad_wrappers(self.patcher)
        wrapped = modules_with_cad_wrappers(inner.diffusion_model)

        def predictor(name):
            def predict(x, sigma):
                x = x.to(noise.device)
                x = x.clone() if x.is_inference() else x
                s = sigma.reshape(1).to(x).expand(x.shape[0])
                if torch.is_grad_enabled():
                    with kernels_with_backward(), saved_tensor_copies(self.private_saves):
                        return comfy.samplers.calc_cond_batch(inner, [conds[name]], x, s, options)[0]
                with cad_wrappers_lifted(wrapped):
                    return comfy.samplers.calc_cond_batch(inner, [conds[name]], x, s, options)[0]
            return predict

        # Clones: tensors made under inference mode (sigmas, latents) cannot be saved for backward; so
        # are the parameters outside comfy ops (DiT RMSNorm scales), which no weight wrapper reaches.
        with ordinary_copies_of_plain_parameters(inner.diffusion_model):
            checkpointing = self.checkpointing
            if checkpointing == "auto":     # measured by one differentiated forward that keeps nothing
                start = latent_image[:1].to(noise.device)
                self.decided.update(auto_decision(noise.device, lambda: measure_saved_for_backward(
                    inner.diffusion_model, lambda: predictor("positive")(start, sigmas[0].clone()))))
                checkpointing = self.decided["gradient_checkpointing"]
            self.decided["gradient_checkpointing"] = bool(checkpointing)
            with blocks_checkpointed(inner.diffusion_model, checkpointing):
                return self.run(predictor("positive"), predictor("negative"), sigmas.clone(), noise,
                                latent_image.clone())


def attribute_model(model, positive, base, latent, *, objective, steps, guidance, seed, samples, scope,
                    scope_regex="", schedule="single", concept_latent=None, on_progress=None, source=None,
                    keys=None, gradient_checkpointing="auto"):
    """CAD attribution of `model` for the concept in `positive` against `base`; never modifies `model`.

    source: the differentiable_source of `model` when the caller runs several passes (chunks) over it.
    keys: the part of the scope this pass scores (a chunk, from attribute_with_budget); default: all of it.
    gradient_checkpointing: "auto", "on" or "off" (checkpointing.py); the scores are the same either way.
    """
    if source is None:
        with differentiable_source(model) as own_source:
            return attribute_model(model, positive, base, latent, objective=objective, steps=steps, guidance=guidance,
                                   seed=seed, samples=samples, scope=scope, scope_regex=scope_regex,
                                   schedule=schedule, concept_latent=concept_latent, on_progress=on_progress,
                                   source=own_source, keys=keys, gradient_checkpointing=gradient_checkpointing)
    checkpointing = checkpointing_setting(gradient_checkpointing, [k for k, _ in patchable_weights(model)])
    run = dict(model=model, positive=positive, base=base, latent=latent, objective=objective, steps=steps,
               guidance=guidance, seed=seed, samples=samples, scope=scope, scope_regex=scope_regex, schedule=schedule,
               concept_latent=concept_latent, on_progress=on_progress, source=source, keys=keys,
               checkpointing=checkpointing)
    try:
        return _attribution_pass(**run, private_saves=False)
    except RuntimeError as e:
        if "modified by an inplace operation" not in str(e):
            raise
    # Some models update a tensor in place after an op saved it for backward (LTX-Video's blocks add the
    # attention outputs into their residual stream with addcmul_/+=), which autograd refuses. The failure comes at
    # the first backward pass, so little work is lost; the run starts over with private copies of every saved
    # tensor (more memory for activations, same scores).
    logging.info("CAD: this model updates tensors in place during its forward pass; attributing again with "
                 "private copies of the tensors autograd saves.")
    # Checkpointing cannot see such updates in its recomputation; families with records do not make them.
    return _attribution_pass(**{**run, "checkpointing": False}, private_saves=True)


def _attribution_pass(model, positive, base, latent, *, objective, steps, guidance, seed, samples, scope,
                      scope_regex, schedule, concept_latent, on_progress, source, keys, private_saves,
                      checkpointing):
    available = patchable_weights(model)
    whole_scope = keys is None    # a chunk's scores may all be 0; attribute_with_budget checks the joined ones
    keys = resolve_scope(available, scope, scope_regex, bounded_matcher) if keys is None else list(keys)
    notice = scope_notice(available, scope, keys) if whole_scope else ""
    if notice:
        logging.warning("CAD: %s", notice)
    shapes = dict(available)
    fingerprint = fingerprint_of(model)
    latent_image = sampler_latent(model, latent)[:1]
    images = None
    if concept_latent is not None:
        images = sampler_latent(model, concept_latent)
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).float()
    parameterization = parameterization_of(model)

    result, decided = {}, {}   # decided: what the sampler chose for this run (no reference to the sampler
    # itself, which holds this closure: a cycle would keep the probes alive after a cancel)

    def sampler_for(grad_model, probes):
        capture = ProbeCapture(probes, shapes, grad_model.load_device)

        def run(concept, base_fn, sigmas_dev, noise, processed_latent):
            # Sample 0's first trajectory uses the seed itself, as KSampler would.
            draw = seeded_noise((1, *noise.shape[1:]), seed)
            given = processed_latent if images is not None else None
            result["attribution"] = attribute(
                capture, concept, base_fn, sigmas=sigmas_dev, parameterization=parameterization, objective=objective,
                guidance=guidance, schedule=schedule, make_noise=lambda sample, restart: draw(sample, restart).to(noise),
                samples=samples if given is None else max(samples, len(given)),  # every concept image counts
                images=given, loss_scale=loss_scale_for(compute_dtype_of(model), noise[0].numel()),
                on_progress=on_progress, fingerprint=fingerprint, refuse_all_zero=whole_scope,
                meta={"scope": scope, "scope_regex": scope_regex, "seed": seed, **({"scope_notice": notice} if notice else {}),
                      "sampler": f"ddim (deterministic), scheduler {SCHEDULER}",
                      **decided,
                      "latent_shape": list(latent_image.shape)})
            return processed_latent
        return AttributionSampler(run, grad_model, private_saves, checkpointing, decided)

    start = images if images is not None else latent_image
    _sample_on_gradient_clone(model, source, keys, positive, base, guidance, seed, start, sigmas, sampler_for)
    return result["attribution"]


def _sample_on_gradient_clone(model, source, keys, positive, base, guidance, seed, start, sigmas, sampler_for,
                              probe_type=GradProbe):
    """Run ComfyUI's CFGGuider with the sampler `sampler_for(grad_model, probes)` on a clone of `source` whose
    scoped weights carry probes of `probe_type` (and every other weight a CopyForBackward); the clone's wrappers
    are removed afterwards, whatever happened."""
    with torch.inference_mode(False):
        model.model.requires_grad_(False)
        source.model.requires_grad_(False)
        grad_model = source.clone()
        probes = install_probes(grad_model, keys, probe_type)
        try:
            guider = comfy.samplers.CFGGuider(grad_model)
            guider.set_conds(positive, base)
            guider.set_cfg(guidance)
            sampler = sampler_for(grad_model, probes)
            watch = probes_must_see_their_modules(grad_model, probes) if probe_type is GradProbe else nullcontext()
            with watch:
                guider.sample(torch.zeros_like(start), start, sampler, sigmas, seed=seed, disable_pbar=True)
        finally:
            remove_cad_wrappers(grad_model)
            del grad_model
            comfy.model_management.soft_empty_cache()


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

    _sample_on_gradient_clone(model, source, keys, positive, base, guidance, seed, start, sigmas, sampler_for,
                              probe_type=GraphProbe)
    return measured["saved"]



# --- under a memory budget: the scope in chunks, one attribution pass per chunk --------------------------------
# Every pass uses the same seed, so it samples the same trajectories, and the joined scores equal a single-pass
# run's. See cad_core/budget.py for what the budget counts.

def _scoped_shapes(model, scope: str, scope_regex: str) -> tuple[list, list]:
    """The model's patchable weights and, in model order, the (key, shape) pairs `scope` selects from them."""
    available = patchable_weights(model)
    shapes = dict(available)
    return available, [(k, shapes[k]) for k in resolve_scope(available, scope, scope_regex, bounded_matcher)]


def plan_passes(model, scope: str, scope_regex: str, memory_budget_mb: float, activation_bytes: int = 0) -> list[list[str]]:
    """The chunks (lists of weight keys, model order) one attribution of `scope` is split into, when one
    differentiated step keeps `activation_bytes` for its backward pass."""
    _, named = _scoped_shapes(model, scope, scope_regex)
    return plan_chunks(named, (memory_budget_mb or 0) * MB, activation_bytes)


def plan_under_budget(model, positive, base, latent, source, memory_budget_mb, *, scope, scope_regex, objective,
                      guidance, seed, concept_latent=None, gradient_checkpointing="auto") -> dict:
    """How an attribution fits memory_budget_mb: measures what one differentiated step keeps for backward (one
    differentiated forward), then plans the chunks. With gradient_checkpointing `auto` both ways are planned and the
    one with fewer passes is taken (on a tie: on for a CPU, where it costs little; off on a GPU, where it costs a
    forward per step). Returns chunks, the checkpointing setting to run with, activation bytes and the reason."""
    available, named = _scoped_shapes(model, scope, scope_regex)
    keys = [k for k, _ in named]
    saved = measure_activations(model, positive, base, latent, source=source, keys=keys, guidance=guidance,
                                seed=seed, concept_latent=concept_latent)
    forwards = objective_named(objective).differentiated_forwards
    setting = checkpointing_setting(gradient_checkpointing, [k for k, _ in available])
    options = [False, True] if setting == "auto" else [setting]
    plans, refusals = [], []
    for checkpointed in options:
        activation = saved.peak_bytes(checkpointed, forwards)
        try:
            plans.append((checkpointed, activation, plan_chunks(named, memory_budget_mb * MB, activation)))
        except CADError as e:
            refusals.append((activation, e))
    if not plans:
        raise min(refusals, key=lambda r: r[0])[1]      # the message of the way that needs the least
    on_cpu = torch.device(model.load_device).type == "cpu"
    checkpointed, activation, chunks = min(plans, key=lambda p: (len(p[2]), p[0] != on_cpu))
    reason = None
    if setting == "auto":
        others = [f"{'on' if c else 'off'} would need {len(p)}" for c, _, p in plans if c != checkpointed]
        reason = (f"memory budget: {'on' if checkpointed else 'off'}, {len(chunks)} pass(es)"
                  + "".join(f"; {o}" for o in others))
    return {"chunks": chunks, "gradient_checkpointing": "on" if checkpointed else "off", "activation_bytes": activation,
            "reason": reason}


def attribute_with_budget(model, positive, base, latent, *, memory_budget_mb=0, on_progress=None, **kwargs):
    """attribute_model, within memory_budget_mb: what one differentiated step keeps for backward is measured first,
    and the scope is split into passes when its per-weight state would not fit in what is left.

    memory_budget_mb <= 0 (the default) means no limit: exactly one attribute_model call, nothing measured.
    """
    if memory_budget_mb is None or memory_budget_mb < 0:
        raise CADError(f"memory_budget_mb must be 0 (no limit) or a positive number of MB, got {memory_budget_mb!r}.")
    check_conditioning(model, positive, base)
    if objective_named(kwargs.get("objective", "concept_gap")).contrasts_base and same_conditioning(positive, base):
        raise CADError(
            f"'positive' and 'base' are the same conditioning, so {kwargs.get('objective')} compares the concept "
            f"with itself: it is 0 at every step and every score would be 0. Connect the concept's prompt (e.g. 'a "
            f"photo of a cat') to positive and what it is measured against (usually the empty prompt) to base.")
    kwargs = {"scope": "ff", "objective": "concept_gap", **kwargs}  # the node's defaults
    if not memory_budget_mb:
        return attribute_model(model, positive, base, latent, on_progress=on_progress, **kwargs)

    scope, scope_regex = kwargs["scope"], kwargs.get("scope_regex", "") or ""
    shapes = dict(patchable_weights(model))
    with differentiable_source(model) as source:  # one reload under Dynamic VRAM for the measurement and all passes
        plan = plan_under_budget(model, positive, base, latent, source, memory_budget_mb, scope=scope,
                                 scope_regex=scope_regex, objective=kwargs["objective"], guidance=kwargs["guidance"],
                                 seed=kwargs["seed"], concept_latent=kwargs.get("concept_latent"),
                                 gradient_checkpointing=kwargs.get("gradient_checkpointing", "auto"))
        chunks, run_kwargs = plan["chunks"], {**kwargs, "gradient_checkpointing": plan["gradient_checkpointing"]}
        passes, parts = len(chunks), []
        for i, chunk in enumerate(chunks):
            def progress(done, total, offset=i):
                if on_progress is not None:
                    on_progress(offset * total + done, passes * total)
            parts.append(attribute_model(model, positive, base, latent, on_progress=progress, source=source,
                                         keys=chunk if passes > 1 else None, **run_kwargs))
    budget_meta = {"memory_budget_mb": memory_budget_mb, "activation_mb": round(plan["activation_bytes"] / MB, 3),
                   "peak_scope_mb": round(max(scope_bytes([shapes[k] for k in c]) for c in chunks) / MB, 3),
                   **({"checkpointing_reason": plan["reason"]} if plan["reason"] else {})}
    if passes == 1:
        parts[0].meta.update(budget_meta)
        return parts[0]
    notice = scope_notice(patchable_weights(model), scope, [k for c in chunks for k in c])
    joined = join_chunks(parts, {
        **({"scope_notice": notice} if notice else {}),
        "scope": scope, "scope_regex": scope_regex, "chunk_sizes": [len(c) for c in chunks], **budget_meta})
    check_not_all_zero(joined)
    return joined

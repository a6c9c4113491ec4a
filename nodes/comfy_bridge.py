"""Everything that touches ComfyUI internals: gradient probes under inference mode, the custom
sampler that runs CAD's trajectory through CFGGuider, and the weight adapter that applies masks.

ComfyUI runs every node under torch.inference_mode() and loaders create weights as inference
tensors, which autograd refuses to save. Attribution therefore runs on a clone of the MODEL inside
inference_mode(False), with weight wrappers: probes on the scoped weights (identity in value,
capture dJ/dW) and copy-forcing identity wrappers on every other weight so downstream layers get
private tensors they may save for backward. Under ComfyUI's Dynamic VRAM (0.33+, on by default on
GPUs) the clone is a non-dynamic reload of the model (see differentiable_source). Nodes stay thin;
they call the functions at the end.
"""
import contextlib
import inspect
import logging

import torch

import comfy.model_management
import comfy.ops
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy.weight_adapter import WeightAdapterBase

from ..cad_core import (Attribution, CADError, GradientCapture, Mask, attribute, seeded_noise,
                        model_fingerprint, resolve_scope, scale_selected, verify_ablation)
from ..cad_core.objectives import base_predictions, measure_objective
from ..cad_core.trajectory import loss_scale_for
from ..cad_core.noise import FlowMatching, VarianceExploding
from .autograd_safe import ordinary_copies_of_plain_parameters

PREFIX = "diffusion_model."
SCHEDULER = "normal"


# --- model inspection ---------------------------------------------------------------------------

def patchable_weights(model) -> list[tuple[str, tuple]]:
    """(key, shape) of every weight and bias ComfyUI can wrap or patch at op time, in model order."""
    return op_weight_shapes(model.model.diffusion_model)


def op_weight_shapes(diffusion_model: torch.nn.Module) -> list[tuple[str, tuple]]:
    """patchable_weights of a bare diffusion model (also one built on the meta device)."""
    out = []
    for name, module in diffusion_model.named_modules():
        if isinstance(module, comfy.ops.CastWeightBiasOp):
            for attr in ("weight", "bias"):
                p = getattr(module, attr, None)
                if p is not None:
                    out.append((f"{PREFIX}{name}.{attr}", tuple(p.shape)))
    return out


def original_weight(model, key: str) -> torch.Tensor:
    """The checkpoint's weight, even while the module currently holds a patched copy."""
    backup = model.backup.get(key)
    return backup.weight if backup is not None else comfy.utils.get_attr(model.model, key)


def fingerprint_of(model) -> str:
    named = [(f"{PREFIX}{n}", tuple(p.shape)) for n, p in model.model.diffusion_model.named_parameters()]
    if not named:
        raise CADError("This MODEL has no diffusion-model weights to fingerprint.")
    return model_fingerprint(named, lambda key: original_weight(model, key))


def check_fingerprint(model, fingerprint: str, what: str) -> None:
    actual = fingerprint_of(model)
    if fingerprint != actual:
        raise CADError(f"This {what} was made for another model (its fingerprint {fingerprint}, this MODEL "
                       f"{actual}). Connect the checkpoint it was made for, or attribute this model again.")


def parameterization_of(model):
    """How sampling mixes noise into latents, which the objectives need to recover eps from x0.

    apply_model returns x0 for every prediction type, so only the noising form matters: eps, v, EDM and
    x0 models use x_t = x0 + sigma*eps; rectified-flow models (SD3, Flux, AuraFlow, ...) use
    x_t = (1-sigma)*x0 + sigma*eps. The form is read off the model's own noise_scaling at two sigmas, never
    from its class: ComfyUI 0.33's IMG_TO_IMG_FLOW subclasses CONST (flow) but does not noise at all, and a CONST
    with a noise_scale != 1 noises differently too. A form that is neither is refused rather than guessed.
    """
    ms = model.get_model_object("model_sampling")
    forms = set()
    for sigma in (0.5, 0.25):
        noise_part, image_part = _noise_scaling_coefficients(ms, sigma)
        if _close(noise_part, sigma) and _close(image_part, 1.0):
            forms.add("variance_exploding")
        elif _close(noise_part, sigma) and _close(image_part, 1.0 - sigma):
            forms.add("flow")
        else:
            forms.add(f"x_t = {image_part:.4g}*x0 + {noise_part:.4g}*eps at sigma {sigma}")
    if forms == {"variance_exploding"}:
        return VarianceExploding()
    if forms == {"flow"}:
        return FlowMatching()
    raise CADError(
        f"CAD cannot attribute this model: its sampling type ({type(ms).__name__}) mixes noise into latents "
        f"neither as x0 + sigma*eps (eps/v-prediction: SD1.x, SD2.x, SDXL) nor as (1-sigma)*x0 + sigma*eps "
        f"(flow matching: SD3, Flux), so the objectives cannot recover the predicted noise "
        f"(measured: {'; '.join(sorted(f for f in forms if f.startswith('x_t')))}).")


def _noise_scaling_coefficients(ms, sigma: float) -> tuple[float, float]:
    """(coefficient of eps, coefficient of x0) in ms.noise_scaling at `sigma`; NaN where it cannot be called."""
    s, one, zero = torch.tensor([sigma]), torch.ones((1, 1)), torch.zeros((1, 1))
    try:
        with torch.no_grad():
            noise_part = float(ms.noise_scaling(s, one.clone(), zero.clone(), False).reshape(-1)[0])
            image_part = float(ms.noise_scaling(s, zero.clone(), one.clone(), False).reshape(-1)[0])
    except Exception:  # noqa: BLE001 - any failure means the form is unknown
        return float("nan"), float("nan")
    return noise_part, image_part


def _close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-6


# --- gradient probes ------------------------------------------------------------------------------

class _CADWeightFunction:
    """Marker base for wrappers this pack installs, so they can always be removed again."""


class GradProbe(_CADWeightFunction):
    """Weight wrapper: returns W unchanged but puts it in the graph and captures dJ/dW.

    Adding a zero anchor (instead of making W a leaf) keeps autograd from allocating a W-sized .grad.
    The first W seen is kept (fp32, CPU): alpha multiplies the weight the model actually computes with,
    LoRA patches included.
    """

    def __init__(self, key, device):
        self.key, self.acc, self.value = key, None, None  # acc: set by ProbeCapture.capturing for the run
        self.anchor = torch.zeros((), device=device, requires_grad=True)

    def __call__(self, w):
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return w
        if self.value is None:
            self.value = w.detach().to("cpu", torch.float32, copy=True)
        w = w + self.anchor.to(dtype=w.dtype, device=w.device)
        w.register_hook(lambda g: self.acc.add(self.key, g))
        return w

    def move_to(self, device=None):
        if device is not None:
            self.anchor = self.anchor.detach().to(device).requires_grad_(True)
        return 0


class CopyForBackward(_CADWeightFunction):
    """Identity wrapper whose only job is to hand the layer a private tensor it may save for backward.

    ComfyUI 0.3.x casts a private copy whenever a weight function exists, but that copy can still be an
    inference tensor; Dynamic VRAM (0.33+) hands weight functions views of reused cast buffers, which the next
    layer's cast overwrites before backward reads them. Both are cloned; a private ordinary tensor is not.
    """

    def __call__(self, w):
        if torch.is_grad_enabled() and (w.is_inference() or w._base is not None):
            return w.clone()
        return w


class ProbeCapture(GradientCapture):
    """cad_core's GradientCapture for a ComfyUI model: GradProbe weight wrappers on the scoped weights."""

    def __init__(self, probes: dict, shapes: dict, device):
        self.probes, self.device = probes, device
        self.shapes = {k: tuple(shapes[k]) for k in probes}

    @contextlib.contextmanager
    def capturing(self, accumulator):
        for probe in self.probes.values():
            probe.acc = accumulator
        try:
            yield
        finally:
            for probe in self.probes.values():
                probe.acc = None

    def weights(self):
        """The weights as the probes saw them in the first forward pass (LoRA patches included). A scoped weight
        no forward pass used has zero gradient, so its alpha is zero whatever W is."""
        return {k: (p.value if p.value is not None else torch.zeros(self.shapes[k])) for k, p in self.probes.items()}


def _install_probes(grad_model, keys):
    probes, scoped, copier = {}, set(keys), CopyForBackward()
    for key, _ in patchable_weights(grad_model):
        if key in scoped:
            probes[key] = GradProbe(key, grad_model.load_device)
            grad_model.add_weight_wrapper(key, probes[key])
        else:
            grad_model.add_weight_wrapper(key, copier)
    return probes


def _module_and_attr(patcher, key):
    module_name, attr = key.rsplit(".", 1)
    return patcher.model.get_submodule(module_name), attr


def install_missing_cad_wrappers(grad_model) -> int:
    """Put back the CAD wrappers ComfyUI's loader left off a module; returns how many modules needed it.

    Weight wrappers reach a module only when ComfyUI's load installs them, and Dynamic VRAM (0.33+) installs
    them only on modules larger than 16 KiB: a small scoped module would run without its probe (alpha silently
    0) and a small unscoped one would hand autograd a shared weight. Called after ComfyUI has loaded the model.
    """
    repaired = 0
    for key, functions in grad_model.weight_wrapper_patches.items():
        ours = [f for f in functions if isinstance(f, _CADWeightFunction)]
        if not ours:
            continue
        module, attr = _module_and_attr(grad_model, key)
        installed = list(getattr(module, attr + "_function", None) or [])
        missing = [f for f in ours if not any(f is g for g in installed)]
        if missing:
            setattr(module, attr + "_function", installed + missing)
            repaired += 1
    if repaired:
        logging.info("CAD: ComfyUI loaded %d modules without CAD's weight wrappers (Dynamic VRAM skips modules "
                     "<= 16 KiB); installed them directly.", repaired)
    return repaired


@contextlib.contextmanager
def probes_must_see_their_modules(grad_model, probes):
    """Fail loudly instead of scoring 0: a scoped module that ran a differentiated forward without its probe
    being called means some ComfyUI path bypassed the weight wrappers."""
    ran, hooks = set(), []
    for key in probes:
        module, _ = _module_and_attr(grad_model, key)

        def seen(mod, args, key=key):
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                ran.add(key)
        hooks.append(module.register_forward_pre_hook(seen))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
    bypassed = sorted(k for k in ran if probes[k].value is None)
    if bypassed:
        raise CADError(
            f"ComfyUI ran {len(bypassed)} scoped layers without CAD's gradient probe (e.g. {bypassed[:3]}), so their "
            f"scores would be wrong. Please report this with your ComfyUI version; starting ComfyUI with "
            f"--disable-dynamic-vram is the workaround.")


def remove_cad_wrappers(model) -> None:
    """Strip this pack's wrappers from the shared modules (ComfyUI's unpatch leaves weight functions)."""
    for module in model.model.diffusion_model.modules():
        for attr in ("weight_function", "bias_function"):
            functions = getattr(module, attr, None)
            if functions:
                setattr(module, attr, [f for f in functions if not isinstance(f, _CADWeightFunction)])


def _modules_with_cad_wrappers(root) -> list:
    return [m for m in root.modules()
            if any(isinstance(f, _CADWeightFunction) for f in getattr(m, "weight_function", None) or ())]


@contextlib.contextmanager
def _cad_wrappers_lifted(modules):
    """Without gradients the probes and copiers do nothing, but their mere presence makes ComfyUI copy every
    weight on every forward (comfy.ops cast_to(copy=True)); no-grad forwards run without them."""
    saved = [(m, m.weight_function) for m in modules]
    for m, functions in saved:
        m.weight_function = [f for f in functions if not isinstance(f, _CADWeightFunction)]
    try:
        yield
    finally:
        for m, functions in saved:
            m.weight_function = functions


@contextlib.contextmanager
def _kernels_with_backward():
    """ComfyUI 0.33 routes some ops to fused comfy-kitchen kernels without a backward (Flux's rotary embedding:
    "no autograd formula was registered for comfy_kitchen.apply_rope") unless model_management.in_training is
    set, as core's LoRA trainer sets it. Set only around differentiated forwards; older ComfyUI lacks the flag."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    before, mm.in_training = mm.in_training, True
    try:
        yield
    finally:
        mm.in_training = before


# --- the model CAD differentiates ------------------------------------------------------------------------

def is_dynamic(model) -> bool:
    """Whether `model` loads through ComfyUI's Dynamic VRAM (ModelPatcherDynamic, 0.33+ on GPUs)."""
    return bool(getattr(model, "is_dynamic", lambda: False)())


@contextlib.contextmanager
def differentiable_source(model):
    """The patcher whose clones CAD Attribute differentiates: `model` itself, or under Dynamic VRAM a
    non-dynamic copy of it, released on exit.

    Dynamic VRAM loads weights in a way autograd cannot rely on (weight functions only on modules > 16 KiB,
    weights handed out as views of reused buffers). Like core's LoRA trainer, CAD then differentiates a
    non-dynamic model: `clone(disable_dynamic=True)` re-runs the model's loader (the checkpoint is read again,
    so RAM holds a second copy while CAD runs) with the same patches, LoRAs included. It runs inside
    inference_mode(False), so the reloaded weights are ordinary tensors. A model whose loader cannot be re-run
    (a custom loader without `cached_patcher_init`) is differentiated as it is; the wrappers then defend
    themselves (install_missing_cad_wrappers, CopyForBackward, probes_must_see_their_modules).
    """
    source = model
    if is_dynamic(model):
        try:
            with torch.inference_mode(False):
                source = model.clone(disable_dynamic=True)
            logging.info("CAD: differentiating a non-dynamic reload of the model (Dynamic VRAM is on).")
        except (RuntimeError, TypeError) as e:  # no cached_patcher_init; TypeError: a clone() without the argument
            logging.warning("CAD: this model's loader cannot reload it without Dynamic VRAM (%s); attributing the "
                            "dynamic model with CAD's own safeguards. If results look wrong, start ComfyUI with "
                            "--disable-dynamic-vram.", e)
    try:
        yield source
    finally:
        if source is not model:
            del source
            comfy.model_management.soft_empty_cache()


# --- the attribution sampler -------------------------------------------------------------------------

class _AttributionSampler(comfy.samplers.Sampler):
    """Runs cad_core's visiting loop with conditioning prepared exactly as KSampler prepares it.

    patcher: the gradient clone whose CAD wrappers must be on its modules once ComfyUI has loaded it.
    """

    def __init__(self, run, patcher=None):
        self.run, self.patcher = run, patcher

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        inner, conds, options = model_wrap.inner_model, model_wrap.conds, extra_args["model_options"]

        if self.patcher is not None:  # ComfyUI has loaded the model by now
            install_missing_cad_wrappers(self.patcher)
        wrapped = _modules_with_cad_wrappers(inner.diffusion_model)

        def predictor(name):
            def predict(x, sigma):
                x = x.to(noise.device)
                x = x.clone() if x.is_inference() else x
                s = sigma.reshape(1).to(x).expand(x.shape[0])
                if torch.is_grad_enabled():
                    with _kernels_with_backward():
                        return comfy.samplers.calc_cond_batch(inner, [conds[name]], x, s, options)[0]
                with _cad_wrappers_lifted(wrapped):
                    return comfy.samplers.calc_cond_batch(inner, [conds[name]], x, s, options)[0]
            return predict

        # Clones: tensors made under inference mode (sigmas, latents) cannot be saved for backward; so
        # are the parameters outside comfy ops (DiT RMSNorm scales), which no weight wrapper reaches.
        with ordinary_copies_of_plain_parameters(inner.diffusion_model):
            return self.run(predictor("positive"), predictor("negative"), sigmas.clone(), noise, latent_image.clone())


def attribute_model(model, positive, base, latent, *, objective, steps, guidance, seed, samples, scope,
                    scope_regex="", schedule="single", concept_latent=None, on_progress=None, source=None):
    """CAD attribution of `model` for the concept in `positive` against `base`; never modifies `model`.

    source: the differentiable_source of `model` when the caller runs several passes (chunks) over it.
    """
    if source is None:
        with differentiable_source(model) as own_source:
            return attribute_model(model, positive, base, latent, objective=objective, steps=steps, guidance=guidance,
                                   seed=seed, samples=samples, scope=scope, scope_regex=scope_regex,
                                   schedule=schedule, concept_latent=concept_latent, on_progress=on_progress,
                                   source=own_source)
    available = patchable_weights(model)
    keys = resolve_scope(available, scope, scope_regex)
    shapes = dict(available)
    fingerprint = fingerprint_of(model)
    latent_image = sampler_latent(model, latent)[:1]
    images = None
    if concept_latent is not None:
        images = sampler_latent(model, concept_latent)
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).float()
    parameterization = parameterization_of(model)

    with torch.inference_mode(False):
        model.model.requires_grad_(False)
        source.model.requires_grad_(False)
        grad_model = source.clone()
        probes = _install_probes(grad_model, keys)
        capture = ProbeCapture(probes, shapes, grad_model.load_device)
        result = {}

        def run(concept, base_fn, sigmas_dev, noise, processed_latent):
            # Sample 0's first trajectory uses the seed itself, as KSampler would.
            draw = seeded_noise((1, *noise.shape[1:]), seed)
            given = processed_latent if images is not None else None
            result["attribution"] = attribute(
                capture, concept, base_fn, sigmas=sigmas_dev, parameterization=parameterization, objective=objective,
                guidance=guidance, schedule=schedule, make_noise=lambda sample, restart: draw(sample, restart).to(noise),
                samples=samples if given is None else max(samples, len(given)),  # every concept image counts
                images=given, loss_scale=loss_scale_for(compute_dtype_of(model), noise[0].numel()),
                on_progress=on_progress, fingerprint=fingerprint,
                meta={"scope": scope, "scope_regex": scope_regex, "seed": seed,
                      "sampler": f"ddim (deterministic), scheduler {SCHEDULER}",
                      "latent_shape": list(latent_image.shape)})
            return processed_latent

        try:
            guider = comfy.samplers.CFGGuider(grad_model)
            guider.set_conds(positive, base)
            guider.set_cfg(guidance)
            start = images if images is not None else latent_image
            noise = torch.zeros_like(start)
            with probes_must_see_their_modules(grad_model, probes):
                guider.sample(noise, start, _AttributionSampler(run, grad_model), sigmas, seed=seed,
                              disable_pbar=True)
        finally:
            remove_cad_wrappers(grad_model)
            del grad_model
            comfy.model_management.soft_empty_cache()
    return result["attribution"]


def sampler_latent(model, latent: dict) -> torch.Tensor:
    """The latent KSampler would start from: comfy.sample.fix_empty_latent_channels, given the latent's own
    downscale ratios where this ComfyUI takes them (0.33+: an Empty Latent Image of 8x-downscaled size is resized
    for a model whose VAE downscales 16x)."""
    fix = comfy.sample.fix_empty_latent_channels
    if "downscale_ratio_spacial" in inspect.signature(fix).parameters:
        return fix(model, latent["samples"], latent.get("downscale_ratio_spacial"),
                   latent.get("downscale_ratio_temporal"))
    return fix(model, latent["samples"])


def compute_dtype_of(model) -> torch.dtype:
    """The dtype the model's layers compute in: the manual-cast dtype (ModelComputeDtype sets it as an
    object patch) or else the stored weights' dtype."""
    return model.get_model_object("manual_cast_dtype") or model.model_dtype()


# --- applying masks ----------------------------------------------------------------------------------

class CADMaskAdapter(WeightAdapterBase):
    """Patch that scales the masked entries of one weight: W[idx] *= (1 - strength).

    All tensors live in `self.weights` and the constructor is (loaded_keys, weights), because newer
    ComfyUI rebuilds adapters that way when it prefetches patches. Added after a LoRA it scales the
    LoRA-modified weight, so strength 1 zeroes the selected entries exactly.
    """

    name = "cad_mask"

    def __init__(self, loaded_keys, weights):
        self.loaded_keys = loaded_keys
        self.weights = weights

    def calculate_shape(self, key):
        return None

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        return scale_selected(weight, self.weights[0], float(strength))


def apply_mask(model, mask: Mask, strength: float):
    """A clone of `model` with the mask's components scaled by (1 - strength); `model` is untouched."""
    mask.check_valid()
    mask.check_nonempty()
    check_fingerprint(model, mask.fingerprint, "mask")
    present = dict(patchable_weights(model))
    for key, shape in mask.shapes.items():
        if key in mask.indices and tuple(present.get(key, ())) != tuple(shape):
            raise CADError(f"The mask expects '{key}' with shape {tuple(shape)}, but this MODEL has "
                           f"{present.get(key, 'no such weight')}.")
    patched = model.clone()
    patches = {k: CADMaskAdapter({k}, (idx.to(torch.int64),)) for k, idx in mask.indices.items() if idx.numel()}
    accepted = patched.add_patches(patches, strength_patch=strength)
    if len(accepted) != len(patches):
        missing = sorted(set(patches) - set(accepted))
        raise CADError(f"ComfyUI refused to patch {len(missing)} weights the mask selects, e.g. {missing[:3]}.")
    return patched


# --- verification ------------------------------------------------------------------------------------

def measure_on(model, positive, base, attribution: Attribution, mask: Mask | None = None, strength: float = 1.0,
               held_base: list[torch.Tensor] | None = None):
    """J at the attribution's own visited latents, on `model` or on `model` with `mask` applied.

    held_base (concept_gap only; from held_base_on): the unedited model's base predictions, used instead of
    the edited model's, as the attribution's stop-gradient holds them, so the measured change is the one
    alpha estimates to first order.
    """
    _check_measurable(model, attribution)
    objective, parameterization = attribution.meta["objective"], parameterization_of(model)
    target = model if mask is None else apply_mask(model, mask, strength)
    return _at_visited_points(target, positive, base, attribution, lambda concept, base_fn: measure_objective(
        objective, concept, base_fn, parameterization, attribution.points, held_base=held_base))


def held_base_on(model, positive, base, attribution: Attribution) -> list[torch.Tensor]:
    """`model`'s base predictions at the attribution's visited latents, computed once for many measure_on."""
    _check_measurable(model, attribution)
    return _at_visited_points(model, positive, base, attribution,
                              lambda concept, base_fn: base_predictions(base_fn, attribution.points))


def _check_measurable(model, attribution: Attribution) -> None:
    if not attribution.points:
        raise CADError("This attribution carries no visited latents (attributions loaded from files or summed "
                       "from several do not), so its prediction cannot be checked. Verify an attribution straight "
                       "from CAD Attribute.")
    check_fingerprint(model, attribution.fingerprint, "attribution")


def _at_visited_points(model, positive, base, attribution: Attribution, measure):
    """measure(concept, base) with both denoisers prepared exactly as KSampler prepares them."""
    result = {}

    def run(concept, base_fn, sigmas, noise, latent):
        result["value"] = measure(concept, base_fn)
        return latent

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, base)
    guider.set_cfg(attribution.meta.get("guidance", 1.0))
    start = torch.zeros(attribution.points[0].x_t.shape)
    sigmas = torch.stack([attribution.points[0].sigma.float(), torch.zeros(())])
    guider.sample(start, start, _AttributionSampler(run), sigmas, seed=0, disable_pbar=True)
    return result["value"]


def verify_on(model, positive, base, attribution: Attribution, mask: Mask, strength: float = 1.0):
    """Really ablate `mask` and compare the measured change of J with the attribution's prediction."""
    return verify_ablation(lambda m, s: measure_on(model, positive, base, attribution, m, s),
                           attribution, mask, strength)

"""Everything that touches ComfyUI internals: gradient probes under inference mode, the custom
sampler that runs CAD's trajectory through CFGGuider, and the weight adapter that applies masks.

ComfyUI runs every node under torch.inference_mode() and loaders create weights as inference
tensors, which autograd refuses to save. Attribution therefore runs on a clone of the MODEL inside
inference_mode(False), with weight wrappers: probes on the scoped weights (identity in value,
capture dJ/dW) and copy-forcing identity wrappers on every other weight so downstream layers get
ordinary tensors they may save for backward. Nodes stay thin; they call the functions at the end.
"""
import contextlib

import torch

import comfy.model_management
import comfy.model_sampling
import comfy.ops
import comfy.sample
import comfy.samplers
import comfy.utils
from comfy.weight_adapter import WeightAdapterBase

from ..cad_core import (Attribution, CADError, GradientAccumulator, Mask, TrajectoryPlan, attribute,
                        model_fingerprint, resolve_scope, scale_selected, verify_ablation)
from ..cad_core.trajectory import base_predictions, loss_scale_for, measure_objective
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
    x0 models (comfy.model_sampling.EPS and subclasses) use x_t = x0 + sigma*eps; rectified-flow models
    (CONST: SD3, Flux, AuraFlow, ...) use x_t = (1-sigma)*x0 + sigma*eps. Other model_sampling classes are
    identified from their own noise_scaling; one that is neither form is refused rather than guessed.
    """
    ms = model.get_model_object("model_sampling")
    if isinstance(ms, comfy.model_sampling.CONST):
        return FlowMatching()
    if isinstance(ms, comfy.model_sampling.EPS):
        return VarianceExploding()
    sigma, one, zero = torch.tensor([0.5]), torch.ones((1, 1)), torch.zeros((1, 1))
    try:
        with torch.no_grad():
            noise_part = float(ms.noise_scaling(sigma, one.clone(), zero.clone(), False).reshape(-1)[0])
            image_part = float(ms.noise_scaling(sigma, zero.clone(), one.clone(), False).reshape(-1)[0])
    except Exception:  # noqa: BLE001 - any failure means the form is unknown
        noise_part = image_part = float("nan")
    if abs(noise_part - 0.5) < 1e-6 and abs(image_part - 1.0) < 1e-6:
        return VarianceExploding()
    if abs(noise_part - 0.5) < 1e-6 and abs(image_part - 0.5) < 1e-6:
        return FlowMatching()
    raise CADError(
        f"CAD cannot attribute this model: its sampling type ({type(ms).__name__}) mixes noise into latents "
        f"neither as x0 + sigma*eps (eps/v-prediction: SD1.x, SD2.x, SDXL) nor as (1-sigma)*x0 + sigma*eps "
        f"(flow matching: SD3, Flux), so the objectives cannot recover the predicted noise.")


# --- gradient probes ------------------------------------------------------------------------------

class _CADWeightFunction:
    """Marker base for wrappers this pack installs, so they can always be removed again."""


class GradProbe(_CADWeightFunction):
    """Weight wrapper: returns W unchanged but puts it in the graph and captures dJ/dW.

    Adding a zero anchor (instead of making W a leaf) keeps autograd from allocating a W-sized .grad.
    The first W seen is kept (fp32, CPU): alpha multiplies the weight the model actually computes with,
    LoRA patches included.
    """

    def __init__(self, key, accumulator, device):
        self.key, self.acc, self.value = key, accumulator, None
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
    """Identity wrapper whose only job is to make ComfyUI hand the layer a copy, never an inference tensor."""

    def __call__(self, w):
        return w.clone() if w.is_inference() else w


def _install_probes(grad_model, keys, accumulator):
    probes, scoped, copier = {}, set(keys), CopyForBackward()
    for key, _ in patchable_weights(grad_model):
        if key in scoped:
            probes[key] = GradProbe(key, accumulator, grad_model.load_device)
            grad_model.add_weight_wrapper(key, probes[key])
        else:
            grad_model.add_weight_wrapper(key, copier)
    return probes


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


# --- the attribution sampler -------------------------------------------------------------------------

class _AttributionSampler(comfy.samplers.Sampler):
    """Runs cad_core's visiting loop with conditioning prepared exactly as KSampler prepares it."""

    def __init__(self, run):
        self.run = run

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        inner, conds, options = model_wrap.inner_model, model_wrap.conds, extra_args["model_options"]

        wrapped = _modules_with_cad_wrappers(inner.diffusion_model)

        def predictor(name):
            def predict(x, sigma):
                x = x.to(noise.device)
                x = x.clone() if x.is_inference() else x
                s = sigma.reshape(1).to(x).expand(x.shape[0])
                if torch.is_grad_enabled():
                    return comfy.samplers.calc_cond_batch(inner, [conds[name]], x, s, options)[0]
                with _cad_wrappers_lifted(wrapped):
                    return comfy.samplers.calc_cond_batch(inner, [conds[name]], x, s, options)[0]
            return predict

        # Clones: tensors made under inference mode (sigmas, latents) cannot be saved for backward; so
        # are the parameters outside comfy ops (DiT RMSNorm scales), which no weight wrapper reaches.
        with ordinary_copies_of_plain_parameters(inner.diffusion_model):
            return self.run(predictor("positive"), predictor("negative"), sigmas.clone(), noise, latent_image.clone())


def attribute_model(model, positive, base, latent, *, objective, steps, guidance, seed, samples, scope,
                    scope_regex="", schedule="single", concept_latent=None, on_progress=None):
    """CAD attribution of `model` for the concept in `positive` against `base`; never modifies `model`."""
    available = patchable_weights(model)
    keys = resolve_scope(available, scope, scope_regex)
    shapes = dict(available)
    fingerprint = fingerprint_of(model)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])[:1]
    images = None
    if concept_latent is not None:
        images = comfy.sample.fix_empty_latent_channels(model, concept_latent["samples"])
    ms = model.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).float()
    parameterization = parameterization_of(model)

    with torch.inference_mode(False):
        model.model.requires_grad_(False)
        grad_model = model.clone()
        accumulator = GradientAccumulator({k: shapes[k] for k in keys}, device=grad_model.load_device)
        probes = _install_probes(grad_model, keys, accumulator)
        result = {}

        def run(concept, base_fn, sigmas_dev, noise, processed_latent):
            def make_noise(sample, restart):
                # Sample 0's first trajectory uses the seed itself, as KSampler would. Wrapped to 64 bits:
                # the widget allows seeds up to 2**64 - 1, which torch refuses to go past.
                g = torch.Generator().manual_seed((seed + sample + 100_003 * restart) % 2**64)
                return torch.randn((1, *noise.shape[1:]), generator=g).to(noise)

            plan = TrajectoryPlan(sigmas_dev, parameterization, guidance, schedule, make_noise,
                                  on_progress or (lambda done, total: None),
                                  loss_scale=loss_scale_for(compute_dtype_of(model), noise[0].numel()))
            given = processed_latent if images is not None else None
            runs = samples if given is None else max(samples, len(given))  # every concept image counts
            result["attribution"] = attribute(
                objective, concept, base_fn, plan, ProbedWeights(probes, shapes), accumulator,
                samples=runs, images=given, fingerprint=fingerprint,
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
            guider.sample(noise, start, _AttributionSampler(run), sigmas, seed=seed, disable_pbar=True)
        finally:
            remove_cad_wrappers(grad_model)
            del grad_model
            comfy.model_management.soft_empty_cache()
    return result["attribution"]


def compute_dtype_of(model) -> torch.dtype:
    """The dtype the model's layers compute in: the manual-cast dtype (ModelComputeDtype sets it as an
    object patch) or else the stored weights' dtype."""
    return model.get_model_object("manual_cast_dtype") or model.model_dtype()


class ProbedWeights:
    """The weights alpha multiplies, as the probes saw them during the first forward pass.

    A scoped weight no forward pass used has zero gradient, so its alpha is zero whatever W is.
    """

    def __init__(self, probes, shapes):
        self.probes, self.shapes = probes, shapes

    def __getitem__(self, key):
        value = self.probes[key].value
        return value if value is not None else torch.zeros(self.shapes[key])


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

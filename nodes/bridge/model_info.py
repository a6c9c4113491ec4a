"""What CAD reads off a ComfyUI MODEL: its patchable weights and their original values, its fingerprint, how it
noises latents, what conditioning it needs, the dtype it computes in and the latent KSampler would start from.
Each is asked of the model itself (never looked up by class), so it holds on every ComfyUI version."""
import inspect

import torch

import comfy.ops
import comfy.sample
import comfy.utils

from ...cad_core import CADError, ModelFingerprints, require_same_model
from ...cad_core.noise import FlowMatching, VarianceExploding

PREFIX = "diffusion_model."


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


def model_fingerprints(model) -> ModelFingerprints:
    """The model's fingerprints (current, and the kind older files carry), computed when first needed."""
    named = [(f"{PREFIX}{n}", tuple(p.shape)) for n, p in model.model.diffusion_model.named_parameters()]
    if not named:
        raise CADError("This MODEL has no diffusion-model weights to fingerprint.")
    return ModelFingerprints(named, lambda key: original_weight(model, key))


def fingerprint_of(model) -> str:
    """The fingerprint new files get (cad_core.fingerprint, the current scheme)."""
    return model_fingerprints(model).current


def check_fingerprint(model, fingerprint: str, what: str) -> None:
    require_same_model(fingerprint, model_fingerprints(model), f"This {what}", "this MODEL",
                       "Connect the checkpoint it was made for, or attribute this model again.")


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



def needs_pooled_output(model) -> bool:
    """Whether the model's conditioning path reads conditioning["pooled_output"] without a default (a bare
    KeyError deep inside ComfyUI otherwise). Asked of the model itself, not looked up by class: SDXL and SD3
    need it everywhere, Flux needs it on ComfyUI 0.3.x but not on 0.33 (its encode_adm there uses a default)."""
    try:
        with torch.inference_mode():
            model.model.encode_adm(device=torch.device("cpu"), width=64, height=64, noise=torch.zeros((1, 4, 8, 8)))
    except KeyError as e:
        return "pooled_output" in str(e)
    except Exception:  # noqa: BLE001 - other needs show up in the real run with ComfyUI's own message
        return False
    return False


def same_conditioning(a, b) -> bool:
    """Whether two CONDITIONING values are the same (tensors equal in shape and value, options equal)."""
    if not (isinstance(a, list) and isinstance(b, list)) or len(a) != len(b):
        return False
    return all(_same(x, y) for x, y in zip(a, b))


def _same(x, y) -> bool:
    if torch.is_tensor(x) or torch.is_tensor(y):
        return torch.is_tensor(x) and torch.is_tensor(y) and x.shape == y.shape and bool(torch.equal(x, y))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001 - objects without a usable ==: the same only if they are one object
        return x is y


def check_conditioning(model, positive, base) -> None:
    """Refuse conditioning the model's sampling path cannot use, naming what is missing and why."""
    kind = type(model.model).__name__
    needs_pooled = None
    for name, cond in (("positive", positive), ("base", base)):
        if not isinstance(cond, list) or not cond:
            raise CADError(f"'{name}' is not a CONDITIONING (a non-empty list of [tensor, dict] pairs).")
        if any("pooled_output" not in (entry[1] or {}) for entry in cond):
            needs_pooled = needs_pooled_output(model) if needs_pooled is None else needs_pooled
            if needs_pooled:
                raise CADError(
                    f"This {kind} model needs 'pooled_output' in its conditioning (it builds its vector input "
                    f"from it), but '{name}' has none. Encode '{name}' with the checkpoint's CLIP (CLIP Text "
                    f"Encode / CLIPTextEncodeSDXL / CLIPTextEncodeFlux) instead of a hand-made tensor.")


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

"""The guided run CAD differentiates: ComfyUI's CFGGuider driving a sampler that hands the denoisers (conditioning
prepared exactly as KSampler prepares it) to cad_core, on a clone of the model whose scoped weights carry probes."""
from contextlib import nullcontext

import torch

import comfy.model_management
import comfy.samplers

from .activation_memory import measure_saved_for_backward
from .checkpointing import auto_decision, blocks_checkpointed
from .differentiable import kernels_with_backward, ordinary_copies_of_plain_parameters, saved_tensor_copies
from .probes import (GradProbe, cad_wrappers_lifted, install_missing_cad_wrappers, install_probes,
                     modules_with_cad_wrappers, probes_must_see_their_modules, remove_cad_wrappers)


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


def sample_on_gradient_clone(model, source, keys, positive, base, guidance, seed, start, sigmas, sampler_for,
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

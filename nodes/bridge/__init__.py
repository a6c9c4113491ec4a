"""The bridge: everything that touches ComfyUI internals, one module per job. Node modules validate their
inputs, call these functions (and cad_core), and return.

    model_info      what CAD reads off a MODEL: weights, fingerprint, noising form, conditioning needs, latent
    probes          weight wrappers that capture dJ/dW of the scoped weights (GradProbe, ProbeCapture)
    differentiable  which model CAD differentiates (a non-dynamic reload under Dynamic VRAM) and what makes
                    ComfyUI's forward passes safe for autograd
    checkpointing   per-block gradient checkpointing of the differentiated forwards, and auto's decision
    activation_memory  what one differentiated step keeps for backward, measured (the memory budget counts it)
    attribution     CAD Attribute: the core driver with ComfyUI as its backend (ComfyBackend)
    guided_run      the guided run a pass differentiates: CFGGuider, AttributionSampler, the gradient clone
    scope_regex     a workflow's scope_regex matched within a time bound
    masks           Apply CAD Mask: the weight adapter and the patched clone
    verification    CAD Verify: J re-measured at the visited latents, with a mask really applied
    export          a mask as LoRA tensors that cancel the weights this MODEL computes with

ComfyUI runs every node under torch.inference_mode() and loaders create weights as inference tensors, which
autograd refuses to save. Attribution therefore runs on a clone of the MODEL inside inference_mode(False), with
probes on the scoped weights and copy-forcing identity wrappers on every other weight, so downstream layers get
private tensors they may save for backward.
"""
from .attribution import SCHEDULER, ComfyBackend, attribute_model
from .guided_run import AttributionSampler
from .differentiable import differentiable_source, is_dynamic, ordinary_copies_of_plain_parameters
from .masks import CADMaskAdapter, apply_mask
from .model_info import (PREFIX, check_conditioning, check_fingerprint, compute_dtype_of, fingerprint_of,
                         model_fingerprints, needs_pooled_output, same_conditioning, op_weight_shapes, original_weight, parameterization_of,
                         patchable_weights, sampler_latent)
from .probes import (CopyForBackward, GradProbe, ProbeCapture, install_missing_cad_wrappers,
                     probes_must_see_their_modules, remove_cad_wrappers)
from .scope_regex import bounded_matcher, check_scope_regex
from .verification import held_base_on, measure_on, verify_on

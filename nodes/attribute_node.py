"""CAD Attribute: score every weight in a scope for a concept."""
import comfy.utils
from comfy_api.latest import io

from ..cad_core import OBJECTIVES, SCHEDULES, SCOPE_PRESETS
from ..cad_core.objectives import objectives_help
from ..cad_core.request import (CHECKPOINTING, MAX_BUDGET_MB, MAX_GUIDANCE, MAX_SAMPLES, MAX_SEED, MAX_STEPS,
                                AttributionRequest, default)
from .cad_types import CadAttribution
from .bridge import attribute_model, check_scope_regex
from .validation import check_choices, check_numbers
from .ui_text import bounded


class CADAttribute(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADAttribute",
            display_name="CAD Attribute",
            category="CAD",
            description=(
                "Scores each weight in the chosen scope for a concept: alpha = w * dJ/dw summed over the "
                "sampling timesteps (CAD, arXiv 2412.02542). Positive scores carry the concept, negative ones "
                "suppress it. Feed the result to CAD Erase Mask or CAD Amplify Mask."),
            inputs=[
                io.Model.Input("model", tooltip="The model to attribute; it is not modified."),
                io.Conditioning.Input("positive", tooltip="The concept, e.g. CLIPTextEncode('a photo of a cat')."),
                io.Conditioning.Input("base", tooltip="What the concept is measured against, usually the empty "
                                      "prompt; also the negative prompt of the guidance."),
                io.Latent.Input("latent", tooltip="Only its size is used (e.g. Empty Latent Image at your "
                                "sampling size); batch size is ignored."),
                io.Combo.Input("objective", options=list(OBJECTIVES), default=default("objective"),
                               tooltip=objectives_help()),
                io.Int.Input("steps", default=default("steps"), min=1, max=MAX_STEPS,
                             tooltip="Timesteps visited, each one forward+backward pass; 20 is a good default, fewer "
                             "steps give a different mask."),
                io.Float.Input("guidance", default=default("guidance"), min=0.0, max=MAX_GUIDANCE, step=0.1,
                               tooltip="Classifier-free guidance of the sampled trajectories (reference: 3.0)."),
                io.Int.Input("seed", default=default("seed"), min=0, max=MAX_SEED, tooltip="Noise seed of the trajectories."),
                io.Int.Input("samples", default=default("samples"), min=1, max=MAX_SAMPLES,
                             tooltip="Trajectories averaged over: 1 is the default, 2-4 give steadier scores at 2-4x "
                             "the cost."),
                io.Combo.Input("scope", options=list(SCOPE_PRESETS), default=default("scope"),
                               tooltip="Which weights to score: ff (the paper's choice), attention, ff+attention, "
                               "all_linear, or regex (scope_regex)."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default=default("schedule"),
                               tooltip="single: one trajectory, O(steps); reference: the reference code's restart-per-"
                               "step sampling, O(steps^2), for comparisons."),
                io.String.Input("scope_regex", default=default("scope_regex"), optional=True,
                                tooltip="With scope regex: a Python regex over weight names, e.g. 'attn2\\.to_[kv]' "
                                "for the cross-attention keys and values."),
                io.Latent.Input("concept_latent", optional=True,
                                tooltip="concept_likelihood only: VAE-encoded images of the concept; without it the "
                                "model's own samples are used."),
                io.Int.Input("memory_budget_mb", default=default("memory_budget_mb"), min=0, max=MAX_BUDGET_MB,
                             optional=True,
                             tooltip="Advanced: most memory in MB CAD may take beyond the loaded model, attributing "
                             "in chunks if needed; 0 = no limit."),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING),
                               default=default("gradient_checkpointing"), optional=True,
                               tooltip="Advanced: on recomputes blocks in backward (less memory, same scores); auto: "
                               "always on a CPU, on a GPU when memory is short."),
            ],
            outputs=[CadAttribution.Output(display_name="attribution",
                                           tooltip="Per-weight scores; connect to CAD Erase/Amplify Mask or Save.")],
        )

    @classmethod
    def validate_inputs(cls, objective, scope, schedule, guidance=None, scope_regex=None,
                        gradient_checkpointing="auto"):
        for problem in (check_choices(objective=(objective, OBJECTIVES), scope=(scope, SCOPE_PRESETS),
                                      schedule=(schedule, SCHEDULES),
                                      gradient_checkpointing=(gradient_checkpointing, CHECKPOINTING)),
                        check_numbers(cls, guidance=guidance), check_scope_regex(scope_regex)):
            if problem is not True:
                return problem
        return True

    @classmethod
    def execute(cls, model, positive, base, latent, objective, steps, guidance, seed, samples, scope, schedule,
                scope_regex="", concept_latent=None, memory_budget_mb=0,
                gradient_checkpointing="auto") -> io.NodeOutput:
        request = AttributionRequest(objective=objective, scope=scope, scope_regex=scope_regex or "", steps=steps,
                                     guidance=guidance, seed=seed, samples=samples, schedule=schedule,
                                     memory_budget_mb=memory_budget_mb or 0,
                                     gradient_checkpointing=gradient_checkpointing or "auto")
        progress = comfy.utils.ProgressBar(steps)
        attribution = attribute_model(model, positive, base, latent, request, concept_latent=concept_latent,
                                      on_progress=lambda done, total: progress.update_absolute(done, total))
        return io.NodeOutput(attribution, ui=bounded({"cad_summary": [attribution.summary()],
                                                      "text": [attribution.summary_text()]}))

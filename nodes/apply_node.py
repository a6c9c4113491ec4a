"""Apply CAD Mask: a patched clone of the MODEL with the selected components ablated."""
from comfy_api.latest import io

from .cad_types import CadMask
from .bridge import apply_mask
from .validation import check_numbers, require_numbers


class ApplyCADMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyCADMask", display_name="Apply CAD Mask", category="CAD",
            description=("Returns a copy of the model whose selected weights are scaled by (1 - strength) at load "
                         "time; the input model is untouched. Composes with LoRAs: put it after LoRA loaders so "
                         "selected weights are ablated on the LoRA-modified model."),
            inputs=[
                io.Model.Input("model", tooltip="The model the mask was made for (checked by fingerprint)."),
                CadMask.Input("mask", tooltip="From CAD Erase Mask, CAD Amplify Mask, CAD Combine Masks or Load CAD "
                              "Mask."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1.0 zeroes the selected weights; 0.5 halves them; 0 changes nothing."),
            ],
            outputs=[io.Model.Output(tooltip="The edited model; sample it with KSampler as usual.")],
        )

    @classmethod
    def validate_inputs(cls, strength):
        return check_numbers(cls, strength=strength)

    @classmethod
    def execute(cls, model, mask, strength) -> io.NodeOutput:
        require_numbers(cls, strength=strength)  # a linked strength is only known here; NaN would poison weights
        return io.NodeOutput(apply_mask(model, mask, strength))

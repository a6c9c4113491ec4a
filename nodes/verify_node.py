"""CAD Verify: ablate a mask for real and compare the measured change of J with the prediction."""
from comfy_api.latest import io

from .cad_types import CadAttribution, CadMask
from .bridge import verify_on
from .validation import check_numbers, require_numbers
from .ui_text import bounded


class CADVerify(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADVerify", display_name="CAD Verify", category="CAD",
            description=("Checks CAD's linear estimate: re-measures the objective on the latents CAD Attribute "
                         "visited, with and without the mask, and reports predicted vs measured change. Zeroing "
                         "many weights leaves the linear regime; a small strength (e.g. 0.05) tests the gradients."),
            inputs=[
                io.Model.Input("model", tooltip="The model the attribution was made on."),
                io.Conditioning.Input("positive", tooltip="The same concept conditioning as for CAD Attribute."),
                io.Conditioning.Input("base", tooltip="The same base conditioning as for CAD Attribute."),
                CadAttribution.Input("attribution", tooltip="Straight from CAD Attribute (files hold no latents)."),
                CadMask.Input("mask", tooltip="The components to ablate: CAD Erase/Amplify Mask made from this "
                              "attribution."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Ablation strength: weights are scaled by (1 - strength)."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="Predicted and measured change of J (also "
                                      "shown on the node); connect a text display node to keep it.")],
        )

    @classmethod
    def validate_inputs(cls, strength):
        return check_numbers(cls, strength=strength)

    @classmethod
    def execute(cls, model, positive, base, attribution, mask, strength) -> io.NodeOutput:
        require_numbers(cls, strength=strength)
        check = verify_on(model, positive, base, attribution, mask, strength)
        report = (f"Ablating {check.selected:,} weights (strength {strength}): J {check.objective_before:.6g} -> "
                  f"{check.objective_after:.6g}; measured change {check.measured_change:.6g}, "
                  f"predicted {check.predicted_change:.6g}.")
        return io.NodeOutput(report, ui=bounded({"cad_verify": [check.as_dict()], "text": [report]}))

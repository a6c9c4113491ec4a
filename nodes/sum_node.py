"""CAD Sum Attributions: one attribution for several prompts of a concept (or several concepts)."""
from comfy_api.latest import io

from ..cad_core import sum_attributions
from .cad_types import CadAttribution
from .ui_text import bounded


class CADSumAttributions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADSumAttributions", display_name="CAD Sum Attributions", category="CAD",
            description=("Adds two attributions of the same model and scope weight by weight. Sum the attributions "
                         "of several prompts of one concept ('a red cross', 'a blue cross', ...) so the mask "
                         "targets what they share, or of several concepts to erase them together. Chain the node "
                         "for more than two."),
            inputs=[CadAttribution.Input("attribution_a", tooltip="From CAD Attribute or Load CAD Attribution."),
                    CadAttribution.Input("attribution_b", tooltip="Another attribution of the same model and scope.")],
            outputs=[CadAttribution.Output(display_name="attribution",
                                           tooltip="Scores of a plus scores of b; connect to CAD Erase/Amplify Mask.")],
        )

    @classmethod
    def execute(cls, attribution_a, attribution_b) -> io.NodeOutput:
        total = sum_attributions([attribution_a, attribution_b])
        return io.NodeOutput(total, ui=bounded({"cad_summary": [total.summary()], "text": [total.summary_text()]}))

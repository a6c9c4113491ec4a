"""CAD Attribution Map: a picture of where a concept lives, block by block."""
from comfy_api.latest import io, ui

from ..cad_core import block_map
from .cad_types import CadAttribution, CadMask
from .map_render import image_tensor, render_block_map
from .ui_text import bounded
from .validation import check_numbers, require_numbers


class CADAttributionMap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADAttributionMap", display_name="CAD Attribution Map", category="CAD",
            description=("Draws an attribution as a bar chart per model block: positive mass (weights that carry "
                         "the concept) up, negative mass (weights that suppress it) down. With a mask, a second "
                         "panel shows which share of each block the mask selects."),
            inputs=[
                CadAttribution.Input("attribution", tooltip="From CAD Attribute or Load CAD Attribution."),
                CadMask.Input("mask", optional=True,
                              tooltip="A mask made from this attribution (or another of the same model and scope): "
                              "adds the share of each block it selects."),
                io.Int.Input("width", default=1024, min=256, max=4096, step=8, tooltip="Picture width in pixels."),
                io.Int.Input("height", default=512, min=256, max=4096, step=8, tooltip="Picture height in pixels."),
            ],
            outputs=[io.Image.Output(display_name="image",
                                     tooltip="The chart as an image: preview it, save it or put it in a grid.")],
            # The picture is the point of the node, so it runs and shows its preview even when unconnected.
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None):
        return check_numbers(cls, width=width, height=height)

    @classmethod
    def execute(cls, attribution, width, height, mask=None) -> io.NodeOutput:
        require_numbers(cls, width=width, height=height)
        attribution.check_usable()
        per_block = bounded(block_map(attribution, mask))   # its title fields come from the file
        image = image_tensor(render_block_map(per_block, width, height))
        preview = ui.PreviewImage(image, cls=cls).as_dict()
        # no text summary: the picture and the on-node chart already show every number
        return io.NodeOutput(image, ui={**preview, "cad_map": [per_block]})

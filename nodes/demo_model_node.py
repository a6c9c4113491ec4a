"""CAD Demo Model: the project's own toy text-to-image model, for trying CAD without a checkpoint."""
from comfy_api.latest import io

from .toyworld.model import load_toyworld, verify_weights_file


class CADDemoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CADDemoModel", display_name="CAD Demo Model", category="CAD/demo",
            description=("A tiny text-to-image model trained by this project on 32 px pictures of four shapes "
                         "(circle, square, triangle, cross) in four colours (red, green, blue, yellow). Prompt "
                         "e.g. 'a red circle'; sample 64x64 latents with about 20 steps, CFG 3. Every concept is "
                         "known, so erasing and amplifying can be seen and measured."),
            inputs=[],
            outputs=[io.Model.Output(tooltip="The toy UNet (ComfyUI's SD UNet at small width)."),
                     io.Clip.Output(tooltip="Its text encoder; use CLIP Text Encode as usual."),
                     io.Vae.Output(tooltip="Turns its latents into images (a pixel unshuffle, not a learned VAE).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        verify_weights_file()
        return io.NodeOutput(*load_toyworld())

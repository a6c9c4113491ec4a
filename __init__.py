"""comfyui-cad: Component Attribution for Diffusion models (CAD) as ComfyUI nodes.

ComfyUI loads this package from custom_nodes/ and awaits `comfy_entrypoint()`. The node modules are
imported only then, so `cad_core` stays importable (and testable) without ComfyUI.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import CADExtension

    return CADExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

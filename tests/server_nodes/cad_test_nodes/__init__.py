"""Helper nodes the end-to-end tests install next to the pack (never shipped): conditioning of any width for
models whose text encoders cannot be made small (Wan's UMT5-XXL), so a reduced model runs through the real server."""
import torch


class CADTestConditioning:
    """Random CONDITIONING shaped like a text encoder's output: [1, tokens, width], seeded."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 4096, "min": 1, "max": 16384}),
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "CAD/testing"

    def make(self, width, tokens, seed):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn((1, tokens, width), generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"CADTestConditioning": CADTestConditioning}

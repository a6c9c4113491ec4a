"""Human-readable block names for weight keys, shared by summaries and masks."""
import re

_BLOCK_PATTERNS = (
    re.compile(r"(input_blocks\.\d+)"),
    re.compile(r"(middle_block)"),
    re.compile(r"(output_blocks\.\d+)"),
    re.compile(r"((?:double_blocks|single_blocks|joint_blocks|transformer_blocks|single_transformer_blocks|blocks|layers)\.\d+)"),
)


def block_of(key: str) -> str:
    """'diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.2.weight' -> 'input_blocks.4'."""
    for pattern in _BLOCK_PATTERNS:
        found = pattern.search(key)
        if found:
            return found.group(1)
    name = key.removeprefix("diffusion_model.")
    return name.split(".", 1)[0]


def block_sort_key(block: str):
    """Input blocks, then middle, then output blocks, each in numeric order; other names after."""
    order = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}
    head, _, index = block.partition(".")
    return (order.get(head, 3), head, int(index) if index.isdigit() else -1)


_SHORT_PREFIXES = {
    "input_blocks": "in", "middle_block": "mid", "output_blocks": "out", "double_blocks": "double",
    "single_blocks": "single", "joint_blocks": "joint", "transformer_blocks": "block",
    "single_transformer_blocks": "single", "blocks": "block", "layers": "layer",
}


def short_block_name(block: str) -> str:
    """'input_blocks.4' -> 'in 4', 'middle_block' -> 'mid', 'double_blocks.3' -> 'double 3'; others unchanged.

    Chart axes have room for a few characters per block; these are the names UNet users already say."""
    head, _, index = block.partition(".")
    short = _SHORT_PREFIXES.get(head)
    if short is None:
        return block
    return f"{short} {index}" if index else short

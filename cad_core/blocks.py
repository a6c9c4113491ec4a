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

"""Block names for weight keys, shared by summaries, masks, the charts and the map; read from the family
records (families.py), with generic names for architectures that have none."""
import re

from .families import FAMILIES, GENERIC_BLOCKS

# Family blocks first, each searched on its own (an UNet key names its input block before the transformer block
# inside it); then the first "<name>.<N>" of the key. Names must start a segment: "layers.0" is not a block of
# "double_layers.0".
_FAMILY_BLOCKS = [(re.compile(rf"(?:^|\.)({pattern})(?:\.|$)"), label)
                  for family in FAMILIES for pattern, label in family.blocks]
_FIRST_NUMBERED = re.compile(r"(?:^|\.)([A-Za-z_]\w*\.\d+)(?:\.|$)")
_LABELS = [(re.compile(pattern), label) for pattern, label in
           [b for family in FAMILIES for b in family.blocks] + list(GENERIC_BLOCKS)]


def block_of(key: str) -> str:
    """'diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.2.weight' -> 'input_blocks.4'."""
    for pattern, _ in _FAMILY_BLOCKS:
        found = pattern.search(key)
        if found:
            return found.group(1)
    found = _FIRST_NUMBERED.search(key.removeprefix("diffusion_model."))
    if found:
        return found.group(1)
    name = key.removeprefix("diffusion_model.")
    return name.split(".", 1)[0]


def block_sort_key(block: str):
    """Blocks in the order their family lists them (input, middle, output), each in numeric order; others after."""
    head, _, index = block.partition(".")
    rank = next((i for i, (pattern, _) in enumerate(_LABELS) if pattern.fullmatch(block)), len(_LABELS))
    return (rank, head, int(index) if index.isdigit() else -1)


def short_block_name(block: str) -> str:
    """'input_blocks.4' -> 'in 4', 'middle_block' -> 'mid', 'double_blocks.3' -> 'double 3'; others unchanged.

    Chart axes have room for a few characters per block; these are the names UNet users already say."""
    for pattern, label in _LABELS:
        if pattern.fullmatch(block):
            _, _, index = block.partition(".")
            return f"{label} {index}" if index else label
    return block

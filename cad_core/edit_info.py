"""How a weight edit was made, as one typed record: what CAD's LoRA files store under `cad.mask_meta`."""
from dataclasses import dataclass, field

from .info_record import InfoRecord


@dataclass(frozen=True)
class EditInfo(InfoRecord):
    """Every field is None where it was not recorded (a LoRA saved from a mask keeps the mask's keys in extra)."""

    describes = "edit"

    mode: str | None = None
    erase: tuple[str, ...] | None = None
    guide: tuple[str, ...] | None = None
    keep: tuple[str, ...] | None = None
    overshoot: float | None = None
    preserve: float | None = None
    ridge: float | None = None
    text_rows: int | None = None
    mass_share: float | None = None
    located: tuple[str, ...] | None = None
    objective: str | None = None
    erase_mode: str | None = None
    train_steps: int | None = None
    learning_rate: float | None = None
    train_share: float | None = None
    retain: float | None = None
    adversaries: int | None = None
    trained_weights: int | None = None
    trained_matrices: int | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)

"""How a mask was chosen, as one typed record: what mask files store under `cad.meta`."""
from dataclasses import dataclass, field

from .info_record import InfoRecord


@dataclass(frozen=True)
class MaskInfo(InfoRecord):
    """Every field is None where it was not recorded. combined_from: the records of the masks a union joined."""

    describes = "mask"

    mode: str | None = None
    ratio: float | None = None
    granularity: str | None = None
    scoped_weights: int | None = None
    objective: str | None = None
    scope: str | None = None
    protect_mode: str | None = None
    protect_weight: float | None = None
    protected: int | None = None
    protected_dropped: int | None = None
    protect_objective: str | None = None
    combined_from: "tuple[MaskInfo, ...] | None" = None
    extra: dict = field(default_factory=dict)

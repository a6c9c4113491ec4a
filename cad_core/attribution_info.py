"""How an attribution was made, as one typed record: what attribution files store under `cad.meta`."""
from dataclasses import dataclass, field

from .info_record import InfoRecord


@dataclass(frozen=True)
class AttributionInfo(InfoRecord):
    """Every field is None where it was not recorded (a file of an older version, a pass of a plain torch module).

    Fields in the order today's files list them: the run (attribute()), what the ComfyUI bridge adds (sampler,
    checkpointing, latent), the driver's request and memory budget, then what summing and protecting add.
    """

    describes = "attribution"

    objective: str | None = None
    steps: int | None = None
    guidance: float | None = None
    schedule: str | None = None
    samples: int | None = None
    parameterization: str | None = None
    loss_scale: float | None = None
    unet_calls: dict[str, float] | None = None     # forward_backward, forward_no_grad, visits, objective_total
    seconds: float | None = None
    scope: str | None = None
    pack_version: str | None = None
    sampler: str | None = None
    gradient_checkpointing: bool | None = None
    kept_without_checkpointing_mb: float | None = None
    free_memory_mb: float | None = None
    checkpointing_reason: str | None = None
    latent_shape: tuple[int, ...] | None = None
    passes: int | None = None
    scope_regex: str | None = None
    seed: int | None = None
    scope_notice: str | None = None
    memory_budget_mb: float | None = None
    activation_mb: float | None = None
    peak_scope_mb: float | None = None
    chunk_sizes: tuple[int, ...] | None = None
    summed_from: int | None = None
    protect_mode: str | None = None
    protect_weight: float | None = None
    protected_concepts: int | None = None
    extra: dict = field(default_factory=dict)

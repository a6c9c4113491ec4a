"""What an attribution is asked to do: one frozen record with the defaults and the checks, read by the node's
schema, the ComfyUI bridge, the core driver and the scripts alike."""
import math
import numbers
from dataclasses import dataclass, fields, replace

from .errors import CADError
from .objectives import OBJECTIVES
from .scopes import SCOPE_PRESETS
from .trajectory import SCHEDULES

CHECKPOINTING = ("auto", "on", "off")
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_STEPS, MAX_SAMPLES, MAX_GUIDANCE, MAX_BUDGET_MB = 1000, 256, 30.0, 1 << 30


@dataclass(frozen=True)
class AttributionRequest:
    """One attribution's settings. Building one checks every field, so a request that exists is valid.

    objective: a name in OBJECTIVES. scope: a preset in SCOPE_PRESETS; with 'regex', scope_regex names the weights.
    steps: sampling timesteps visited. guidance: classifier-free guidance of the trajectories. seed: their noise.
    samples: trajectories summed over. schedule: 'single' (O(steps)) or 'reference' (O(steps^2)).
    memory_budget_mb: 0 = no limit, else the most CAD may take beyond the loaded model (the scope then runs in
    chunks). gradient_checkpointing: 'auto', 'on' or 'off'.
    """

    objective: str = "concept_gap"
    scope: str = "ff"
    scope_regex: str = ""
    steps: int = 20
    guidance: float = 3.0
    seed: int = 0
    samples: int = 1
    schedule: str = "single"
    memory_budget_mb: float = 0
    gradient_checkpointing: str = "auto"

    def __post_init__(self):
        _choice("objective", self.objective, OBJECTIVES)
        _choice("scope", self.scope, SCOPE_PRESETS)
        _choice("schedule", self.schedule, SCHEDULES)
        if self.gradient_checkpointing not in CHECKPOINTING:
            raise CADError(f"gradient_checkpointing must be one of {', '.join(CHECKPOINTING)}, got "
                           f"{self.gradient_checkpointing!r}.")
        if not isinstance(self.scope_regex, str):
            raise CADError(f"scope_regex must be text, got {self.scope_regex!r}.")
        if self.scope == "regex" and not self.scope_regex.strip():
            raise CADError("scope 'regex' needs a pattern in scope_regex, e.g. 'attn2\\.to_[kv]' for cross-attention "
                           "K/V. Type one, or choose a preset scope such as 'ff'.")
        _integer("steps", self.steps, 1, MAX_STEPS)
        _integer("seed", self.seed, 0, MAX_SEED)
        _integer("samples", self.samples, 1, MAX_SAMPLES)
        _number("guidance", self.guidance, 0.0, MAX_GUIDANCE)
        _number("memory_budget_mb", self.memory_budget_mb, 0, MAX_BUDGET_MB,
                "0 (no limit) or a positive number of MB")

    def replace(self, **changes) -> "AttributionRequest":
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def as_meta(self) -> dict:
        """The fields an attribution file records about how it was made."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _choice(name, value, options):
    if not isinstance(value, str) or value not in options:
        raise CADError(f"Unknown {name} '{value}'. Expected one of: {', '.join(options)}.")


def _integer(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise CADError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def _number(name, value, low, high, expected=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not low <= value <= high:
        raise CADError(f"{name} must be {expected or f'a number from {low:g} to {high:g}'}, got {value!r}.")


DEFAULT_REQUEST = AttributionRequest()


def default(name: str):
    """The default of one field (node schemas read theirs from here)."""
    return getattr(DEFAULT_REQUEST, name)

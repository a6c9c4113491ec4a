"""What CAD Erase Concept is asked to do: one frozen record with the defaults and the checks, read by the node's
widgets, the ComfyUI bridge, the core and the benchmarks alike (as AttributionRequest is for attribution).

Two modes:
- 'robust' (the default): the closed-form K/V edit below, plus fine-tuning of the image-pathway weights the
  attribution locates, against an attacker in the loop (cad_core.robust_erase). Holds when the prompt is
  replaced by a learned embedding or a tuned conditioning; costs a training run (seconds on the toy world).
- 'closed form': only the cross-attention K/V matrices that hold `mass_share` of the concept's positive CAD mass,
  solved in closed form (cad_core.closed_form). Instant and selective, but an embedding walks around it.
"""
import math
import numbers
from dataclasses import dataclass, fields, replace

from .errors import CADError

ERASE_MODES = ("robust", "closed form")
MAX_TRAIN_STEPS, MAX_PICTURES = 5000, 64


@dataclass(frozen=True)
class EraseSettings:
    """One erase's settings. Building one checks every field, so settings that exist are valid.

    Closed form (both modes): overshoot: how far past the guide to aim, away from the concept (0 = UCE's target);
    preserve: weight of the kept prompts; ridge: pull toward the original weights; text_rows: token positions of
    each prompt used; mass_share: edit the fewest K/V matrices holding this share of the positive CAD mass.
    Robust only: train_steps, learning_rate, train_share (share of each located image-pathway row that may change,
    most positive CAD scores first), retain (weight of the kept prompts' pictures in training), batch, pictures
    (per prompt, drawn by the original model), adversaries (the attacking conditionings kept in the loop),
    adversary_lr, seed. overshoot also sets how far the training's target is pushed away from the concept.
    """

    mode: str = "robust"
    overshoot: float = 1.0
    preserve: float = 1.0
    ridge: float = 0.01
    text_rows: int = 77
    mass_share: float = 0.95
    train_steps: int = 150
    learning_rate: float = 0.003
    train_share: float = 0.2
    retain: float = 4.0
    batch: int = 8
    pictures: int = 4
    adversaries: int = 8
    adversary_lr: float = 0.02
    seed: int = 0

    def __post_init__(self):
        if self.mode not in ERASE_MODES:
            raise CADError(f"Unknown erase mode {self.mode!r}. Expected one of: {', '.join(ERASE_MODES)}.")
        _number("overshoot", self.overshoot, 0.0, 4.0)
        _number("preserve", self.preserve, 0.0, 100.0)
        _number("ridge", self.ridge, 0.0, 1e6)
        _integer("text_rows", self.text_rows, 1, 4096)
        _number("mass_share", self.mass_share, 0.0, 1.0, low_open=True)
        _integer("train_steps", self.train_steps, 1, MAX_TRAIN_STEPS)
        _number("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _number("train_share", self.train_share, 0.0, 1.0, low_open=True)
        _number("retain", self.retain, 0.0, 1000.0)
        _integer("batch", self.batch, 1, 1024)
        _integer("pictures", self.pictures, 1, MAX_PICTURES)
        _integer("adversaries", self.adversaries, 1, 256)
        _number("adversary_lr", self.adversary_lr, 0.0, 10.0)
        _integer("seed", self.seed, 0, 0xFFFFFFFFFFFFFFFF)

    @property
    def robust(self) -> bool:
        return self.mode == "robust"

    def replace(self, **changes) -> "EraseSettings":
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _integer(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise CADError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def _number(name, value, low, high, low_open=False):
    bad_low = value <= low if low_open else value < low
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or bad_low \
            or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise CADError(f"{name} must be a finite number {bound} and <= {high:g}, got {value!r}.")


DEFAULT_ERASE = EraseSettings()


def erase_default(name: str):
    """The default of one field (node schemas read theirs from here)."""
    return getattr(DEFAULT_ERASE, name)

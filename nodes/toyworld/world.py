"""Procedural captioned images: 4 shapes x 4 colours on jittered backgrounds, 32x32 RGB in [0, 1].

Every concept is known exactly, so a model's samples can be scored exactly (scorers.py).
"""
import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (0.95, 0.15, 0.12), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.35, 1.0), "yellow": (0.95, 0.88, 0.1)}
COLOUR_NAMES = tuple(COLOURS)
SIZE = 32
SUPERSAMPLE = 4


def caption(shape: str | None, colour: str | None) -> str:
    """'a red circle', 'a circle', 'a red', or '' (the empty prompt)."""
    words = [w for w in (colour, shape) if w]
    return "a " + " ".join(words) if words else ""


def all_captions() -> list[str]:
    full = [caption(s, c) for c in COLOUR_NAMES for s in SHAPES]
    return full + [caption(s, None) for s in SHAPES] + [caption(None, c) for c in COLOUR_NAMES] + [""]


def render(shape: str, colour: str, rng: np.random.Generator) -> np.ndarray:
    """One image (H, W, 3) float32: a jittered shape of a jittered colour on a noisy grey background."""
    n = SIZE * SUPERSAMPLE
    r = rng.uniform(6.0, 11.0) * SUPERSAMPLE
    cx, cy = rng.uniform(r + 2, n - r - 2, size=2)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        inside = dx ** 2 + dy ** 2 <= r ** 2
    elif shape == "square":
        half = r * 0.85
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "triangle":  # upward, apex at top
        top, bottom, half = cy - r, cy + 0.8 * r, r
        frac = (y - top) / (bottom - top)
        inside = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * half)
    elif shape == "cross":
        arm = r * 0.36
        inside = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    else:
        raise ValueError(f"unknown shape {shape}")
    coverage = inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
    grey = rng.uniform(0.05, 0.35)
    background = np.clip(grey + rng.normal(0, 0.03, size=(SIZE, SIZE, 1)), 0, 1)
    fill = np.clip(np.array(COLOURS[colour]) + rng.uniform(-0.08, 0.08, size=3), 0, 1)
    return (background * (1 - coverage) + fill * coverage).astype(np.float32)


def batch(rng: np.random.Generator, n: int, shapes=SHAPES, colours=COLOUR_NAMES, shape_weights=None):
    """n random images with their (shape index, colour index) labels."""
    s_idx = rng.choice(len(shapes), size=n, p=shape_weights)
    c_idx = rng.integers(len(colours), size=n)
    images = np.stack([render(shapes[s], colours[c], rng) for s, c in zip(s_idx, c_idx)])
    return images, s_idx, c_idx

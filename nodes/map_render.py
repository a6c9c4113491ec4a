"""Draws the attribution map (cad_core.block_map rows) as a picture: a diverging bar chart of positive
and negative attribution mass per block and, with a mask, the share of each block it selects."""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..cad_core import CADError

POSITIVE = (200, 62, 77)        # alpha > 0: carries the concept
NEGATIVE = (52, 118, 168)       # alpha < 0: suppresses it
SELECTED = (42, 157, 143)       # share of the block the mask selects
INK = (34, 34, 34)
MUTED = (110, 110, 110)
GRID = (228, 228, 228)
BACKGROUND = (255, 255, 255)

_UNET_LABELS = ("in ", "mid", "out ")


def render_block_map(block_map: dict, width: int, height: int) -> Image.Image:
    """The whole picture: title, legend, one panel of masses, a second of mask shares when there is a mask."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    fonts = _Fonts(max(10, min(width // 64, height // 30)))
    rows, mask = block_map["rows"], block_map["mask"]

    top = _draw_header(draw, fonts, block_map, width)
    margin = fonts.size
    left = margin + fonts.size * 2 + _tick_label_width(draw, fonts, _mass_ticks(rows, 5))
    right = width - margin
    label_height = _block_label_height(draw, fonts, rows, (right - left) / max(len(rows), 1))
    bottom = height - margin // 2 - label_height - fonts.size * 2
    if bottom - top < fonts.size * 4:
        raise CADError(f"A {width}x{height} picture leaves no room for the chart below its title; "
                       f"make it taller (at least {height + fonts.size * 4 - (bottom - top)} px).")

    if mask is None:
        _draw_mass_panel(image, draw, fonts, rows, (left, top, right, bottom))
    else:
        gap = fonts.size * 2
        split = top + int((bottom - top - gap) * 0.6)
        _draw_mass_panel(image, draw, fonts, rows, (left, top, right, split))
        _draw_share_panel(image, draw, fonts, rows, (left, split + gap, right, bottom))
    _draw_block_labels(image, draw, fonts, rows, (left, top, right, bottom))
    return image


def image_tensor(picture: Image.Image) -> torch.Tensor:
    """ComfyUI's IMAGE: float32 [batch, height, width, 3] in 0..1."""
    return torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)


class _Fonts:
    def __init__(self, size: int):
        self.size = size
        self.title = ImageFont.load_default(size=round(size * 1.25))
        self.text = ImageFont.load_default(size=size)
        self.small = ImageFont.load_default(size=max(9, round(size * 0.85)))


# ------------------------------------------------------------------------------------------ header
def _draw_header(draw, fonts, block_map, width) -> int:
    """Title, totals and legend; returns the y where the panels may start."""
    margin, y = fonts.size, fonts.size // 2
    room = width - 2 * margin
    title = ["CAD attribution map", block_map["objective"] or "objective unknown",
             f"scope {block_map['scope'] or 'unknown'}", f"{block_map['weights']:,} weights"]
    totals = [f"positive mass {_number(block_map['positive_mass'])}",
              f"negative mass {_number(block_map['negative_mass'])}"]
    mask = block_map["mask"]
    if mask is not None:
        totals.append(f"{mask['mode']} mask: {mask['selected']:,} of {mask['scoped_weights']:,} weights selected "
                      f"({_percent(mask['percent_of_scope'])})")
    for parts, font, colour in ((title, fonts.title, INK), (totals, fonts.text, MUTED)):
        for line in _fit_lines(draw, parts, font, room):
            draw.text((margin, y), line, font=font, fill=colour)
            y += _line_height(font)
    legend = [(POSITIVE, "alpha > 0: carries the concept"), (NEGATIVE, "alpha < 0: suppresses it")]
    if mask is not None:
        legend.append((SELECTED, "selected by the mask (% of each block)"))
    x, swatch = margin, fonts.size * 0.8
    for colour, label in legend:
        needed = swatch + fonts.size * 0.4 + draw.textlength(label, font=fonts.text)
        if x > margin and x + needed > width - margin:
            x, y = margin, y + _line_height(fonts.text)
        draw.rectangle((x, y + fonts.size * 0.2, x + swatch, y + fonts.size * 0.2 + swatch), fill=colour)
        draw.text((x + swatch + fonts.size * 0.4, y), label, font=fonts.text, fill=INK)
        x += needed + fonts.size * 1.5
    return y + _line_height(fonts.text) + fonts.size


# ------------------------------------------------------------------------------------------ panels
def _mass_ticks(rows, count):
    return _nice_ticks(min([r["negative_mass"] for r in rows] + [0.0]),
                       max([r["positive_mass"] for r in rows] + [0.0]), count)


def _tick_count(fonts, top, bottom):
    """As many ticks as fit with two text lines between them, 2 to 5."""
    return max(2, min(5, int((bottom - top) // (fonts.size * 2))))


def _draw_mass_panel(image, draw, fonts, rows, box):
    left, top, right, bottom = box
    ticks = _mass_ticks(rows, _tick_count(fonts, top, bottom))
    y_of = _linear(ticks[0], ticks[-1], bottom, top)
    _draw_y_axis(image, draw, fonts, box, ticks, y_of, _number, ("attribution mass (sum of alpha)", "sum of alpha"))
    zero = y_of(0.0)
    for x0, x1, row in _columns(rows, left, right):
        if row["positive_mass"] > 0:
            draw.rectangle((x0, y_of(row["positive_mass"]), x1, zero), fill=POSITIVE)
        if row["negative_mass"] < 0:
            draw.rectangle((x0, zero, x1, y_of(row["negative_mass"])), fill=NEGATIVE)
    draw.line((left, zero, right, zero), fill=INK, width=1)
    if all(r["positive_mass"] == 0 and r["negative_mass"] == 0 for r in rows):
        _centered(draw, ((left + right) / 2, (top + bottom) / 2), "every score is zero", fonts.text, MUTED)


def _draw_share_panel(image, draw, fonts, rows, box):
    left, top, right, bottom = box
    shares = [100.0 * (r["share"] or 0.0) for r in rows]
    ticks = _nice_ticks(0.0, max(shares + [0.0]), _tick_count(fonts, top, bottom))
    y_of = _linear(ticks[0], ticks[-1], bottom, top)
    _draw_y_axis(image, draw, fonts, box, ticks, y_of, lambda t: f"{t:g}%", ("% selected", "%"))
    column_width = (right - left) / max(len(rows), 1)
    for (x0, x1, _), share in zip(_columns(rows, left, right), shares):
        if share > 0:
            draw.rectangle((x0, y_of(share), x1, bottom), fill=SELECTED)
        label = _percent(share)
        if draw.textlength(label, font=fonts.small) <= column_width * 0.95:
            _centered(draw, ((x0 + x1) / 2, y_of(share) - fonts.size * 0.6), label, fonts.small, INK)
    draw.line((left, bottom, right, bottom), fill=INK, width=1)


def _draw_y_axis(image, draw, fonts, box, ticks, y_of, tick_text, titles):
    """Grid lines, tick labels and the first of `titles` that fits the panel's height."""
    left, top, right, bottom = box
    for tick in ticks:
        y = y_of(tick)
        draw.line((left, y, right, y), fill=GRID, width=1)
        text = tick_text(tick)
        draw.text((left - fonts.size * 0.4 - draw.textlength(text, font=fonts.small), y - fonts.size * 0.5),
                  text, font=fonts.small, fill=MUTED)
    draw.line((left, top, left, bottom), fill=MUTED, width=1)
    title = _first_fitting(draw, titles, fonts.text, bottom - top)
    if title:
        _vertical_text(image, (fonts.size * 1.1, (top + bottom) / 2), title, fonts.text, INK)


def _draw_block_labels(image, draw, fonts, rows, plot):
    left, _, right, bottom = plot
    columns = list(_columns(rows, left, right))
    rotate = _labels_must_rotate(draw, fonts, rows, (right - left) / max(len(rows), 1))
    y = bottom + fonts.size * 0.4
    for x0, x1, row in columns:
        centre = (x0 + x1) / 2
        if rotate:
            _vertical_text(image, (centre, None), row["label"], fonts.small, INK, top=y)
        else:
            _centered(draw, (centre, y + fonts.size * 0.5), row["label"], fonts.small, INK)
    unet = any(row["label"].startswith(_UNET_LABELS) for row in rows)
    titles = ("block (in = input_blocks, mid = middle_block, out = output_blocks)",) if unet else ()
    axis_title = _first_fitting(draw, titles + ("block",), fonts.text, image.width - 2 * fonts.size)
    _centered(draw, ((left + right) / 2, image.height - fonts.size), axis_title, fonts.text, INK)


# ------------------------------------------------------------------------------------------ geometry
def _columns(rows, left, right):
    """(x0, x1, row) of each bar: columns of equal width, bars 70% of their column."""
    width = (right - left) / max(len(rows), 1)
    for i, row in enumerate(rows):
        centre = left + (i + 0.5) * width
        half = max(width * 0.35, 0.5)
        yield centre - half, centre + half, row


def _labels_must_rotate(draw, fonts, rows, column_width):
    return any(draw.textlength(r["label"], font=fonts.small) > column_width * 0.95 for r in rows)


def _block_label_height(draw, fonts, rows, column_width):
    if not _labels_must_rotate(draw, fonts, rows, column_width):
        return fonts.size * 1.5
    return max(draw.textlength(r["label"], font=fonts.small) for r in rows) + fonts.size * 0.8


def _tick_label_width(draw, fonts, mass_ticks):
    """Room for the widest tick label of either panel."""
    return max(draw.textlength(text, font=fonts.small) for text in [_number(t) for t in mass_ticks] + ["100%"])


def _linear(value_lo, value_hi, pixel_lo, pixel_hi):
    span = (value_hi - value_lo) or 1.0
    return lambda v: pixel_lo + (v - value_lo) / span * (pixel_hi - pixel_lo)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi] and 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0 or not math.isfinite(hi - lo):
        return [0.0, 1.0]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [i * step for i in range(first, last + 1)]


# ------------------------------------------------------------------------------------------ text
def _line_height(font):
    return round(font.size * 1.45)


def _fit_lines(draw, parts, font, room):
    """Join the parts with ' · ' into as few lines as fit in `room` pixels (a part never splits)."""
    lines = []
    for part in parts:
        joined = f"{lines[-1]} · {part}" if lines else part
        if lines and draw.textlength(joined, font=font) <= room:
            lines[-1] = joined
        else:
            lines.append(part)
    return lines


def _first_fitting(draw, texts, font, room):
    return next((text for text in texts if draw.textlength(text, font=font) <= room), "")


def _centered(draw, centre, text, font, fill):
    x, y = centre
    draw.text((x - draw.textlength(text, font=font) / 2, y - font.size * 0.55), text, font=font, fill=fill)


def _vertical_text(image, centre, text, font, fill, top=None):
    """Text turned 90 degrees counter-clockwise (read bottom to top), centred on x and on y, or hanging from
    `top` so that the text ends there (block names under the axis)."""
    length = math.ceil(ImageDraw.Draw(image).textlength(text, font=font)) + 2
    strip = Image.new("RGBA", (length, round(font.size * 1.4)), (0, 0, 0, 0))
    ImageDraw.Draw(strip).text((1, 0), text, font=font, fill=fill)
    turned = strip.rotate(90, expand=True)
    x = round(centre[0] - turned.width / 2)
    y = round(top if top is not None else centre[1] - turned.height / 2)
    image.paste(turned, (x, y), turned)


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def _percent(value: float) -> str:
    if value == 0:
        return "0%"
    return f"{value:.2f}%" if value >= 0.01 else f"{value:.2g}%"

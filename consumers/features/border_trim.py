"""Trim uniform borders (padding, letterboxing, frames) before describing an image.

Why: a copy with a 10-20 % white or black border added is, to a global descriptor, another
picture. The pHash's lowest frequencies are dominated by the new frame and the content
shrinks to 60-80 % of the side, so a plain 576-bit pHash misses most padded copies; the
colour histogram gains a spike of pure white or black. Removing rows and columns that are
one flat colour, side by side and again while something changes (a white pad around a black
frame), gives the copy back the original's framing.

Added borders are flat (up to JPEG noise) and thin. The test (`Flatness`): every channel
within TOLERANCE of the border's colour on COVERAGE of the line, and a side whose flat run
goes deeper than MAX_SIDE of the image is left alone. That rule (FLAT) is the copy codes':
applied to indexed and query images alike, an original with a flat edge is trimmed the same
way on both sides. But it takes smooth parts of photographs as well (a plain wall, a still
background: within TOLERANCE of one line for many lines, pass after pass), and a keypoint
query's frame is what says which of several overlapping originals contains it, so keypoint
queries trim by ADDED: a line also stays within DRIFT of the border's colour on average, in
grey. The test runs on a <= 256 px copy (a few milliseconds) and the box is mapped back to
the full image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL crop order

TOLERANCE = 10  # max per-channel difference to the border's colour (JPEG noise, ringing)
COVERAGE = 0.99  # share of a row/column's pixels that must be within TOLERANCE
MAX_SIDE = 0.3  # a flat run deeper than this share of the image is picture, not border
_SIDE = 256
_PASSES = 6


@dataclass(frozen=True)
class Flatness:
    """What makes a line a border's: every channel within `tolerance` of the border's colour
    on `coverage` of the line; with a `drift`, the line's mean |difference| to that colour at
    most `drift` too; on the grey picture when `grey`."""

    tolerance: int = TOLERANCE
    coverage: float = COVERAGE
    max_side: float = MAX_SIDE
    drift: float | None = None
    grey: bool = False


# The copy codes' rule (the copy index's stored codes were made with it). It takes flat parts
# of a picture too: a plain wall or a still background is within TOLERANCE of its first line
# for many lines, and each pass may take MAX_SIDE of what the last left.
FLAT = Flatness()
# Added borders only (keypoint queries, whose frame says what they show): an added pad is one
# grey level, so a line must stay within DRIFT of it on average; JPEG spreads a pad's colour
# over its chroma, not its grey, so it is judged in grey (bench/border_trim.py: how much of a
# picture each rule cuts, and how much of a pad it leaves).
DRIFT = 1.0
ADDED = Flatness(drift=DRIFT, grey=True)


def _uniform_run(lines: NDArray[np.int16], limit: int, rule: Flatness) -> int:
    """How many leading lines of `lines` (n, length, channels) have the first line's colour
    (as `rule` says).

    0 when the run is longer than `limit` lines (or covers everything): that is a flat part
    of the picture, not a border someone added. Lines are tested in growing blocks, so a
    side that is not flat costs one line.
    """
    n = min(limit + 1, lines.shape[0])
    if limit <= 0 or n == 0 or lines.shape[1] == 0:
        return 0
    reference = np.median(lines[0], axis=0)
    start, step = 0, 4
    while start < n:
        block = lines[start : min(n, start + step)]
        away = np.abs(block - reference)
        close = (away.max(axis=2) <= rule.tolerance).mean(axis=1) >= rule.coverage
        if rule.drift is not None:
            close &= away.mean(axis=(1, 2)) <= rule.drift
        if not close.all():
            return start + int(np.argmin(close))
        start, step = start + step, step * 2
    return 0


def _cut(run: int) -> int:
    # With a border found, its last line is dropped too: at thumbnail scale it mixes border
    # and picture (and JPEG ringing), and would stop the next pass from seeing what follows.
    return run + 1 if run else 0


def border_box_array(pixels: NDArray[np.uint8], rule: Flatness = FLAT) -> Box:
    """The box of `pixels` (h, w, channels) left after stripping uniform borders from every
    side."""
    arr = pixels.astype(np.int16)
    height, width = arr.shape[:2]
    left, top, right, bottom = 0, 0, width, height
    for _ in range(_PASSES):
        before = (left, top, right, bottom)
        # Each pass may take up to max_side of what is left: a pad, then a frame inside it.
        rows, cols = int(rule.max_side * (bottom - top)), int(rule.max_side * (right - left))
        top += _cut(_uniform_run(arr[top:bottom, left:right], rows, rule))
        bottom -= _cut(_uniform_run(arr[top:bottom, left:right][::-1], rows, rule))
        lines = arr[top:bottom, left:right].transpose(1, 0, 2)
        left += _cut(_uniform_run(lines, cols, rule))
        lines = arr[top:bottom, left:right].transpose(1, 0, 2)
        right -= _cut(_uniform_run(lines[::-1], cols, rule))
        if (left, top, right, bottom) == before:
            break
    return left, top, right, bottom


def border_box(img: Image.Image, rule: Flatness = FLAT) -> Box:
    """The crop box (in `img`'s pixels) without its uniform borders."""
    small = img.convert("L" if rule.grey else "RGB")
    if max(small.size) > _SIDE:
        small = small.copy()
        small.thumbnail((_SIDE, _SIDE), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.uint8)
    left, top, right, bottom = border_box_array(pixels.reshape(*pixels.shape[:2], -1), rule)
    if (left, top, right, bottom) == (0, 0, small.width, small.height):
        return 0, 0, img.width, img.height
    sx, sy = img.width / small.width, img.height / small.height
    # Round inwards: a thumbnail line that mixes border and picture was kept as picture.
    return (
        int(np.ceil(left * sx)),
        int(np.ceil(top * sy)),
        max(int(np.ceil(left * sx)) + 1, int(np.floor(right * sx))),
        max(int(np.ceil(top * sy)) + 1, int(np.floor(bottom * sy))),
    )


def trim_borders(img: Image.Image, rule: Flatness = FLAT) -> Image.Image:
    """`img` without its uniform borders (the same object when there are none)."""
    box = border_box(img, rule)
    if box == (0, 0, img.width, img.height):
        return img
    return img.crop(box)


def framings(img: Image.Image) -> list[Image.Image]:
    """`img`, and `img` trimmed when that changes anything: describe both, match on either.

    Trimming as a replacement fails when a copy's transform changes how far a flat edge
    reaches (a watermark on a white margin, a crop into a flat sky); keeping the untrimmed
    framing too costs a second descriptor for the images that have borders, and only them.
    """
    trimmed = trim_borders(img)
    return [img] if trimmed is img else [img, trimmed]

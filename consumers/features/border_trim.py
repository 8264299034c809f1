"""Trim uniform borders (padding, letterboxing, frames) before describing an image.

Why: a copy with a 10-20 % white or black border added is, to a global descriptor, another
picture. The pHash's lowest frequencies are dominated by the new frame and the content
shrinks to 60-80 % of the side, so a plain 576-bit pHash misses most padded copies; the
colour histogram gains a spike of pure white or black. Removing rows and columns that are
one flat colour, side by side and again while something changes (a white pad around a black
frame), gives the copy back the original's framing.

Added borders are flat (up to JPEG noise) and thin; flat parts of photographs (sky, a page
margin) are rarely both. So the test is strict (every channel within TOLERANCE of the
border's colour on COVERAGE of the line) and a side whose flat run goes deeper than MAX_SIDE
of the image is left alone. It is applied to indexed and query images alike, so an original
with a flat edge is trimmed the same way on both sides. The test runs on a <= 256 px copy
(a few milliseconds) and the box is mapped back to the full image.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL crop order

TOLERANCE = 10  # max per-channel difference to the border's colour (JPEG noise, ringing)
COVERAGE = 0.99  # share of a row/column's pixels that must be within TOLERANCE
MAX_SIDE = 0.3  # a flat run deeper than this share of the image is picture, not border
_SIDE = 256
_PASSES = 6


def _uniform_run(lines: NDArray[np.int16], limit: int, tolerance: int, coverage: float) -> int:
    """How many leading lines of `lines` (n, length, 3) have the first line's colour.

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
        close = (np.abs(block - reference).max(axis=2) <= tolerance).mean(axis=1) >= coverage
        if not close.all():
            return start + int(np.argmin(close))
        start, step = start + step, step * 2
    return 0


def _cut(run: int) -> int:
    # With a border found, its last line is dropped too: at thumbnail scale it mixes border
    # and picture (and JPEG ringing), and would stop the next pass from seeing what follows.
    return run + 1 if run else 0


def border_box_array(
    pixels: NDArray[np.uint8],
    *,
    tolerance: int = TOLERANCE,
    coverage: float = COVERAGE,
    max_side: float = MAX_SIDE,
) -> Box:
    """The box of `pixels` (h, w, 3) left after stripping uniform borders from every side."""
    arr = pixels.astype(np.int16)
    height, width = arr.shape[:2]
    left, top, right, bottom = 0, 0, width, height
    for _ in range(_PASSES):
        before = (left, top, right, bottom)
        # Each pass may take up to max_side of what is left: a pad, then a frame inside it.
        rows, cols = int(max_side * (bottom - top)), int(max_side * (right - left))
        top += _cut(_uniform_run(arr[top:bottom, left:right], rows, tolerance, coverage))
        bottom -= _cut(_uniform_run(arr[top:bottom, left:right][::-1], rows, tolerance, coverage))
        lines = arr[top:bottom, left:right].transpose(1, 0, 2)
        left += _cut(_uniform_run(lines, cols, tolerance, coverage))
        lines = arr[top:bottom, left:right].transpose(1, 0, 2)
        right -= _cut(_uniform_run(lines[::-1], cols, tolerance, coverage))
        if (left, top, right, bottom) == before:
            break
    return left, top, right, bottom


def border_box(
    img: Image.Image,
    *,
    tolerance: int = TOLERANCE,
    coverage: float = COVERAGE,
    max_side: float = MAX_SIDE,
) -> Box:
    """The crop box (in `img`'s pixels) without its uniform borders."""
    small = img.convert("RGB")
    if max(small.size) > _SIDE:
        small = small.copy()
        small.thumbnail((_SIDE, _SIDE), Image.Resampling.BOX)
    left, top, right, bottom = border_box_array(
        np.asarray(small, dtype=np.uint8), tolerance=tolerance, coverage=coverage, max_side=max_side
    )
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


def trim_borders(
    img: Image.Image,
    *,
    tolerance: int = TOLERANCE,
    coverage: float = COVERAGE,
    max_side: float = MAX_SIDE,
) -> Image.Image:
    """`img` without its uniform borders (the same object when there are none)."""
    box = border_box(img, tolerance=tolerance, coverage=coverage, max_side=max_side)
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

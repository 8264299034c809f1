"""Trim near-uniform borders (padding, letterboxing, frames) before describing an image.

Why: a copy with a 10-20 % white or black border added is, to a global descriptor, another
picture. The pHash's lowest frequencies are dominated by the new frame and the content
shrinks to 60-80 % of the side, so a plain 576-bit pHash misses most padded copies; the
colour histogram gains a spike of pure white or black. Removing rows and columns that are
(almost) one colour, side by side and again while something changes (a white pad around a
black frame), gives the copy back the original's framing.

It is applied to every image, indexed and queried alike, so an original whose own edge is
uniform (a page margin, black sky) is trimmed the same way on both sides and still matches.
The test runs on a <= 256 px copy (about a millisecond) and the box is mapped back to the
full image; a picture that is nearly all one colour is returned untouched.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL crop order

TOLERANCE = 24  # max per-channel difference to the border colour (JPEG noise, ringing)
COVERAGE = 0.97  # share of a row/column's pixels that must be within TOLERANCE
MIN_KEEP = 0.25  # never keep less than this share of a side; else keep the image whole
_SIDE = 256
_PASSES = 4


def _uniform_run(lines: NDArray[np.int16], tolerance: int, coverage: float) -> int:
    """How many leading lines of `lines` (n, length, 3) have the first line's colour."""
    if lines.shape[0] == 0:
        return 0
    reference = np.median(lines[0], axis=0)
    close = (np.abs(lines - reference).max(axis=2) <= tolerance).mean(axis=1) >= coverage
    if not close[0]:
        return 0
    return int(np.argmin(close)) if not close.all() else int(close.shape[0])


def border_box_array(
    pixels: NDArray[np.uint8], *, tolerance: int = TOLERANCE, coverage: float = COVERAGE
) -> Box:
    """The box of `pixels` (h, w, 3) left after stripping uniform borders from every side."""
    arr = pixels.astype(np.int16)
    height, width = arr.shape[:2]
    left, top, right, bottom = 0, 0, width, height
    for _ in range(_PASSES):
        before = (left, top, right, bottom)
        top += _uniform_run(arr[top:bottom, left:right], tolerance, coverage)
        bottom -= _uniform_run(arr[top:bottom, left:right][::-1], tolerance, coverage)
        cols = arr[top:bottom, left:right].transpose(1, 0, 2)
        left += _uniform_run(cols, tolerance, coverage)
        right -= _uniform_run(arr[top:bottom, left:right].transpose(1, 0, 2)[::-1], tolerance, coverage)
        if right - left < MIN_KEEP * width or bottom - top < MIN_KEEP * height:
            return 0, 0, width, height
        if (left, top, right, bottom) == before:
            break
    return left, top, right, bottom


def border_box(img: Image.Image, *, tolerance: int = TOLERANCE, coverage: float = COVERAGE) -> Box:
    """The crop box (in `img`'s pixels) without its uniform borders."""
    small = img.convert("RGB")
    if max(small.size) > _SIDE:
        small = small.copy()
        small.thumbnail((_SIDE, _SIDE), Image.Resampling.BOX)
    left, top, right, bottom = border_box_array(
        np.asarray(small, dtype=np.uint8), tolerance=tolerance, coverage=coverage
    )
    sx, sy = img.width / small.width, img.height / small.height
    # Round inwards: a line of the thumbnail that mixes border and picture was kept.
    return (
        min(img.width - 1, int(np.ceil(left * sx))),
        min(img.height - 1, int(np.ceil(top * sy))),
        max(1, int(np.floor(right * sx))),
        max(1, int(np.floor(bottom * sy))),
    )


def trim_borders(
    img: Image.Image, *, tolerance: int = TOLERANCE, coverage: float = COVERAGE
) -> Image.Image:
    """`img` without its near-uniform borders (the same object when there are none)."""
    box = border_box(img, tolerance=tolerance, coverage=coverage)
    if box == (0, 0, img.width, img.height):
        return img
    return img.crop(box)

"""DCT perceptual hash, 576 bits: robust to resizing and re-encoding, cheap to compare.

grey -> 96x96 -> 2-D DCT-II -> keep the 24x24 lowest frequencies -> bit = coefficient > median.
A horizontal mirror only flips the sign of odd horizontal frequencies, so the mirrored
image's hash comes from the same DCT for free (used to match mirrored copies at query time).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

NAME = "phash"
SIDE = 96
KEEP = 24
BITS = KEEP * KEEP
VERSION = f"phash-dct{SIDE}-{KEEP}x{KEEP}-median-v1"


@cache
def _dct_matrix(n: int) -> NDArray[np.float64]:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m: NDArray[np.float64] = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0, :] = np.sqrt(1.0 / n)
    return m


@cache
def _mirror_signs() -> NDArray[np.float64]:
    # Coefficient (u, v) of a left-right flipped image is (-1)**v times the original.
    return np.tile((-1.0) ** np.arange(KEEP), (KEEP, 1))


def low_frequencies(img: Image.Image) -> NDArray[np.float64]:
    grey = img.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    x = np.asarray(grey, dtype=np.float64)
    d = _dct_matrix(SIDE)[:KEEP]
    coeffs: NDArray[np.float64] = d @ x @ d.T
    return coeffs


def _threshold(coeffs: NDArray[np.float64]) -> bytes:
    bits = coeffs.ravel() > np.median(coeffs)
    return np.packbits(bits).tobytes()


def phash(img: Image.Image) -> bytes:
    """72-byte hash of the image."""
    return _threshold(low_frequencies(img))


def phash_with_mirror(img: Image.Image) -> tuple[bytes, bytes]:
    """(hash of the image, hash of its left-right mirror), from one DCT."""
    coeffs = low_frequencies(img)
    return _threshold(coeffs), _threshold(coeffs * _mirror_signs())


def hamming(a: bytes, b: bytes) -> int:
    x = np.frombuffer(a, dtype=np.uint8) ^ np.frombuffer(b, dtype=np.uint8)
    return int(np.unpackbits(x).sum())

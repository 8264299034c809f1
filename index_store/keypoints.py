"""An image's keypoints as copy verification keeps them: where, what they look like, a small
grey copy of the picture to compare aligned pixels with, and the picture's copy codes (how near
two pictures' codes are is evidence too, and travelling together they need no other index).

`Keypoints` is what consumers/features/copy_keypoints.py describes (ORB on a <= 320 px grey
copy) and what index_store/alignment.py verifies. `pack`/`unpack` give it one byte layout,
versioned by its magic: a header (which says how long the whole is, so records packed back to
back can be split: `split`), the points as float16 (x, y on the grey copy), the 32-byte ORB
descriptors, the copy codes, then the grey copy as a JPEG (a query's: PNG).
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MAGIC = b"LKP3"
# magic, keypoints, grey height, grey width, code bytes, JPEG bytes
HEADER = struct.Struct("<4sHHHII")
DESCRIPTOR_BYTES = 32
GREY_QUALITY = 90
MAX_KEYPOINTS = 1 << 10  # the vote index numbers an image's keypoints within this
MAX_SIDE = 1024  # of the grey copy (keypoints describe it at <= 320 px)


@dataclass(frozen=True)
class Keypoints:
    points: NDArray[np.float32]  # (n, 2): x, y on `grey`
    descriptors: NDArray[np.uint8]  # (n, DESCRIPTOR_BYTES)
    # The grey copy (h, w), or as unpacked its JPEG and shape: decoded when first asked for
    # (`grey`), since most candidates of a search never get their pixels compared.
    pixels: NDArray[np.uint8] | tuple[bytes, tuple[int, int]]
    codes: bytes = b""  # the copy feature's codes of the picture (a query's: query codes)

    def __post_init__(self) -> None:
        n = len(self.points)
        if self.points.shape != (n, 2) or self.descriptors.shape != (n, DESCRIPTOR_BYTES):
            raise ValueError(
                f"{self.points.shape} points do not match {self.descriptors.shape} descriptors"
            )
        if isinstance(self.pixels, np.ndarray) and self.pixels.ndim != 2:
            raise ValueError(f"the grey copy has shape {self.pixels.shape}, not (h, w)")

    def __len__(self) -> int:
        return len(self.points)

    @property
    def shape(self) -> tuple[int, int]:
        """The grey copy's (h, w), without decoding it."""
        if isinstance(self.pixels, np.ndarray):
            h, w = self.pixels.shape
            return h, w
        return self.pixels[1]

    @functools.cached_property
    def grey(self) -> NDArray[np.uint8]:
        if isinstance(self.pixels, np.ndarray):
            return self.pixels
        return decoded_grey(*self.pixels)


class BadKeypoints(ValueError):
    """Bytes that are not packed Keypoints of this layout."""


def pack(keypoints: Keypoints, lossless: bool = False) -> bytes:
    """The layout's bytes; the grey copy as a JPEG, or (`lossless`: a query's, compared with
    many candidates and never stored) an uncompressed PNG (compressing took twice as long:
    a query is described while its asker waits, and its bytes do not travel)."""
    h, w = keypoints.grey.shape
    grey = io.BytesIO()
    if lossless:
        Image.fromarray(keypoints.grey, "L").save(grey, "PNG", compress_level=0)
    else:
        Image.fromarray(keypoints.grey, "L").save(grey, "JPEG", quality=GREY_QUALITY)
    return b"".join(
        (
            HEADER.pack(MAGIC, len(keypoints), h, w, len(keypoints.codes), grey.getbuffer().nbytes),
            keypoints.points.astype("<f2").tobytes(),
            np.ascontiguousarray(keypoints.descriptors).tobytes(),
            keypoints.codes,
            grey.getvalue(),
        )
    )


@dataclass(frozen=True)
class _Layout:
    keypoints: int
    shape: tuple[int, int]  # the grey copy's (h, w)
    points: slice
    descriptors: slice
    codes: slice
    grey: slice


def _layout(data: bytes | memoryview, at: int = 0) -> _Layout:
    """Where each part of the packed keypoints starting at `at` lies (the grey copy is not
    decoded here)."""
    if len(data) - at < HEADER.size:
        raise BadKeypoints(f"{len(data) - at} bytes are shorter than the header")
    magic, n, h, w, code_bytes, grey_bytes = HEADER.unpack_from(data, at)
    if magic != MAGIC:
        raise BadKeypoints(f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if n > MAX_KEYPOINTS:
        raise BadKeypoints(f"{n} keypoints, more than {MAX_KEYPOINTS}")
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise BadKeypoints(f"a {w}x{h} grey copy: its sides must be 1 to {MAX_SIDE}")
    points_end = at + HEADER.size + n * 2 * 2
    descriptors_end = points_end + n * DESCRIPTOR_BYTES
    codes_end = descriptors_end + code_bytes
    end = codes_end + grey_bytes
    if not grey_bytes or len(data) < end:
        raise BadKeypoints(f"{len(data) - at} bytes cannot hold {n} keypoints and a grey copy")
    return _Layout(
        n,
        (h, w),
        slice(at + HEADER.size, points_end),
        slice(points_end, descriptors_end),
        slice(descriptors_end, codes_end),
        slice(codes_end, end),
    )


def split(records: bytes | memoryview) -> list[memoryview]:
    """Packed keypoints written back to back, one view each."""
    view, at, out = memoryview(records), 0, []
    while at < len(view):
        end = _layout(view, at).grey.stop
        out.append(view[at:end])
        at = end
    return out


def descriptors_of(data: bytes | memoryview) -> NDArray[np.uint8]:
    """Only the descriptors of packed keypoints (what the vote index holds): no decoding."""
    layout = _layout(data)
    found = np.frombuffer(data[layout.descriptors], np.uint8)
    return found.reshape(layout.keypoints, DESCRIPTOR_BYTES)


def check(data: bytes) -> str | None:
    """Why `data` are not packed keypoints of this layout, or None. The grey copy is decoded
    here (what an indexer accepts must decode when a search compares it)."""
    try:
        layout = _layout(data)
        if layout.grey.stop != len(data):
            return f"{len(data) - layout.grey.stop} bytes follow the keypoints"
        decoded_grey(bytes(data[layout.grey]), layout.shape)
    except BadKeypoints as exc:
        return str(exc)
    return None


def unpack(data: bytes) -> Keypoints:
    """The keypoints (the grey copy is decoded when first used: `Keypoints.grey`)."""
    layout = _layout(data)
    n = layout.keypoints
    points = np.frombuffer(data[layout.points], "<f2").astype(np.float32).reshape(n, 2)
    grey = (bytes(data[layout.grey]), layout.shape)
    return Keypoints(points, descriptors_of(data), grey, bytes(data[layout.codes]))


def decoded_grey(encoded: bytes, shape: tuple[int, int]) -> NDArray[np.uint8]:
    """The grey copy, a JPEG or PNG of `shape` (checked before its pixels are decoded)."""
    try:
        with Image.open(io.BytesIO(encoded), formats=("JPEG", "PNG")) as img:
            if (img.height, img.width) != shape:
                raise BadKeypoints(
                    f"the grey copy is {(img.height, img.width)}, the header says {shape}"
                )
            grey = np.asarray(img.convert("L"))
    except BadKeypoints:
        raise
    except Exception as exc:  # whatever the decoder says of bytes it cannot read
        raise BadKeypoints(f"the grey copy does not decode: {exc}") from exc
    return grey

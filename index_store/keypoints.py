"""An image's keypoints as copy verification keeps them: where, what they look like, and a
small grey copy of the picture to compare aligned pixels with.

`Keypoints` is what consumers/features/copy_keypoints.py describes (ORB on a <= 320 px grey
copy) and what index_store/alignment.py verifies. `pack`/`unpack` give it one byte layout,
versioned by its magic: a header, the points as float16 (x, y on the grey copy), the 32-byte
ORB descriptors, then the grey copy as a JPEG.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

MAGIC = b"LKP1"
HEADER = struct.Struct("<4sHHH")  # magic, keypoints, grey height, grey width
DESCRIPTOR_BYTES = 32
GREY_QUALITY = 90


@dataclass(frozen=True)
class Keypoints:
    points: NDArray[np.float32]  # (n, 2): x, y on `grey`
    descriptors: NDArray[np.uint8]  # (n, DESCRIPTOR_BYTES)
    grey: NDArray[np.uint8]  # (h, w)

    def __post_init__(self) -> None:
        n = len(self.points)
        if self.points.shape != (n, 2) or self.descriptors.shape != (n, DESCRIPTOR_BYTES):
            raise ValueError(
                f"{self.points.shape} points do not match {self.descriptors.shape} descriptors"
            )
        if self.grey.ndim != 2:
            raise ValueError(f"the grey copy has shape {self.grey.shape}, not (h, w)")

    def __len__(self) -> int:
        return len(self.points)


class BadKeypoints(ValueError):
    """Bytes that are not packed Keypoints of this layout."""


def pack(keypoints: Keypoints) -> bytes:
    h, w = keypoints.grey.shape
    grey = io.BytesIO()
    Image.fromarray(keypoints.grey, "L").save(grey, "JPEG", quality=GREY_QUALITY)
    return b"".join(
        (
            HEADER.pack(MAGIC, len(keypoints), h, w),
            keypoints.points.astype("<f2").tobytes(),
            np.ascontiguousarray(keypoints.descriptors).tobytes(),
            grey.getvalue(),
        )
    )


def unpack(data: bytes) -> Keypoints:
    if len(data) < HEADER.size:
        raise BadKeypoints(f"{len(data)} bytes are shorter than the header")
    magic, n, h, w = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BadKeypoints(f"magic {magic!r}, expected {MAGIC!r}")
    at = HEADER.size
    points_end = at + n * 2 * 2
    descriptors_end = points_end + n * DESCRIPTOR_BYTES
    if len(data) <= descriptors_end:
        raise BadKeypoints(f"{len(data)} bytes cannot hold {n} keypoints and a grey copy")
    points = np.frombuffer(data[at:points_end], "<f2").astype(np.float32).reshape(n, 2)
    descriptors = np.frombuffer(data[points_end:descriptors_end], np.uint8)
    descriptors = descriptors.reshape(n, DESCRIPTOR_BYTES)
    try:
        with Image.open(io.BytesIO(data[descriptors_end:])) as img:
            grey = np.asarray(img.convert("L"))
    except OSError as exc:
        raise BadKeypoints(f"the grey copy does not decode: {exc}") from exc
    if grey.shape != (h, w):
        raise BadKeypoints(f"the grey copy is {grey.shape}, the header says {(h, w)}")
    return Keypoints(points, descriptors, grey)

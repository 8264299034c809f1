"""Keypoints for copy verification: ORB on a <= 320 px grey copy of the picture.

A copy that keeps only part of its original (a crop at any place and aspect, a crop of a
turned or padded copy) has no global hash in common with it, but most of its corners and
edges are still there, at one scale and angle: ORB keypoints (FAST corners, oriented BRIEF
descriptors of 256 bits, over a scale pyramid) find them, and index_store/alignment.py checks
that they agree on one similarity transform and that the pixels it aligns match.

An indexed image keeps INDEXED keypoints, a query looks for QUERY (as many: twice as many
found no more copies on bench/copy_verify.py's tuning half and cost twice the votes). A query
is border-trimmed first (border_trim.ADDED: added borders only, not a picture's flat parts):
padding has no keypoints but moves everything else, and the frame left says what the query
shows. Each carries the picture's copy codes (copy_signature: a
query's query codes), whose distance the copy scorer weighs too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from consumers.features import border_trim, copy_signature
from consumers.features.contract import OnDemand
from index_store.keypoints import DESCRIPTOR_BYTES, MAGIC, Keypoints, pack

NAME = "keypoints"
SIDE = 320  # longest side of the grey copy keypoints are found on
INDEXED = 300
QUERY = 300
EDGE = 15  # pixels at the border without keypoints (ORB's patch must fit)
FAST_THRESHOLD = 7  # lower than ORB's default 20: flat regions and small, soft pictures get corners
VERSION = f"keypoints-orb{INDEXED}-f{FAST_THRESHOLD}-{SIDE}px-{MAGIC.decode()}-v1"
VERSION += f"+{copy_signature.VERSION}"  # the codes it carries
MAX_BYTES = 256 * 1024  # packed: far more than 1,024 keypoints and a 320 px grey JPEG take


def grey_copy(img: Image.Image) -> NDArray[np.uint8]:
    """The picture in grey, its longest side at most SIDE (area-averaged)."""
    grey = np.asarray(img.convert("L"))
    h, w = grey.shape
    scale = SIDE / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(grey, dtype=np.uint8)


def describe(
    img: Image.Image, keypoints: int = INDEXED, trim: bool = False, codes: bytes = b""
) -> Keypoints:
    """Up to `keypoints` ORB keypoints of `img` (borders trimmed first if `trim`), carrying
    `codes` (its copy codes)."""
    framed = border_trim.trim_borders(img, border_trim.ADDED) if trim else img
    grey = grey_copy(framed)
    found: Sequence[cv2.KeyPoint] = ()
    descriptors: cv2.typing.MatLike | None = None
    if min(grey.shape) > 2 * EDGE:  # else no keypoint can lie EDGE px inside (and ORB fails)
        orb = cv2.ORB.create(nfeatures=keypoints, edgeThreshold=EDGE, fastThreshold=FAST_THRESHOLD)
        found, descriptors = orb.detectAndCompute(grey, None)
    if descriptors is None or not found:
        empty_points = np.zeros((0, 2), np.float32)
        return Keypoints(empty_points, np.zeros((0, DESCRIPTOR_BYTES), np.uint8), grey, codes)
    points = np.array([k.pt for k in found], np.float32)
    return Keypoints(points, np.asarray(descriptors, np.uint8), grey, codes)


def query(img: Image.Image, keypoints: int = QUERY, codes: bytes = b"") -> Keypoints:
    """A query's keypoints: borders trimmed, QUERY of them unless told."""
    return describe(img, keypoints, trim=True, codes=codes)


def packed(images: Sequence[Image.Image]) -> list[bytes]:
    """Indexed images' keypoints with their copy codes, packed (index_store/keypoints.py): the
    feature's vectors."""
    return [pack(describe(img, codes=copy_signature.describe(img))) for img in images]


def packed_query(img: Image.Image) -> OnDemand:
    """A query's keypoints and its mirror's (ORB is not mirror-invariant), packed, each with
    the query's copy codes (which cover the mirror already); the mirror's described only when
    a search asks for them. Borders are trimmed once: the mirror's are the trimmed query's,
    mirrored."""
    codes = b"".join(copy_signature.query_codes(img))
    trimmed = border_trim.trim_borders(img, border_trim.ADDED)
    return OnDemand(
        [partial(_packed_view, trimmed, codes), partial(_packed_view, trimmed, codes, True)]
    )


def _packed_view(trimmed: Image.Image, codes: bytes, mirrored: bool = False) -> bytes:
    view = ImageOps.mirror(trimmed) if mirrored else trimmed
    return pack(describe(view, QUERY, codes=codes), lossless=True)

"""Several pHashes per indexed image, so that crops and small rotations find their original.

Why: one global hash sees a copy that keeps the central 75 % of the picture as another
picture (everything is 1.33x bigger), and a 5-10 degree rotation moves the corners by 5-8 %
of the side; both land as far from their original as unrelated photos do. Storing more
hashes on the index side is cheap (72 bytes each, computed once per image), so each original
also gets the hashes of centred sub-windows (85 % and 75 % of each side; a copy cropped
around the middle has a window of about its framing), of the 75 % window moved 3 % along
each diagonal (crops are rarely exactly centred), and of the whole image turned 7 degrees
either way (black corners, as a rotated copy usually has). A query still computes one DCT:
its hash and its mirror's. Distance = the minimum Hamming distance over all (query hash,
indexed hash) pairs.

The price: 9 hashes stored and compared per image instead of 1 (x2 for an image with
borders, see border_trim.framings), and unrelated pictures come closer (a minimum over more
pairs), so a match threshold must be re-tuned. The windows and angles were chosen against the
ranges of bench/copy_small_set.py (crops keeping 70-80 % of each side within 3 % of the
centre, rotations of 5-10 degrees); its "outside the set's ranges" table shows where the help
stops (rotations past ~11 degrees, crops keeping 60 % or less, crops 5 % or more off centre).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from consumers.features import phash

VERSION = "multi-phash-w100-85-75-s3-r7-v1"
WINDOWS: tuple[float, ...] = (1.0, 0.85, 0.75)  # share of each side kept, centred
SHIFTED_KEEP = 0.75  # the window that is also stored off centre...
SHIFTS: tuple[tuple[float, float], ...] = (
    (-0.03, -0.03),
    (0.03, -0.03),
    (-0.03, 0.03),
    (0.03, 0.03),
)
ANGLES: tuple[float, ...] = (-7.0, 7.0)  # rotations of the whole image, degrees
HASHES = len(WINDOWS) + len(SHIFTS) + len(ANGLES)


def window(img: Image.Image, keep: float, dx: float = 0.0, dy: float = 0.0) -> Image.Image:
    """The crop keeping `keep` of each side, centred, then moved by (dx, dy) of the side."""
    if keep >= 1.0:
        return img
    w, h = img.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left = int(np.clip(round((w - cw) / 2 + dx * w), 0, w - cw))
    top = int(np.clip(round((h - ch) / 2 + dy * h), 0, h - ch))
    return img.crop((left, top, left + cw, top + ch))


def rotated(img: Image.Image, angle: float) -> Image.Image:
    """`img` turned `angle` degrees counter-clockwise, same size, black corners."""
    black: int | tuple[int, int, int] = 0 if img.mode == "L" else (0, 0, 0)
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=black)


def index_hashes(img: Image.Image) -> list[bytes]:
    """The HASHES hashes stored for an indexed image (the first is `phash.phash(img)`)."""
    views = [window(img, keep) for keep in WINDOWS]
    views += [window(img, SHIFTED_KEEP, dx, dy) for dx, dy in SHIFTS]
    views += [rotated(img, angle) for angle in ANGLES]
    return [phash.phash(view) for view in views]


def query_hashes(img: Image.Image) -> list[bytes]:
    """The hashes a query is compared with: its own and its mirror's (one DCT)."""
    return list(phash.phash_with_mirror(img))


def distance(query: Sequence[bytes], indexed: Sequence[bytes]) -> int:
    """Minimum Hamming distance over all (query hash, indexed hash) pairs."""
    return min(phash.hamming(q, g) for q in query for g in indexed)


def _bits(hashes: Sequence[bytes]) -> NDArray[np.float32]:
    packed = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(packed, axis=1).astype(np.float32)


def _starts(groups: Sequence[Sequence[bytes]]) -> NDArray[np.intp]:
    sizes = [len(g) for g in groups]
    if min(sizes) == 0:
        raise ValueError("every image needs at least one hash")
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)


def distance_matrix(
    queries: Sequence[Sequence[bytes]], indexed: Sequence[Sequence[bytes]]
) -> NDArray[np.int32]:
    """`distance` for every (query, indexed image) pair at once: (len(queries), len(indexed)).

    Each entry is one image's hashes (any number, at least one). Hamming distances of all
    hash pairs come from one matrix product on the unpacked bits (|a xor b| = |a| + |b| -
    2 a.b), then the minimum over each image pair's block.
    """
    if not queries or not indexed:
        return np.zeros((len(queries), len(indexed)), dtype=np.int32)
    qb = _bits([h for hs in queries for h in hs])
    gb = _bits([h for hs in indexed for h in hs])
    pairs = qb.sum(1)[:, None] + gb.sum(1)[None, :] - 2.0 * (qb @ gb.T)
    per_query = np.minimum.reduceat(pairs, _starts(queries), axis=0)
    out: NDArray[np.int32] = np.rint(
        np.minimum.reduceat(per_query, _starts(indexed), axis=1)
    ).astype(np.int32)
    return out

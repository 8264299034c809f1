"""Copy detection: several pHashes per image (multi_hash) of each framing (border_trim).

An indexed image is described by 2 framings (as uploaded; borders trimmed, or the same
again when it has none) x 9 hashes (whole, centred 85 % and 75 % windows, the 75 % window
shifted along each diagonal, turned +-7 degrees): 18 codes of 576 bits, one fixed-size vector.
A query is hashed (and mirrored) in each of its framings; the distance is the smallest
Hamming distance over all pairs. Work is done on a <= 256 px copy: the hashes look at 96 px,
and the full-size windows and turns cost 6x more for the same codes. bench/copy_detection.py
measures what this buys over the plain `phash` feature (crops, padding, turns).
"""

from __future__ import annotations

from PIL import Image

from consumers.features import border_trim, multi_hash, phash

NAME = "copy"
FRAMINGS = 2
CODES = FRAMINGS * multi_hash.HASHES
SIDE = 256
VERSION = f"copy-{multi_hash.VERSION}-trim{FRAMINGS}-{SIDE}px-v1"


def _small(img: Image.Image) -> Image.Image:
    if max(img.size) <= SIDE:
        return img
    small = img.copy()
    small.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
    return small


def describe(img: Image.Image) -> bytes:
    frames = border_trim.framings(_small(img))
    frames = (frames + frames)[:FRAMINGS]  # no border: the second framing repeats the first
    return b"".join(h for frame in frames for h in multi_hash.index_hashes(frame))


def query_codes(img: Image.Image) -> list[bytes]:
    """The image's and its mirror's hash, in each of its framings."""
    return [
        h for frame in border_trim.framings(_small(img)) for h in multi_hash.query_hashes(frame)
    ]


CODE_BITS = phash.BITS

"""Copy detection: several pHashes per image (multi_hash) of each framing (border_trim).

An indexed image is described by 2 framings (as uploaded; borders trimmed, or the same
again when it has none) x 9 hashes (whole, centred 85 % and 75 % windows, the 75 % window
shifted along each diagonal, turned +-7 degrees): 18 codes of 576 bits, one fixed-size vector.
A query is hashed (and mirrored) in each of its framings; the distance is the smallest
Hamming distance over all pairs. Work is done on a <= 256 px copy: the hashes look at 96 px,
and the full-size windows and turns cost 6x more for the same codes. bench/copy_small_set.py
measures what this buys over the plain `phash` feature (crops, padding, turns).
"""

from __future__ import annotations

from PIL import Image

from consumers.features import border_trim, multi_hash, phash

NAME = "copy"
FRAMINGS = 2
CODES = FRAMINGS * multi_hash.HASHES
SIDE = 256
VERSION = f"copy-{multi_hash.VERSION}-trim{FRAMINGS}-{SIDE}px-grey-v1"


def _small(img: Image.Image) -> Image.Image:
    if max(img.size) <= SIDE:
        return img
    small = img.copy()
    small.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
    return small


def describe(img: Image.Image) -> bytes:
    # Borders are found in colour; the windows and turns are cut from grey (pHash's input),
    # a third of the pixels to move.
    frames = [f.convert("L") for f in border_trim.framings(_small(img))]
    codes = [b"".join(multi_hash.index_hashes(frame)) for frame in frames]
    return b"".join((codes + codes)[:FRAMINGS])  # no border: the 2nd framing repeats the 1st


def query_codes(img: Image.Image) -> list[bytes]:
    """The image's and its mirror's hash, in each of its framings."""
    return [
        h for frame in border_trim.framings(_small(img)) for h in multi_hash.query_hashes(frame)
    ]


CODE_BITS = phash.BITS

"""The `copy` feature: several codes per image find cropped, padded and turned copies that
one global pHash misses."""

from __future__ import annotations

from PIL import Image, ImageOps

from consumers.features import copy_signature, phash
from index_store.engines.hamming import HammingEngine
from lookalike.samples import photo

NAMES = ("astronaut", "coffee", "rocket", "chelsea", "camera", "moon", "brick", "clock")


def indexed() -> HammingEngine:
    index = HammingEngine(phash.BITS // 8, codes_per_item=copy_signature.CODES)
    for name in NAMES:
        index.upsert(name, copy_signature.describe(photo(name)))
    return index


def centre_crop(img: Image.Image, keep: float) -> Image.Image:
    w, h = img.size
    cw, ch = int(w * keep), int(h * keep)
    return img.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))


def test_vector_is_eighteen_576_bit_codes() -> None:
    assert len(copy_signature.describe(photo("coffee"))) == copy_signature.CODES * 72 == 1296


def test_cropped_padded_and_turned_copies_find_their_original() -> None:
    index = indexed()
    for name in ("coffee", "rocket", "astronaut"):
        img = photo(name)
        copies = {
            "cropped": centre_crop(img, 0.75),
            "padded": ImageOps.expand(img, border=img.width // 8, fill="white"),
            "turned": img.rotate(7, fillcolor=(0, 0, 0)),
            "mirrored": ImageOps.mirror(img),
        }
        for how, copy in copies.items():
            best = index.search(copy_signature.query_codes(copy), 1)
            assert best[0][0] == name, (name, how, best)


def test_plain_phash_misses_the_crop_that_copy_finds() -> None:
    img = photo("coffee")
    crop = centre_crop(img, 0.75)
    assert phash.hamming(phash.phash(img), phash.phash(crop)) > 150
    index = indexed()
    assert index.search(copy_signature.query_codes(crop), 1)[0][1] < 80


def test_query_by_stored_vector_matches_itself_exactly() -> None:
    index = indexed()
    stored = index.vector_of("moon")
    assert stored is not None and index.search([stored], 1) == [("moon", 0.0)]

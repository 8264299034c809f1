"""The perceptual hash: stable under resize and re-encoding, far apart for different photos."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

from consumers.features import phash
from consumers.features.decode import decode_image
from lookalike.samples import jpeg, photo


def reencoded(img: Image.Image, quality: int) -> Image.Image:
    return decode_image(jpeg(img, quality))


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut")


def test_hash_is_576_bits(astronaut: Image.Image) -> None:
    assert len(phash.phash(astronaut)) * 8 == phash.BITS == 576


def test_hash_is_deterministic(astronaut: Image.Image) -> None:
    assert phash.phash(astronaut) == phash.phash(astronaut.copy())


@pytest.mark.parametrize("size", [(128, 128), (256, 200), (1024, 1024)])
def test_hash_is_stable_under_resize(astronaut: Image.Image, size: tuple[int, int]) -> None:
    assert phash.hamming(phash.phash(astronaut), phash.phash(astronaut.resize(size))) <= 40


@pytest.mark.parametrize("quality", [95, 50, 20])
def test_hash_is_stable_under_jpeg_recompression(astronaut: Image.Image, quality: int) -> None:
    assert phash.hamming(phash.phash(astronaut), phash.phash(reencoded(astronaut, quality))) <= 30


@pytest.mark.parametrize("other", ["coffee", "chelsea", "rocket", "camera", "moon"])
def test_different_photos_are_far_apart(astronaut: Image.Image, other: str) -> None:
    assert phash.hamming(phash.phash(astronaut), phash.phash(photo(other))) >= 200


def test_mirrored_hash_equals_hash_of_mirrored_image(astronaut: Image.Image) -> None:
    straight, mirrored = phash.phash_with_mirror(astronaut)
    assert straight == phash.phash(astronaut)
    assert mirrored == phash.phash(ImageOps.mirror(astronaut))
    assert phash.hamming(straight, mirrored) > 100  # a mirror is not a near-copy by itself


def test_png_and_jpeg_of_one_photo_match(astronaut: Image.Image) -> None:
    buf = io.BytesIO()
    astronaut.save(buf, "PNG")
    from_png = phash.phash(decode_image(buf.getvalue()))
    assert phash.hamming(from_png, phash.phash(reencoded(astronaut, 90))) <= 20

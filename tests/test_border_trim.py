"""Border trimming: added pads come off, pictures without borders are left alone."""

from __future__ import annotations

import pytest
from PIL import Image, ImageOps

from consumers.features import phash
from consumers.features.border_trim import border_box, framings, trim_borders
from consumers.features.decode import decode_image
from lookalike.samples import jpeg, photo


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut").resize((400, 300))


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (30, 120, 200)])
def test_a_uniform_pad_comes_off(astronaut: Image.Image, colour: tuple[int, int, int]) -> None:
    padded = ImageOps.expand(astronaut, border=(60, 20, 40, 45), fill=colour)
    left, top, right, bottom = border_box(decode_image(jpeg(padded), draft=None))
    assert abs(left - 60) <= 4 and abs(top - 20) <= 4
    assert abs(right - 460) <= 4 and abs(bottom - 320) <= 4


def test_trimmed_copy_hashes_like_the_original(astronaut: Image.Image) -> None:
    padded = decode_image(jpeg(ImageOps.expand(astronaut, border=50, fill="white")))
    assert phash.hamming(phash.phash(padded), phash.phash(astronaut)) > 150
    assert phash.hamming(phash.phash(trim_borders(padded)), phash.phash(astronaut)) < 60


def test_a_pad_around_a_frame_comes_off_in_two_passes(astronaut: Image.Image) -> None:
    framed = ImageOps.expand(ImageOps.expand(astronaut, border=15, fill="black"), 40, "white")
    left, top, right, bottom = border_box(framed)
    assert (left, top) >= (53, 53) and (right, bottom) <= (455, 355)


def test_a_picture_without_borders_is_returned_as_is(astronaut: Image.Image) -> None:
    assert trim_borders(astronaut) is astronaut
    assert framings(astronaut) == [astronaut]


def test_a_flat_area_deeper_than_the_limit_is_picture(astronaut: Image.Image) -> None:
    # Half the image is one colour: a flat part of the picture, not a border.
    half = Image.new("RGB", (800, 300), (255, 255, 255))
    half.paste(astronaut, (400, 0))
    assert trim_borders(half) is half


def test_a_uniform_image_is_left_alone() -> None:
    flat = Image.new("RGB", (200, 100), (128, 128, 128))
    assert trim_borders(flat) is flat


def test_framings_keep_the_untrimmed_image_first(astronaut: Image.Image) -> None:
    padded = ImageOps.expand(astronaut, border=30, fill="black")
    whole, trimmed = framings(padded)
    assert whole is padded
    # The last border line at thumbnail scale goes too (it mixes border and picture).
    assert astronaut.width - 4 <= trimmed.width <= astronaut.width
    assert astronaut.height - 4 <= trimmed.height <= astronaut.height

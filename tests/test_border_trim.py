"""Border trimming: added pads come off, pictures without borders are left alone."""

from __future__ import annotations

import pytest
from PIL import Image, ImageOps

from consumers.features import copy_keypoints, phash
from consumers.features.border_trim import ADDED, FLAT, border_box, framings, trim_borders
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


def test_the_added_rule_leaves_a_smooth_picture_whole() -> None:
    # A blurred clock on a plain wall: the wall is within the flat rule's tolerance of one
    # line for much of the picture, pass after pass; it is no border anyone added.
    clock = decode_image(jpeg(photo("clock").crop((50, 20, 350, 250)), quality=60), draft=None)
    left, top, right, bottom = border_box(clock, FLAT)
    assert (right - left) * (bottom - top) < 0.8 * clock.width * clock.height
    assert border_box(clock, ADDED) == (0, 0, clock.width, clock.height)


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (30, 120, 200)])
def test_the_added_rule_takes_a_pad_off_a_rough_jpeg(
    astronaut: Image.Image, colour: tuple[int, int, int]
) -> None:
    # Quality 40 spreads a coloured pad's chroma; its grey stays flat.
    padded = ImageOps.expand(astronaut, border=(60, 20, 40, 45), fill=colour)
    left, top, right, bottom = border_box(decode_image(jpeg(padded, quality=40), draft=None), ADDED)
    assert abs(left - 60) <= 4 and abs(top - 20) <= 4
    assert abs(right - 460) <= 4 and abs(bottom - 320) <= 4


def test_the_added_rule_takes_a_pad_around_a_frame_off(astronaut: Image.Image) -> None:
    framed = ImageOps.expand(ImageOps.expand(astronaut, border=15, fill="black"), 40, "white")
    left, top, right, bottom = border_box(framed, ADDED)
    assert (left, top) >= (53, 53) and (right, bottom) <= (455, 355)


def test_a_padded_keypoint_query_keeps_all_of_a_smooth_picture() -> None:
    # What a padded copy of the clock shows is the whole clock: its query's frame has the
    # original's shape, not a part of it that other crops of the wall also contain.
    clock = photo("clock").crop((50, 20, 350, 250)).resize((480, 368))
    padded = decode_image(jpeg(ImageOps.expand(clock, border=30, fill="black"), quality=60))
    h, w = copy_keypoints.query(padded).shape
    assert abs(w / h - 480 / 368) < 0.03

"""Colour histogram: a normalised 8x8x8 distribution that separates recoloured copies."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

from consumers.features import colour_histogram as ch
from consumers.features.decode import decode_image
from lookalike.samples import jpeg, photo


def test_histogram_has_512_bins_summing_to_one() -> None:
    hist = ch.histogram(photo("coffee"))
    assert hist.shape == (512,) and hist.dtype == np.float32
    assert abs(float(hist.sum()) - 1.0) < 1e-5


def test_histogram_is_deterministic() -> None:
    assert ch.describe(photo("coffee")) == ch.describe(photo("coffee").copy())


def test_recoloured_copy_is_farther_than_untouched_copy() -> None:
    original = photo("coffee")
    untouched = decode_image(jpeg(original.resize((300, 200)), quality=60))
    r, g, b = original.split()
    recoloured = Image.merge("RGB", (b, g, r))  # channels swapped: same shapes, new colours
    base = ch.describe(original)
    assert ch.l1(base, ch.describe(untouched)) < 0.3
    assert ch.l1(base, ch.describe(recoloured)) > 2 * ch.l1(base, ch.describe(untouched))


def test_mirror_does_not_change_the_colour_distribution() -> None:
    img = photo("astronaut")
    assert ch.l1(ch.describe(img), ch.describe(ImageOps.mirror(img))) < 0.02

"""A picture with too few keypoints for a transform (a soft, flat picture; a logo's keypoints
over it) is aligned from its frame instead; such an alignment ranks a candidate but never makes
it a copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from consumers.features import copy_keypoints
from index_store.alignment import Aligned, framed, prepare
from index_store.copy_scorer import EVIDENCE, CopyScorer
from index_store.keypoints import Keypoints, pack, unpack
from lookalike.samples import photo


def soft(name: str) -> Image.Image:
    """A sample photograph blurred until little is left for keypoints."""
    return photo(name).filter(ImageFilter.GaussianBlur(6))


def stored(img: Image.Image) -> Keypoints:
    return unpack(pack(copy_keypoints.describe(img)))


def asked(img: Image.Image) -> Keypoints:
    return unpack(pack(copy_keypoints.query(img), lossless=True))


def with_logo(img: Image.Image) -> Image.Image:
    out = img.copy()
    w, h = out.size
    ImageDraw.Draw(out).ellipse((w // 2, h // 3, w // 2 + w // 6, h // 3 + h // 6), (200, 30, 40))
    return out


def centred(img: Image.Image, keep: float) -> Image.Image:
    w, h = img.size
    cw, ch = round(w * keep), round(h * keep)
    return img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def test_a_soft_picture_with_a_logo_is_aligned_from_its_whole_frame() -> None:
    original = soft("coffee")
    found = framed(prepare(asked(with_logo(original))), stored(original))
    assert found.framed and found.inliers == 0
    assert found.cover > 0.99 and found.whole > 0.9 and found.block_median > 0.9


def test_a_centred_crop_is_aligned_from_a_window_and_lies_inside_its_original() -> None:
    original = soft("coffee")
    found = framed(prepare(asked(centred(original, 0.85))), stored(original))
    assert found.framed and found.cover > 0.99 and found.whole > 0.9
    assert found.margin > 0


def test_another_picture_aligned_from_its_frame_does_not_look_alike() -> None:
    found = framed(prepare(asked(soft("coffee"))), stored(soft("astronaut")))
    assert found.whole < 0.5


def test_a_frame_alignment_ranks_but_is_never_a_copy(tmp_path: Path) -> None:
    weights = np.zeros(len(EVIDENCE))
    weights[0] = 20.0  # the bias alone: every candidate a copy beyond doubt
    scorer = CopyScorer(weights, threshold=3.0)
    perfect = Aligned(0, cover=1.0, whole=1.0, block_median=1.0, content=1.0)
    assert scorer.distance_of(perfect, 0.0) < scorer.max_distance  # keypoint-aligned
    framed_perfect = Aligned(0, cover=1.0, whole=1.0, block_median=1.0, content=1.0, framed=True)
    # Without weights of its own a frame alignment counts as no alignment at all:
    assert scorer.distance_of(framed_perfect, 30.0) == scorer.distance_of(Aligned(0), 30.0)
    near = np.zeros(len(EVIDENCE))
    near[0], near[EVIDENCE.index("whole")] = -5.0, 10.0
    with_framed = CopyScorer(weights, 3.0, framed_weights=near, framed_fitted_on="a test")
    nearest = with_framed.distance_of(framed_perfect, 0.0)
    assert nearest > with_framed.max_distance  # never a copy...
    half = Aligned(0, cover=1.0, whole=0.5, framed=True)
    assert with_framed.distance_of(half, 0.0) > nearest  # ...but ranked by its own weights
    with_framed.save(tmp_path / "scorer.json")
    back = CopyScorer.load(tmp_path / "scorer.json")
    assert back.framed_weights is not None and back.framed_fitted_on == "a test"
    np.testing.assert_array_equal(back.framed_weights, near)

"""Before pixels are compared, a transform found from keypoint pairs is refined on the pixels:
a degree or a few pixels off spoils the comparison; a refinement never wanders off."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from consumers.features import copy_keypoints
from index_store import alignment
from index_store.alignment import REFINE_REACH, Matrix, compared, prepare, refined
from index_store.keypoints import Keypoints, pack, unpack
from lookalike.samples import photo


def grey_of(img: Image.Image, query: bool = False) -> Keypoints:
    described = copy_keypoints.describe(img, trim=query)
    return unpack(pack(described, lossless=query))


def crop_and_truth(box: tuple[int, int, int, int]) -> tuple[Keypoints, Keypoints, Matrix]:
    """A crop of `coffee` (described as a query), its original, and the true transform from
    the crop's grey copy to the original's."""
    original = photo("coffee")
    crop = original.crop(box)
    query, candidate = grey_of(crop, query=True), grey_of(original)
    scale_q = query.grey.shape[1] / crop.width  # grey copy px per crop px
    scale_c = candidate.grey.shape[1] / original.width
    s = scale_c / scale_q
    truth = np.array([[s, 0.0, box[0] * scale_c], [0.0, s, box[1] * scale_c]])
    return query, candidate, truth


def turned(matrix: Matrix, degrees: float, shift: tuple[float, float]) -> Matrix:
    """`matrix` turned about the origin by `degrees` and shifted."""
    a = np.radians(degrees)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = matrix.copy()
    out[:, :2] = rotation @ matrix[:, :2]
    out[:, 2] += shift
    return out


def corner_error(a: Matrix, b: Matrix, shape: tuple[int, int]) -> float:
    h, w = shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], np.float64)
    return float(np.linalg.norm(corners @ (a - b).T, axis=1).max())


def test_a_transform_degrees_and_pixels_off_is_brought_back_to_the_pixels() -> None:
    query, candidate, truth = crop_and_truth((60, 40, 540, 360))
    off = turned(truth, 1.5, (2.5, 2.0))
    assert corner_error(off, truth, query.grey.shape) > 4
    back = refined(prepare(query), candidate.grey, off)
    assert corner_error(back, truth, query.grey.shape) < 1.0
    before = compared(prepare(query), candidate.grey, off, inliers=50)
    after = compared(prepare(query), candidate.grey, back, inliers=50)
    assert after.block_median > before.block_median + 0.1
    assert after.block_median > 0.9


def test_a_refinement_that_would_move_far_keeps_the_transform_it_was_given() -> None:
    query, _, truth = crop_and_truth((60, 40, 540, 360))
    flat = np.full((214, 320), 128, np.uint8)  # nothing to climb: ECC fails
    assert np.array_equal(refined(prepare(query), flat, truth), truth)
    other = grey_of(photo("astronaut"))  # another picture: wherever ECC goes, not this far
    result = refined(prepare(query), other.grey, truth)
    assert corner_error(result, truth, query.grey.shape) <= REFINE_REACH


def test_a_transform_as_many_pairs_agree_on_as_the_limit_is_not_refined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query, candidate, _ = crop_and_truth((60, 40, 540, 360))
    refinements: list[Matrix] = []

    def counted(q: alignment.Query, grey: np.ndarray, matrix: Matrix) -> Matrix:
        refinements.append(matrix)
        return refined(q, grey, matrix)

    monkeypatch.setattr(alignment, "refined", counted)
    many = alignment.align(prepare(query), candidate).inliers
    assert many >= 50
    refinements.clear()
    monkeypatch.setattr(alignment, "REFINE_BELOW", many)
    assert alignment.align(prepare(query), candidate).inliers == many
    assert refinements == []  # as many pairs as REFINE_BELOW: compared as RANSAC found it
    monkeypatch.setattr(alignment, "REFINE_BELOW", many + 1)
    assert alignment.align(prepare(query), candidate).block_median > 0.9
    assert len(refinements) == 1

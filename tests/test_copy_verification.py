"""Copy verification's parts: keypoints kept in one byte layout, votes that find the picture a
crop was cut from, and an alignment that tells a copy from a picture of the same kind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageOps

from consumers.features import copy_keypoints, copy_signature
from consumers.indexer.copy_verification import codes_of, hash_distances
from index_store.alignment import (
    MARGIN_LIMIT,
    MIN_INLIERS,
    align,
    align_all,
    frame_cover,
    frame_margin,
    prepare,
)
from index_store.copy_scorer import EVIDENCE, CopyScorer, evidence
from index_store.keypoint_votes import KeypointVotes
from index_store.keypoints import HEADER, MAGIC, BadKeypoints, Keypoints, check, pack, split, unpack
from lookalike.samples import photo

NAMES = ("astronaut", "coffee", "rocket", "chelsea", "camera", "brick", "clock", "coins")


def cropped(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """The part of `img` in `box` (shares of its width and height)."""
    w, h = img.size
    return img.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))


def stored(img: Image.Image) -> Keypoints:
    """An indexed image's keypoints as the store gives them back."""
    return unpack(pack(copy_keypoints.describe(img)))


def test_packed_keypoints_come_back_as_they_were() -> None:
    described = copy_keypoints.describe(photo("coffee"))
    back = unpack(pack(described))
    assert 100 <= len(back) <= copy_keypoints.INDEXED
    np.testing.assert_array_equal(back.descriptors, described.descriptors)
    np.testing.assert_allclose(back.points, described.points, atol=0.25)  # float16 on 320 px
    assert back.grey.shape == described.grey.shape
    assert max(back.grey.shape) == copy_keypoints.SIDE
    grey_error = np.abs(back.grey.astype(int) - described.grey.astype(int)).mean()
    assert grey_error < 3  # a JPEG at quality 90


def test_bytes_that_are_not_keypoints_say_why() -> None:
    packed = pack(copy_keypoints.describe(photo("rocket")))
    with pytest.raises(BadKeypoints, match="magic"):
        unpack(b"XXXX" + packed[4:])
    with pytest.raises(BadKeypoints, match="cannot hold"):
        unpack(packed[:200])
    with pytest.raises(BadKeypoints, match="shorter than the header"):
        unpack(b"LK")


def test_what_an_indexer_accepts_is_checked_to_the_last_pixel() -> None:
    described = copy_keypoints.describe(photo("rocket"), codes=bytes(range(72)))
    packed = pack(described)
    assert check(packed) is None
    assert unpack(packed).codes == bytes(range(72))
    jpeg_at = len(packed) - HEADER.unpack_from(packed)[-1]  # the grey copy's JPEG
    scrambled = packed[: jpeg_at + 600] + bytes(len(packed) - jpeg_at - 600)
    assert "does not decode" in (check(scrambled) or "")
    assert "follow the keypoints" in (check(packed + b"x") or "")
    assert len(split(packed + packed)) == 2
    _, h, w, codes, grey = HEADER.unpack_from(packed)[1:]
    too_many = HEADER.pack(MAGIC, 2000, h, w, codes, grey) + packed[HEADER.size :]
    assert "more than" in (check(too_many) or "")
    bomb = io.BytesIO()
    Image.new("L", (4000, 4000)).save(bomb, "PNG")
    header = HEADER.pack(MAGIC, 0, 4000, 4000, 0, len(bomb.getvalue()))
    assert "sides must be" in (check(header + bomb.getvalue()) or "")
    lying = HEADER.pack(MAGIC, 0, 100, 100, 0, len(bomb.getvalue()))
    assert "header says" in (check(lying + bomb.getvalue()) or "")


def test_a_flat_picture_has_no_keypoints_and_still_packs() -> None:
    flat = copy_keypoints.describe(Image.new("RGB", (200, 100), (90, 90, 90)))
    assert len(flat) == 0
    assert len(unpack(pack(flat))) == 0


def test_an_off_centre_crop_aligns_with_its_original_and_covers_its_content() -> None:
    original = photo("astronaut")
    query = copy_keypoints.query(cropped(original, (0.35, 0.05, 0.95, 0.6)))
    found = align(prepare(query), stored(original))
    assert found.aligned and found.inliers >= 3 * MIN_INLIERS
    assert found.cover > 0.97 and found.content > 0.97
    assert found.block_median > 0.9 and found.whole > 0.9


def test_a_turned_padded_and_captioned_copy_still_aligns() -> None:
    original = photo("coffee")
    copy = ImageOps.expand(original.rotate(9, fillcolor=(0, 0, 0)), border=40, fill="white")
    ImageDraw.Draw(copy).rectangle((0, copy.height - 50, copy.width, copy.height), fill="red")
    found = align(prepare(copy_keypoints.query(copy)), stored(original))
    assert found.aligned
    assert found.block_median > 0.8


def test_another_photograph_does_not_align() -> None:
    query = copy_keypoints.query(cropped(photo("chelsea"), (0.1, 0.1, 0.8, 0.8)))
    for other in ("coffee", "brick", "camera"):
        found = align(prepare(query), stored(photo(other)))
        assert not found.aligned or found.block_median < 0.5, other


def test_a_crop_of_a_neighbouring_window_is_not_covered_by_it() -> None:
    """Two windows of one photograph share pixels; a crop reaching outside one of them is
    covered only in part by it, and whole by the window it was cut from."""
    scene = photo("astronaut")
    left, right = cropped(scene, (0.0, 0.0, 0.6, 1.0)), cropped(scene, (0.4, 0.0, 1.0, 1.0))
    query = copy_keypoints.query(cropped(right, (0.0, 0.2, 0.7, 0.8)))
    own, neighbour = align(prepare(query), stored(right)), align(prepare(query), stored(left))
    assert own.aligned and own.content > 0.97
    assert neighbour.content < 0.8


def test_how_much_of_a_query_an_aligned_frame_covers_follows_from_the_transform() -> None:
    same = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert frame_cover((100, 200), (100, 200), same) == pytest.approx(1.0)
    assert frame_cover((100, 200), (100, 100), same) == pytest.approx(0.5)  # half its width
    shifted = np.array([[1.0, 0.0, 150.0], [0.0, 1.0, 0.0]])  # query x -> candidate x + 150
    assert frame_cover((100, 200), (100, 200), shifted) == pytest.approx(0.25)
    halved = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])  # the candidate at half the scale
    assert frame_cover((100, 200), (50, 100), halved) == pytest.approx(1.0)


def test_a_frame_containing_the_query_has_a_margin_and_one_cutting_through_it_has_none() -> None:
    inside = np.array([[1.0, 0.0, 20.0], [0.0, 1.0, 10.0]])  # the query 20 px in, 10 px down
    assert frame_margin((100, 200), (130, 260), inside) == pytest.approx(10.0)
    cut = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert frame_margin((100, 200), (100, 196), cut) == pytest.approx(-4.0)  # 4 px short
    far = np.array([[1.0, 0.0, 150.0], [0.0, 1.0, 0.0]])
    assert frame_margin((100, 200), (100, 200), far) == -MARGIN_LIMIT


def test_a_crop_lies_inside_its_own_window_and_pokes_out_of_its_neighbour() -> None:
    scene = photo("astronaut")
    left, right = cropped(scene, (0.0, 0.0, 0.6, 1.0)), cropped(scene, (0.4, 0.0, 1.0, 1.0))
    query = prepare(copy_keypoints.query(cropped(right, (0.1, 0.2, 0.7, 0.8))))
    assert align(query, stored(right)).margin > 0
    assert align(query, stored(left)).margin < 0


def test_pixels_are_compared_only_for_candidates_that_cover_the_query_as_far_as_the_best() -> None:
    """A neighbouring window shares keypoints with a crop but covers only part of it: no
    comparison is spent on it while the crop's own window covers it all."""
    scene = photo("astronaut")
    left, right = cropped(scene, (0.0, 0.0, 0.6, 1.0)), cropped(scene, (0.4, 0.0, 1.0, 1.0))
    query = prepare(copy_keypoints.query(cropped(right, (0.0, 0.2, 0.7, 0.8))))
    own, neighbour = align_all(query, [(stored(right), None), (stored(left), None)], compare=2)
    assert own.aligned and own.cover > 0.97 and own.whole > 0.9
    assert neighbour.aligned and neighbour.cover == 0.0  # aligned, never compared
    alone = align_all(query, [(stored(left), None)], compare=2)[0]
    assert alone.cover > 0.0  # compared when nothing covers more


def test_votes_put_the_original_of_a_crop_first() -> None:
    gallery = [stored(photo(name)).descriptors for name in NAMES]
    votes = KeypointVotes(gallery, lists=16)
    for number, name in enumerate(NAMES[:4]):
        query = copy_keypoints.query(cropped(photo(name), (0.2, 0.25, 0.85, 0.9)))
        found = votes.vote(query.descriptors)
        assert found.most(1) == [number], name
        assert len(found.pairs(number)) >= 20  # pairs for alignment to start from


def test_votes_over_an_empty_gallery_are_empty() -> None:
    found = KeypointVotes([]).vote(copy_keypoints.query(photo("coffee")).descriptors)
    assert found.most(3) == [] and found.pairs(0) == [] and found.weight(0) == 0


def test_the_shipped_scorer_says_copy_for_a_crop_and_not_for_another_photograph() -> None:
    scorer = CopyScorer.load()
    crop = cropped(photo("coffee"), (0.15, 0.1, 0.95, 0.85))
    query = prepare(copy_keypoints.query(crop, codes=b"".join(copy_signature.query_codes(crop))))
    scores = []
    for name in ("coffee", "brick"):
        candidate = photo(name)
        indexed = unpack(
            pack(copy_keypoints.describe(candidate, codes=copy_signature.describe(candidate)))
        )
        found = align(query, indexed)
        codes_apart = hash_distances(codes_of(query.keypoints), [codes_of(indexed)])[0]
        scores.append(float(scorer.score(evidence(found, codes_apart)[None])[0]))
    copy_score, other_score = scores
    assert copy_score >= scorer.threshold > other_score


def test_a_scorer_round_trips_and_refuses_weights_for_other_evidence(tmp_path: Path) -> None:
    scorer = CopyScorer(np.linspace(-1, 1, len(EVIDENCE)), threshold=0.5, fitted_on="a test")
    scorer.save(tmp_path / "scorer.json")
    back = CopyScorer.load(tmp_path / "scorer.json")
    np.testing.assert_array_equal(back.weights, scorer.weights)
    assert (back.threshold, back.fitted_on) == (0.5, "a test")
    document = json.loads((tmp_path / "scorer.json").read_text())
    document["evidence"] = document["evidence"][:-1]
    (tmp_path / "old.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="weighs"):
        CopyScorer.load(tmp_path / "old.json")
    with pytest.raises(ValueError, match="weights for"):
        CopyScorer(np.ones(3), threshold=0.0)


def test_votes_follow_images_as_they_are_added_and_removed() -> None:
    votes = KeypointVotes()
    for number, name in enumerate(NAMES):
        votes.add(number, stored(photo(name)).descriptors)
    rocket = NAMES.index("rocket")
    query = copy_keypoints.query(cropped(photo("rocket"), (0.15, 0.2, 0.8, 0.85))).descriptors
    assert votes.vote(query).most(1) == [rocket]
    votes.remove(rocket)
    assert rocket not in votes.vote(query).most(len(NAMES))
    votes.add(rocket, stored(photo("rocket")).descriptors)
    votes.add(rocket, stored(photo("rocket")).descriptors)  # again: replaces, adds nothing
    assert votes.vote(query).most(1) == [rocket]
    assert len(votes) == sum(len(stored(photo(name))) for name in NAMES)


def test_an_exact_vote_index_asks_for_training_once_groups_would_pay() -> None:
    rng = np.random.default_rng(0)

    def random_image() -> NDArray[np.uint8]:
        return rng.integers(0, 256, (300, 32), dtype=np.uint8)

    votes = KeypointVotes()
    votes.add(0, random_image())
    assert not votes.needs_training
    for image in range(1, 120):
        votes.add(image, random_image())
    assert votes.needs_training
    trained = KeypointVotes([random_image() for _ in range(120)])
    assert trained.trained_for == len(trained) and not trained.needs_training

"""Several hashes per indexed image: crops and small rotations find their original."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageOps

from consumers.features import multi_hash, phash
from lookalike.samples import photo


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return photo("astronaut").resize((400, 300))


def test_index_hashes_start_with_the_plain_hash(astronaut: Image.Image) -> None:
    hashes = multi_hash.index_hashes(astronaut)
    assert len(hashes) == multi_hash.HASHES == 9
    assert hashes[0] == phash.phash(astronaut)
    assert len(set(hashes)) == len(hashes)


def test_query_hashes_are_the_image_and_its_mirror(astronaut: Image.Image) -> None:
    assert multi_hash.query_hashes(astronaut) == list(phash.phash_with_mirror(astronaut))


def test_window_keeps_the_requested_share(astronaut: Image.Image) -> None:
    assert multi_hash.window(astronaut, 1.0) is astronaut
    assert multi_hash.window(astronaut, 0.75).size == (300, 225)
    assert multi_hash.window(astronaut, 0.75, 0.5, 0.5).size == (300, 225)  # clipped inside


@pytest.mark.parametrize(
    "copy",
    [
        lambda img: img.crop((50, 38, 350, 263)),  # central 75 %
        lambda img: img.crop((60, 45, 360, 270)),  # 75 %, a little off centre
        lambda img: img.rotate(8, resample=Image.Resampling.BICUBIC),
        lambda img: ImageOps.mirror(img.rotate(-6, resample=Image.Resampling.BICUBIC)),
    ],
)
def test_crops_and_rotations_come_close(
    astronaut: Image.Image, copy: Callable[[Image.Image], Image.Image]
) -> None:
    query = multi_hash.query_hashes(copy(astronaut))
    plain = min(phash.hamming(q, phash.phash(astronaut)) for q in query)
    multi = multi_hash.distance(query, multi_hash.index_hashes(astronaut))
    assert multi < 100 < plain


def test_distance_matrix_matches_the_pairwise_minimum() -> None:
    rng = np.random.default_rng(0)

    def hashes(n: int) -> list[bytes]:
        return [rng.integers(0, 256, 72, dtype=np.uint8).tobytes() for _ in range(n)]

    queries = [hashes(n) for n in (1, 2, 4)]
    indexed = [hashes(n) for n in (3, 1, 9, 2)]
    got = multi_hash.distance_matrix(queries, indexed)
    want = [[multi_hash.distance(q, g) for g in indexed] for q in queries]
    assert got.tolist() == want


def test_distance_matrix_rejects_an_image_without_hashes() -> None:
    with pytest.raises(ValueError):
        multi_hash.distance_matrix([[bytes(72)]], [[]])

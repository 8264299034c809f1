"""A query's 16 px blocks correlated with an aligned candidate's, from each tile's sums: the
same numbers as correlating the blocks one by one."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from index_store.image_blocks import BLOCK, FLAT, Blocks


def one_by_one(
    query: NDArray[np.float32], warped: NDArray[np.float32], covered: NDArray[np.uint8]
) -> list[float]:
    """The definition: each whole tile covered >= 90 % where neither is flat, correlated."""
    out = []
    for r in range(query.shape[0] // BLOCK):
        for c in range(query.shape[1] // BLOCK):
            tile = np.s_[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK]
            q, w = query[tile].astype(np.float64), warped[tile].astype(np.float64)
            if (covered[tile] > 0).mean() < 0.9 or q.std() < FLAT or w.std() < FLAT:
                continue
            q0, w0 = q - q.mean(), w - w.mean()
            out.append(float((q0 * w0).sum() / np.sqrt((q0 * q0).sum() * (w0 * w0).sum())))
    return out


def test_block_correlations_are_the_blocks_correlated_one_by_one() -> None:
    rng = np.random.default_rng(3)
    query = (rng.random((100, 150)) * 255).astype(np.float32)
    query[:32, :48] = 128.0  # flat blocks: never compared
    warped = (0.7 * query + 0.3 * rng.random(query.shape) * 255).astype(np.float32)
    warped[60:, 100:] = 255 - warped[60:, 100:]  # blocks that anti-correlate
    covered = np.full(query.shape, 255, np.uint8)
    covered[:, :20] = 0  # the candidate does not cover the left edge

    found, agree = Blocks.of(query).correlations(warped, covered)

    expected = one_by_one(query, warped, covered)
    assert len(found) == len(expected) > 10
    np.testing.assert_allclose(found, expected, atol=1e-6)
    textured = len(one_by_one(query, query, np.full(query.shape, 255, np.uint8)))
    assert agree == sum(e >= 0.5 for e in expected) / textured
    assert min(found) < 0 < max(found)


def test_a_picture_narrower_than_a_block_has_no_blocks() -> None:
    thin = np.zeros((BLOCK - 1, 200), np.float32)
    found, agree = Blocks.of(thin).correlations(thin, np.full(thin.shape, 255, np.uint8))
    assert len(found) == 0 and agree == 0.0

"""A grey picture's 16 px blocks, correlated with another's aligned over it.

A caption bar or a logo spoils a few blocks of a copy, not the median of their correlations;
a sibling that only overlaps its query correlates in few. Alignment (index_store/alignment.py)
cuts the query into blocks once (`Blocks.of`) and correlates them with each candidate's."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

BLOCK = 16
FLAT = 5.0  # grey-level std under which a block is flat


@dataclass(frozen=True)
class Blocks:
    """A query's BLOCK x BLOCK tiles (the ragged edge dropped), each's mean and the norm of its
    pixels less that mean, row by row: what correlating them with a candidate's needs."""

    pixels: NDArray[np.float64]  # the tiled part of the grey copy
    means: NDArray[np.float64]  # one per tile, row-major
    norms: NDArray[np.float64]
    textured: NDArray[np.bool_]  # not flat

    @classmethod
    def of(cls, grey: NDArray[np.float32]) -> Blocks:
        rows, cols = grey.shape[0] // BLOCK, grey.shape[1] // BLOCK
        pixels = grey[: rows * BLOCK, : cols * BLOCK].astype(np.float64)
        means, squares = block_means(pixels), block_means(pixels * pixels)
        norms = np.sqrt(np.maximum(squares - means * means, 0.0) * BLOCK * BLOCK)
        return cls(pixels, means, norms, norms >= FLAT * BLOCK)  # std >= FLAT

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        return self.pixels.shape[0] // BLOCK, self.pixels.shape[1] // BLOCK

    def correlations(
        self, warped: NDArray[np.float32], covered: NDArray[np.uint8]
    ) -> tuple[NDArray[np.float64], float]:
        """The correlations of these blocks with an aligned candidate's (`warped`: in this
        picture's frame) where the candidate covers them (`covered`: its warped frame, 0
        outside; >= 90 % of a block) and neither is flat; and the share of the textured
        blocks that correlate >= 0.5. From each tile's sums (mean of products less product of
        means, over the norms), not tile by tile."""
        rows, cols = self.shape
        if not rows or not cols:  # narrower than a block: no blocks to compare
            return np.zeros(0, np.float64), 0.0
        w = warped[: rows * BLOCK, : cols * BLOCK].astype(np.float64)
        shares = block_means((covered[: rows * BLOCK, : cols * BLOCK] > 0).astype(np.float64))
        means, squares = block_means(w), block_means(w * w)
        norms = np.sqrt(np.maximum(squares - means * means, 0.0) * BLOCK * BLOCK)
        keep = (shares >= 0.9) & self.textured & (norms >= FLAT * BLOCK)  # neither flat
        products = block_means(self.pixels * w)[keep]
        covariance = (products - self.means[keep] * means[keep]) * BLOCK * BLOCK
        out: NDArray[np.float64] = covariance / (self.norms[keep] * norms[keep] + 1e-6)
        return out, float((out >= 0.5).sum() / max(int(self.textured.sum()), 1))


def block_means(a: NDArray[np.float64]) -> NDArray[np.float64]:
    """The mean of each BLOCK x BLOCK tile of `a` (whole tiles only), row-major: INTER_AREA
    at a whole factor averages each tile."""
    rows, cols = a.shape[0] // BLOCK, a.shape[1] // BLOCK
    if not rows or not cols:  # narrower than a block
        return np.zeros(0, np.float64)
    cut = np.ascontiguousarray(a[: rows * BLOCK, : cols * BLOCK])
    means = cv2.resize(cut, (cols, rows), interpolation=cv2.INTER_AREA)
    return np.asarray(means, np.float64).reshape(-1)

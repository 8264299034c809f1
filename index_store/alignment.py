"""Is this candidate the picture the query copies? Align it, then compare the aligned pixels.

1. Keypoint pairs (query keypoint, candidate keypoint): those a descriptor index returned, or,
   when it gave too few, the query's descriptors matched to the candidate's here (nearest
   by Hamming distance, kept when clearly nearer than the second nearest).
2. A similarity transform (turn, scale, shift) the pairs agree on, by RANSAC: the inliers
   count how many agree. A copy is its original cropped, turned, scaled, padded, recoloured or
   partly covered: all of that keeps one similarity transform; a picture that merely looks
   alike has no transform most of its pairs agree on.
3. The candidate's grey copy warped into the query's frame and compared: how much of the
   query, and of its content (padding and flat bars are not content), it covers; the
   correlation of the whole overlap; correlations of 16 px blocks (a caption or a logo spoils
   a few blocks, not the median); mean differences; the correlation of fine detail.

`align` returns those numbers (`Aligned`); what they add up to (copy or not, which candidate)
is the scorer's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from index_store.keypoints import Keypoints

Pairs = list[tuple[int, int]]  # (query keypoint, candidate keypoint)
Matrix = NDArray[np.float64]  # 2 x 3: query coordinates -> candidate coordinates

MIN_PAIRS = 12  # fewer pairs from the index: match descriptors here instead
RATIO = 0.85  # a match is kept when nearer than RATIO x the second nearest
MIN_INLIERS = 8  # a transform fewer pairs agree on is no alignment
REPROJECTION = 5.0  # pixels on the grey copy
SCALES = (0.25, 4.0)  # a plausible transform scales by more than the first, less than the last
BLOCK = 16
FLAT = 5.0  # grey-level std under which a block is flat
CONTENT = 4.0  # grey-level std of a 7 x 7 neighbourhood under which a pixel is not content
_MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING)


@dataclass(frozen=True)
class Aligned:
    inliers: int  # keypoint pairs the transform agrees with (0: none found)
    cover: float = 0.0  # share of the query's frame the candidate covers
    whole: float = 0.0  # correlation of all the aligned pixels
    block_median: float = 0.0  # median correlation of 16 px blocks (covered, not flat)
    block_upper: float = 0.0  # their upper quartile
    spread: float = 255.0  # mean |difference| of the overlaps, each less its mean
    difference: float = 255.0  # mean |difference| of the overlaps
    detail: float = 0.0  # correlation of fine detail (each less its 3 x 3 blur)
    content: float = 0.0  # share of the query's content the candidate covers
    agree: float = 0.0  # share of the query's textured blocks that correlate >= 0.5

    @property
    def aligned(self) -> bool:
        return self.inliers >= MIN_INLIERS


def matched(query: Keypoints, candidate: Keypoints) -> Pairs:
    """Ratio-tested nearest descriptor pairs."""
    if len(candidate) < 2 or len(query) < 2:
        return []
    found = _MATCHER.knnMatch(query.descriptors, candidate.descriptors, k=2)
    good = [m[0] for m in found if len(m) == 1 or (m and m[0].distance < RATIO * m[1].distance)]
    return [(m.queryIdx, m.trainIdx) for m in good]


def similarity(query: Keypoints, candidate: Keypoints, pairs: Pairs) -> tuple[int, Matrix | None]:
    """The similarity transform most of `pairs` agree on, and how many do; (0, None) if none
    is plausible."""
    if len(pairs) < 5:
        return 0, None
    source = query.points[[q for q, _ in pairs]]
    target = candidate.points[[c for _, c in pairs]]
    matrix, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION
    )
    if matrix is None:
        return 0, None
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not SCALES[0] < scale < SCALES[1]:
        return 0, None
    return int(inliers.sum()), np.asarray(matrix, dtype=np.float64)


def align(query: Keypoints, candidate: Keypoints, pairs: Pairs | None = None) -> Aligned:
    """Align `candidate` to `query` (from `pairs`, or matched here when they are too few) and
    compare the aligned pixels."""
    if pairs is None or len(pairs) < MIN_PAIRS:
        pairs = matched(query, candidate)
    inliers, matrix = similarity(query, candidate, pairs)
    if matrix is None or inliers < MIN_INLIERS:
        return Aligned(inliers)
    return compared(query.grey, candidate.grey, matrix, inliers)


def compared(query: NDArray[np.uint8], candidate: NDArray[np.uint8], matrix: Matrix,
             inliers: int) -> Aligned:  # fmt: skip
    """The candidate's grey copy warped by `matrix` into the query's frame, compared."""
    h, w = query.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(candidate, matrix, (w, h), flags=flags).astype(np.float32)
    full = np.full(candidate.shape, 255, np.uint8)
    mask = cv2.warpAffine(full, matrix, (w, h), flags=cv2.INTER_NEAREST | flags) > 0
    q = query.astype(np.float32)
    if mask.sum() < 200:
        return Aligned(inliers, cover=float(mask.mean()))
    a, b = q[mask], warped[mask]
    blocks, agree = block_correlations(q, warped, mask)
    mean = cv2.blur(q, (7, 7))
    content = np.sqrt(np.maximum(cv2.blur(q * q, (7, 7)) - mean * mean, 0)) >= CONTENT
    detail_q, detail_w = q - cv2.blur(q, (3, 3)), warped - cv2.blur(warped, (3, 3))
    enough = len(blocks) >= 4
    return Aligned(
        inliers,
        cover=float(mask.mean()),
        whole=correlation(a, b),
        block_median=float(np.median(blocks)) if enough else 0.0,
        block_upper=float(np.percentile(blocks, 75)) if enough else 0.0,
        spread=float(np.abs((a - a.mean()) - (b - b.mean())).mean()),
        difference=float(np.abs(a - b).mean()),
        detail=correlation(detail_q[mask], detail_w[mask]),
        content=float((content & mask).sum() / max(int(content.sum()), 1)),
        agree=agree,
    )


def correlation(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    a0, b0 = a - a.mean(), b - b.mean()
    return float(a0 @ b0 / (np.linalg.norm(a0) * np.linalg.norm(b0) + 1e-6))


def tiles(a: NDArray[np.generic]) -> NDArray[np.float32]:
    """`a` cut into BLOCK x BLOCK tiles (the ragged edge dropped), one row per tile."""
    rows, cols = a.shape[0] // BLOCK, a.shape[1] // BLOCK
    cut = a[: rows * BLOCK, : cols * BLOCK].astype(np.float32)
    return cut.reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3).reshape(rows * cols, -1)


def block_correlations(
    q: NDArray[np.float32], warped: NDArray[np.float32], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.float32], float]:
    """The correlations of the query's blocks with the aligned candidate's where the candidate
    covers them (>= 90 %) and neither is flat; and the share of the query's textured blocks
    that correlate >= 0.5."""
    qt, wt, covered = tiles(q), tiles(warped), tiles(mask).mean(axis=1) >= 0.9
    textured = qt.std(axis=1) >= FLAT
    keep = covered & textured & (wt.std(axis=1) >= FLAT)
    qa = qt[keep] - qt[keep].mean(axis=1, keepdims=True)
    wa = wt[keep] - wt[keep].mean(axis=1, keepdims=True)
    norms = np.linalg.norm(qa, axis=1) * np.linalg.norm(wa, axis=1) + 1e-6
    out: NDArray[np.float32] = (qa * wa).sum(axis=1) / norms
    return out, float((out >= 0.5).sum() / max(int(textured.sum()), 1))

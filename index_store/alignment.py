"""Is this candidate the picture the query copies? Align it, then compare the aligned pixels.

1. Keypoint pairs (query keypoint, candidate keypoint): those a descriptor index returned, or,
   when it gave too few, the query's descriptors matched to the candidate's here (nearest
   by Hamming distance, kept when clearly nearer than the second nearest).
2. A similarity transform (turn, scale, shift) the pairs agree on, by RANSAC: the inliers
   count how many agree. A copy is its original cropped, turned, scaled, padded, recoloured or
   partly covered: all of that keeps one similarity transform; a picture that merely looks
   alike has no transform most of its pairs agree on.
   Before pixels are compared, the transform is refined on the pixels themselves (`refined`):
   keypoints sit a pixel or more off on a coarse pyramid level and many pairs are nearly right,
   so RANSAC's transform can be a degree or a few pixels off, which spoils the comparison of
   fine detail and small blocks (tests/test_alignment_refined.py), even when many pairs agree.
3. The candidate's grey copy warped into the query's frame and compared: how much of the
   query, and of its content (padding and flat bars are not content), it covers; the
   correlation of the whole overlap; correlations of 16 px blocks (a caption or a logo spoils
   a few blocks, not the median); mean differences; the correlation of fine detail; how far
   inside the candidate's frame the query's lies (its margin).

`prepare` makes a query ready once (what the comparison needs of its own pixels); `align`
returns the numbers for one candidate (`Aligned`); what they add up to (copy or not, which
candidate) is the scorer's business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import faiss
import numpy as np
from numpy.typing import NDArray

from index_store.image_blocks import Blocks
from index_store.keypoints import Keypoints
from index_store.openmp import omp_threads
from index_store.search_threads import in_order

Pairs = list[tuple[int, int]]  # (query keypoint, candidate keypoint)
Matrix = NDArray[np.float64]  # 2 x 3: query coordinates -> candidate coordinates

MIN_PAIRS = 12  # fewer pairs from the index: match descriptors here instead
RATIO = 0.85  # a match is kept when nearer than RATIO x the second nearest
MIN_INLIERS = 8  # a transform fewer pairs agree on is no alignment
# Pixels are compared only for candidates whose frame, aligned, covers at least this share of
# what the best-covering candidate covers: a copy shows nothing its original lacks, so an
# original covers the copy's frame as far as any candidate does, and a sibling that shares only
# part of it is no answer. Chosen on bench/copy_verify.py's tuning half, where it spared most
# comparisons and no query lost its right answer (the time it saves: BENCHMARKS.md).
COVER_SHARE = 0.8
REPROJECTION = 5.0  # pixels on the grey copy
RANSAC_SEED = 2026
SCALES = (0.25, 4.0)  # a plausible transform scales by more than the first, less than the last
CONTENT = 4.0  # grey-level std of a 7 x 7 neighbourhood under which a pixel is not content
MARGIN_LIMIT = 10.0  # pixels: a margin is told apart up to this far outside
# Refinement: at half size (enough for a fraction of a pixel at full size), a few steps; a
# refined transform moving a query corner further than this from RANSAC's is not a refinement.
REFINE_STEPS = 5
REFINE_REACH = 2 * REPROJECTION
# Transforms with fewer inliers than this are refined: all of them. Sparing those with 150 or
# more saved 0.4 ms of a 45 ms search and cost a plain crop its copy verdict (bench/
# copy_refine.py, BENCHMARKS.md; tests/test_verified_copy_search.py).
REFINE_BELOW = 10**9
# Candidates keypoints cannot align (fewer than POOR on either side) are aligned from frames:
# the whole frame and centred windows (as the copy codes' views), then ECC for FRAME_STEPS.
POOR = 40
FRAMES = (1.0, 0.85, 0.75)
FRAME_STEPS = 20


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
    # How far inside the candidate's aligned frame the query's frame lies: the least signed
    # distance (pixels of the query's grey copy) of a query corner to the candidate's edges,
    # negative when a corner lies outside. An original contains all its copy shows; a sibling
    # that merely overlaps it cuts through its frame, often by a few pixels only.
    margin: float = -MARGIN_LIMIT
    framed: bool = False  # aligned from frames (`framed`), not by keypoint pairs

    @property
    def aligned(self) -> bool:
        return self.inliers >= MIN_INLIERS


def matched(query: Keypoints, candidate: Keypoints) -> Pairs:
    """Ratio-tested nearest descriptor pairs (faiss's Hamming k-NN: the two nearest
    distances OpenCV's brute-force matcher finds, without a Python object per match)."""
    if len(candidate) < 2 or len(query) < 2:
        return []
    distances, nearest = faiss.knn_hamming(query.descriptors, candidate.descriptors, 2)
    good = np.flatnonzero(distances[:, 0] < RATIO * distances[:, 1])
    return list(zip(good.tolist(), nearest[good, 0].tolist(), strict=True))


def similarity(query: Keypoints, candidate: Keypoints, pairs: Pairs) -> tuple[int, Matrix | None]:
    """The similarity transform most of `pairs` agree on, and how many do; (0, None) if none
    is plausible."""
    # Pairs from the vote index name keypoints of the candidate as indexed then; a candidate
    # replaced since may have fewer.
    in_query, in_candidate = len(query), len(candidate)
    pairs = [(q, c) for q, c in pairs if q < in_query and c < in_candidate]
    if len(pairs) < 5:
        return 0, None
    source = query.points[[q for q, _ in pairs]]
    target = candidate.points[[c for _, c in pairs]]
    cv2.setRNGSeed(RANSAC_SEED)  # the same pairs give the same transform, whatever ran before
    matrix, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION
    )
    if matrix is None:
        return 0, None
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if not SCALES[0] < scale < SCALES[1]:
        return 0, None
    return int(inliers.sum()), np.asarray(matrix, dtype=np.float64)


@dataclass(frozen=True)
class Query:
    """A query made ready once for aligning many candidates: its keypoints, and what the
    comparison needs of its grey copy (as float, its fine detail, its content, its blocks)."""

    keypoints: Keypoints
    grey: NDArray[np.float32]
    detail: NDArray[np.float32]  # the grey copy less its 3 x 3 blur
    content: NDArray[np.uint8]  # 255 where a pixel's 7 x 7 neighbourhood is not flat
    content_pixels: int
    blocks: Blocks  # its 16 px tiles
    half: NDArray[np.uint8]  # the grey copy at half size, for refining transforms


def prepare(keypoints: Keypoints) -> Query:
    q = keypoints.grey.astype(np.float32)
    mean = cv2.blur(q, (7, 7))
    textured = np.sqrt(np.maximum(cv2.blur(q * q, (7, 7)) - mean * mean, 0)) >= CONTENT
    content = textured.astype(np.uint8) * 255
    detail = q - cv2.blur(q, (3, 3))
    half = np.asarray(cv2.pyrDown(keypoints.grey), np.uint8)
    pixels = int(np.count_nonzero(content))
    return Query(keypoints, q, detail, content, pixels, Blocks.of(q), half)


def align(query: Query, candidate: Keypoints, pairs: Pairs | None = None) -> Aligned:
    """Align `candidate` to `query` (from `pairs`, or matched here when they are too few) and
    compare the aligned pixels."""
    return align_all(query, [(candidate, pairs)], compare=1)[0]


def align_all(
    query: Query,
    candidates: Sequence[tuple[Keypoints, Pairs | None]],
    compare: int,
    enough: Callable[[int, Aligned], bool] | None = None,
) -> list[Aligned]:
    """Each candidate aligned (as `align`), its pixels compared only for the `compare` that
    most pairs agree with among those whose aligned frame covers at least COVER_SHARE of what
    the best-covering one covers, and the one most pairs agree with: a transform is cheap, a
    comparison is not. Comparisons go by inliers, most first (two at a time:
    index_store/search_threads.py), and stop after one the caller finds `enough` (given its
    number and what was found: e.g. surely a copy)."""

    def transforms(
        part: Sequence[tuple[Keypoints, Pairs | None]],
    ) -> list[tuple[int, Matrix | None]]:
        out = []
        with omp_threads(1):  # matching two images' descriptors is too small for more
            for keypoints, pairs in part:
                if pairs is None or len(pairs) < MIN_PAIRS:
                    pairs = matched(query.keypoints, keypoints)
                out.append(similarity(query.keypoints, keypoints, pairs))
        return out

    half = (len(candidates) + 1) // 2  # each half's transforms on a thread of its own
    parts = in_order(transforms, [candidates[:half], candidates[half:]])
    found = [transform for part in parts for transform in part]
    out = [Aligned(inliers) for inliers, _ in found]
    covers = [
        frame_cover(query.grey.shape, keypoints.shape, matrix)
        if matrix is not None and inliers >= MIN_INLIERS
        else 0.0
        for (keypoints, _), (inliers, matrix) in zip(candidates, found, strict=True)
    ]
    best = max(covers, default=0.0)
    worth = {i for i, cover in enumerate(covers) if cover > 0 and cover >= COVER_SHARE * best}
    # A weak alignment at a small scale can cover the query whole: the candidate most pairs
    # agree with is compared whatever it covers (a caption bar or padding outside an original).
    most = max(range(len(found)), key=lambda i: found[i][0], default=None)
    if most is not None and covers[most] > 0:
        worth.add(most)

    def aligned_pixels(i: int) -> Aligned:
        inliers, matrix = found[i]
        assert matrix is not None  # covers nothing without one
        grey = candidates[i][0].grey
        if inliers < REFINE_BELOW:
            matrix = refined(query, grey, matrix)
        return compared(query, grey, matrix, inliers)

    chosen = sorted(worth, key=lambda i: (-found[i][0], i))[:compare]
    for i, aligned in zip(chosen, in_order(aligned_pixels, chosen, enough), strict=False):
        out[i] = aligned
    return out


def framed(query: Query, candidate: Keypoints) -> Aligned:
    """Align a candidate that keypoints cannot (either side has too few: a flat picture, or a
    logo's keypoints over one) from its frame: the query's frame laid over the candidate's
    whole frame or its centred FRAMES windows (as the copy codes' views), the guess whose
    pixels correlate best refined on the pixels (`refined`'s ECC, FRAME_STEPS steps), then
    compared (no inliers: no pair agreed). An Aligned with no comparison when ECC finds no
    alignment."""
    qh, qw = query.half.shape
    small = np.asarray(cv2.pyrDown(candidate.grey), np.uint8)
    ch, cw = small.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    pixels = query.half.astype(np.float32).ravel()
    best, guess = -2.0, None
    for keep in FRAMES:  # at half size: query (x, y) -> candidate's window
        half = np.array(
            [[cw * keep / qw, 0, cw * (1 - keep) / 2], [0, ch * keep / qh, ch * (1 - keep) / 2]],
            np.float32,
        )
        warped = cv2.warpAffine(small, half, (qw, qh), flags=flags).astype(np.float32)
        found = correlation(pixels, warped.ravel())
        if found > best:
            best, guess = found, half
    assert guess is not None
    matrix = climbed(query, small, guess, FRAME_STEPS)
    if matrix is None:
        return Aligned(0)
    return replace(compared(query, candidate.grey, matrix, 0), framed=True)


def frame_cover(
    query_shape: tuple[int, ...], candidate_shape: tuple[int, int], matrix: Matrix
) -> float:
    """The share of the query's frame that the candidate's frame covers once aligned (from
    the transform alone: no pixels)."""
    qh, qw = query_shape
    frame = np.array([[0, 0], [qw, 0], [qw, qh], [0, qh]], np.float32)
    area, _ = cv2.intersectConvexConvex(frame, _candidate_frame(candidate_shape, matrix))
    return float(area) / (qw * qh)


def frame_margin(
    query_shape: tuple[int, ...], candidate_shape: tuple[int, int], matrix: Matrix
) -> float:
    """`Aligned.margin`: the least signed distance of the query's corners to the candidate's
    aligned frame (inside: positive), at least -MARGIN_LIMIT."""
    qh, qw = query_shape
    frame = _candidate_frame(candidate_shape, matrix).reshape(-1, 1, 2)
    corners = ((0.0, 0.0), (float(qw), 0.0), (float(qw), float(qh)), (0.0, float(qh)))
    least = min(cv2.pointPolygonTest(frame, corner, True) for corner in corners)
    return max(float(least), -MARGIN_LIMIT)


def _candidate_frame(candidate_shape: tuple[int, int], matrix: Matrix) -> NDArray[np.float32]:
    """The candidate's frame's corners in the query's coordinates (`matrix` maps the query's
    to the candidate's)."""
    ch, cw = candidate_shape
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float64)
    return (corners @ inverse[:, :2].T + inverse[:, 2]).astype(np.float32)


def refined(query: Query, candidate: NDArray[np.uint8], matrix: Matrix) -> Matrix:
    """`matrix` refined to align the pixels (OpenCV's ECC: the warp that maximises their
    correlation, climbed from `matrix`, at half size); `matrix` itself when that fails or
    moves a query corner more than REFINE_REACH (it found another alignment, not this one)."""
    half = matrix.astype(np.float32)
    half[:, 2] /= 2  # both images at half size: the same turn and scale, half the shift
    out = climbed(query, np.asarray(cv2.pyrDown(candidate), np.uint8), half, REFINE_STEPS)
    if out is None:
        return matrix
    qh, qw = query.grey.shape
    corners = np.array([[0, 0, 1], [qw, 0, 1], [qw, qh, 1], [0, qh, 1]], np.float64)
    moved = np.linalg.norm(corners @ (out - matrix).T, axis=1).max()
    return out if moved <= REFINE_REACH else matrix


def climbed(
    query: Query, small: NDArray[np.uint8], guess: NDArray[np.float32], steps: int
) -> Matrix | None:
    """OpenCV's ECC at half size (`small`: the candidate's grey copy at half size; `guess`:
    a half-size transform): the affine transform that maximises the pixels' correlation,
    climbed from `guess` for at most `steps` steps, at full size; None when there is no
    correlation to climb (flat, or hardly overlapping)."""
    until = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, steps, 1e-4)
    every = np.full(small.shape, 255, np.uint8)  # ECC compares where this lands, warped
    affine = cv2.MOTION_AFFINE
    try:
        _, found = cv2.findTransformECC(query.half, small, guess, affine, until, every, 1)
    except cv2.error:
        return None
    out = np.asarray(found, np.float64)
    out[:, 2] *= 2
    return out


def compared(query: Query, candidate: NDArray[np.uint8], matrix: Matrix, inliers: int) -> Aligned:
    """The candidate's grey copy warped by `matrix` into the query's frame, compared."""
    h, w = query.grey.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(candidate, matrix, (w, h), flags=flags).astype(np.float32)
    full = np.full(candidate.shape, 255, np.uint8)
    covered = np.asarray(
        cv2.warpAffine(full, matrix, (w, h), flags=cv2.INTER_NEAREST | flags), np.uint8
    )
    count = int(cv2.countNonZero(covered))
    if count < 200:
        return Aligned(inliers, cover=count / (h * w))
    mask = covered > 0
    a, b = query.grey[mask], warped[mask]
    blocks, agree = query.blocks.correlations(warped, covered)
    median, upper = percentiles(blocks, (0.5, 0.75)) if len(blocks) >= 4 else (0.0, 0.0)
    difference = a - b
    detail = warped - cv2.blur(warped, (3, 3))
    content = cv2.countNonZero(cv2.bitwise_and(query.content, covered))
    return Aligned(
        inliers,
        cover=count / (h * w),
        whole=correlation(a, b),
        block_median=median,
        block_upper=upper,
        # Each overlap less its mean: the difference less the difference of the means.
        spread=float(np.abs(difference - difference.mean()).mean()),
        difference=float(np.abs(difference).mean()),
        detail=correlation(query.detail[mask], detail[mask]),
        content=content / max(query.content_pixels, 1),
        agree=agree,
        margin=frame_margin(query.grey.shape, candidate.shape, matrix),
    )


def correlation(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    a0, b0 = a - a.mean(), b - b.mean()
    return float(a0 @ b0 / (np.sqrt(float(a0 @ a0) * float(b0 @ b0)) + 1e-6))


def percentiles(values: NDArray[np.float64], shares: tuple[float, ...]) -> tuple[float, ...]:
    """numpy's linear-interpolated percentiles (`shares` of 1), from one sort."""
    ordered = np.sort(values)
    out = []
    for share in shares:
        at = share * (len(ordered) - 1)
        low = int(at)
        high = min(low + 1, len(ordered) - 1)
        out.append(float(ordered[low] + (ordered[high] - ordered[low]) * (at - low)))
    return tuple(out)

"""Copy detection with a verification stage (issue 15 prototype): local features + alignment.

    .venv/bin/python -m bench.copy_verify            # the copy_scale set, 300 non-copies

The set is bench/copy_scale.py's (same seed, same 2,000 originals and 600 copies, same right
answers: every original containing the pixels a copy shows), plus `--non-copies` queries made
the same way from the photographs kept outside the gallery (one is the other eye's view of a
gallery photograph's scene). Queries of even-numbered originals (and even-numbered non-copies)
are the tuning half; only the held-out half is reported.

For each query the prototype:
1. takes candidates from two places: the images whose ORB descriptors (at most 300 per image,
   on a <= 320 px grey copy, in a faiss binary IVF index) are nearest to the query's 600, by
   votes; and the product `copy` feature's 10 nearest (min Hamming over its code pairs);
2. verifies each candidate: a RANSAC similarity transform from the keypoint pairs that voted
   for it (ratio-tested brute-force matches where fewer than 12 did), then the candidate warped
   into the query's frame (border-trimmed) and compared: how much of the query, and of the
   query's content (pixels that are not flat: padding and bars are not), it covers;
   correlation of the whole overlap; median and upper quartile of 16 px block correlations
   (robust to captions and logos) and the share of blocks that agree; mean differences;
   high-pass correlation;
3. scores each candidate with a logistic model of those numbers, fitted on the tuning half only
   (a candidate is right when it contains every pixel the query shows); the top-scored
   candidate is the answer, and its score against a threshold is the verdict.

Printed side by side: recall@1 per kind of transform for `copy` alone and with verification;
for each, the verdict threshold chosen on the tuning half for precision >= 0.99 (the issue's
target) and the held-out precision and recall at it; query time (this gallery, one thread);
storage per image. This is a benchmark-only prototype: nothing here runs in the stack yet.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import faiss
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench import copy_verdicts as verdicts
from bench.copy_scale import (
    first_is_right,
    kind_column,
    recall_row,
)
from bench.copy_set import copy_set
from consumers.features import border_trim, copy_signature, multi_hash
from consumers.features.catalog import COPY
from consumers.features.decode import decode_image
from index_store.engines.factory import EngineFactory
from lookalike.samples import jpeg

SIDE = 320  # local features and the photometric check look at a <= 320 px grey copy
GALLERY_KEYPOINTS = 300
QUERY_KEYPOINTS = 600
VOTED = 40  # candidates by descriptor votes
HASHED = 10  # candidates by the copy feature
MIN_INLIERS = 8
NEIGHBOURS = 32  # gallery descriptors looked up per query descriptor
INDEX_PAIRS = 12  # a candidate with fewer voting keypoint pairs is matched by brute force
BLOCK = 16
CODE_BYTES = copy_signature.CODE_BITS // 8
# What photometric() says of a candidate that could not be aligned: covers nothing, correlates
# with nothing, differs as much as 8-bit pixels can.
NOT_ALIGNED = (0.0, 0.0, 0.0, 0.0, 255.0, 255.0, 0.0, 0.0, 0.0)
Floats = NDArray[np.float64]


@dataclass
class Described:
    points: NDArray[np.float32]  # keypoint (x, y) on the grey copy
    descriptors: NDArray[np.uint8]  # ORB, 32 bytes each
    grey: NDArray[np.uint8]  # the <= 320 px grey copy (stored as a JPEG: see stored_bytes)
    codes: list[bytes]  # the product copy feature's codes: indexed (gallery) or query ones
    stored_bytes: int = 0


def grey_copy(img: Image.Image) -> NDArray[np.uint8]:
    grey = np.asarray(img.convert("L"))
    h, w = grey.shape
    scale = SIDE / max(h, w)
    if scale < 1:
        grey = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return grey


def describe(img: Image.Image, keypoints: int, query: bool) -> Described:
    framed = border_trim.framings(img)[-1] if query else img
    grey = grey_copy(framed)
    orb = cv2.ORB.create(nfeatures=keypoints, edgeThreshold=15, fastThreshold=10)
    found, descriptors = orb.detectAndCompute(grey, None)
    if descriptors is None:
        points, descriptors = np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    else:
        points = np.array([k.pt for k in found], np.float32)
    if query:
        codes = COPY.query_vectors(img)
    else:
        vector = COPY.describe_batch([img])[0]
        codes = [vector[i : i + CODE_BYTES] for i in range(0, len(vector), CODE_BYTES)]
    stored = 0
    if not query:  # what an index would keep: descriptors, points as float16, grey JPEG
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, "JPEG", quality=90)
        grey = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        stored = descriptors.nbytes + points.size * 2 + buffer.tell() + len(b"".join(codes))
    return Described(points, np.asarray(descriptors, dtype=np.uint8), grey, codes, stored)


@dataclass
class Candidate:
    picked: list[int]  # gallery numbers, by votes, then the copy feature's nearest
    votes: Counter[int]
    pairs: dict[int, list[tuple[int, int]]]  # (query keypoint, its keypoint) that voted
    nearest: list[tuple[int, float]]  # the copy feature's nearest, with distances


class Candidates:
    """Both candidate sources over one gallery: ORB descriptor votes, and the product's copy
    feature in the product's own engine."""

    def __init__(self, gallery: Sequence[Described]) -> None:
        self.gallery = gallery
        self.owner = np.concatenate([np.full(len(g.points), i) for i, g in enumerate(gallery)])
        self.keypoint = np.concatenate([np.arange(len(g.points)) for g in gallery])
        descriptors = np.concatenate([g.descriptors for g in gallery])
        self.index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(256), 256, 1024)
        self.index.train(descriptors)
        self.index.add(descriptors)
        self.index.nprobe = 16
        self.hashes = EngineFactory("exact").make(COPY.metric, COPY.dim, COPY.codes_per_item)
        ids = [str(i) for i in range(len(gallery))]
        self.hashes.upsert_many(ids, b"".join(b"".join(g.codes) for g in gallery))

    def of(self, query: Described) -> Candidate:
        """Candidates (voted first), their votes and the keypoint pairs that voted, and the
        copy feature's nearest with distances."""
        votes: Counter[int] = Counter()
        pairs: dict[int, list[tuple[int, int]]] = {}
        if len(query.descriptors):
            distances, ids = self.index.search(query.descriptors, NEIGHBOURS)
            near = (ids >= 0) & (distances <= 64)
            rows, cols = np.nonzero(near)
            found = ids[rows, cols]
            for q, i, d in zip(rows, found, distances[rows, cols], strict=True):
                owner = int(self.owner[i])
                votes[owner] += 1 / (1 + d / 16)
                pairs.setdefault(owner, []).append((int(q), int(self.keypoint[i])))
        nearest = [(int(i), float(d)) for i, d in self.hashes.search(query.codes, HASHED)]
        picked = [i for i, _ in votes.most_common(VOTED)]
        picked += [i for i, _ in nearest if i not in picked]
        return Candidate(picked, votes, pairs, nearest)

    def hash_distance(self, query: Described, candidate: int) -> float:
        return float(multi_hash.distance(query.codes, self.gallery[candidate].codes))


MATCHER = cv2.BFMatcher(cv2.NORM_HAMMING)


def matched(query: Described, candidate: Described) -> list[tuple[int, int]]:
    """Ratio-tested nearest descriptor pairs (query keypoint, candidate keypoint)."""
    if len(candidate.descriptors) < 2 or len(query.descriptors) < 2:
        return []
    pairs = [m for m in MATCHER.knnMatch(query.descriptors, candidate.descriptors, k=2) if m]
    good = [m[0] for m in pairs if len(m) == 1 or m[0].distance < 0.85 * m[1].distance]
    return [(m.queryIdx, m.trainIdx) for m in good]


def transform(
    query: Described, candidate: Described, pairs: list[tuple[int, int]]
) -> tuple[int, NDArray[np.float64] | None]:
    """Inliers and the similarity transform (query -> candidate coordinates) the keypoint
    `pairs` support, if plausible."""
    if len(pairs) < 5:
        return 0, None
    source = query.points[[q for q, _ in pairs]]
    target = candidate.points[[c for _, c in pairs]]
    matrix, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=5.0
    )
    if matrix is None or not 0.25 < np.sqrt(abs(np.linalg.det(matrix[:, :2]))) < 4:
        return 0, None
    return int(inliers.sum()), np.asarray(matrix, dtype=np.float64)


def correlation(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    a0, b0 = a - a.mean(), b - b.mean()
    return float(a0 @ b0 / (np.linalg.norm(a0) * np.linalg.norm(b0) + 1e-6))


def tiles(a: NDArray[np.generic]) -> NDArray[np.float32]:
    """`a` cut into BLOCK x BLOCK tiles (the ragged edge dropped), one row per tile."""
    rows, cols = a.shape[0] // BLOCK, a.shape[1] // BLOCK
    cut = a[: rows * BLOCK, : cols * BLOCK].astype(np.float32)
    return cut.reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3).reshape(rows * cols, -1)


def block_evidence(
    q: NDArray[np.float32], warped: NDArray[np.float32], mask: NDArray[np.bool_]
) -> tuple[NDArray[np.float32], float]:
    """Tile by tile: the correlations of the query's tiles with the aligned candidate's where
    the candidate covers them (>= 90 %) and neither is flat (std >= 5); and the share of the
    query's textured tiles that correlate >= 0.5."""
    qt, wt, covered = tiles(q), tiles(warped), tiles(mask).mean(axis=1) >= 0.9
    textured = qt.std(axis=1) >= 5
    keep = covered & textured & (wt.std(axis=1) >= 5)
    qa = qt[keep] - qt[keep].mean(axis=1, keepdims=True)
    wa = wt[keep] - wt[keep].mean(axis=1, keepdims=True)
    norms = np.linalg.norm(qa, axis=1) * np.linalg.norm(wa, axis=1) + 1e-6
    out: NDArray[np.float32] = (qa * wa).sum(axis=1) / norms
    return out, float((out >= 0.5).sum() / max(int(textured.sum()), 1))


def photometric(query: Described, candidate: Described, matrix: NDArray[np.float64]) -> list[float]:
    h, w = query.grey.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(candidate.grey, matrix, (w, h), flags=flags).astype(np.float32)
    full = np.full(candidate.grey.shape, 255, np.uint8)
    mask = cv2.warpAffine(full, matrix, (w, h), flags=cv2.INTER_NEAREST | flags) > 0
    q = query.grey.astype(np.float32)
    if mask.sum() < 200:
        return [float(mask.mean()), *NOT_ALIGNED[1:]]
    a, b = q[mask], warped[mask]
    blocks, agree = block_evidence(q, warped, mask)
    # The query's content: pixels whose 7 x 7 neighbourhood is not flat (padding and bars are
    # not content); how much of it the candidate covers.
    mean = cv2.blur(q, (7, 7))
    content = np.sqrt(np.maximum(cv2.blur(q * q, (7, 7)) - mean * mean, 0)) >= 4
    content_cover = float((content & mask).sum() / max(int(content.sum()), 1))
    median = float(np.median(blocks)) if len(blocks) >= 4 else 0.0
    upper = float(np.percentile(blocks, 75)) if len(blocks) >= 4 else 0.0
    detail_q, detail_w = q - cv2.blur(q, (3, 3)), warped - cv2.blur(warped, (3, 3))
    return [
        float(mask.mean()),  # share of the query the candidate covers
        correlation(a, b),
        median,
        upper,
        float(np.abs((a - a.mean()) - (b - b.mean())).mean()),
        float(np.abs(a - b).mean()),
        correlation(detail_q[mask], detail_w[mask]),
        content_cover,  # share of the query's content the candidate covers
        agree,  # share of the query's textured tiles that correlate >= 0.5
    ]


COVER, BLOCK_MEDIAN = 2, 4  # where evidence() puts the coverage and the median block correlation


def evidence(
    query: Described, candidate: Described, pairs: list[tuple[int, int]], hashed: float,
    votes: float,
) -> Floats:  # fmt: skip
    """The numbers the scorer weighs for one (query, candidate) pair: `pairs` are the keypoint
    pairs that voted for it (too few: its descriptors are matched to the query's here)."""
    if len(pairs) < INDEX_PAIRS:
        pairs = matched(query, candidate)
    inliers, matrix = transform(query, candidate, pairs)
    verified = matrix is not None and inliers >= MIN_INLIERS
    aligned = photometric(query, candidate, matrix) if verified and matrix is not None else None
    cover, whole, median, upper, spread, raw, detail, content, agree = aligned or NOT_ALIGNED
    v = float(verified)
    return np.array(
        [1.0, np.log1p(inliers), cover, whole, median, upper, spread / 50, hashed / 100,
         np.log1p(votes), v, cover * median, cover * whole, raw / 50, detail, detail * cover,
         content, agree, content * median]
    )  # fmt: skip


def fit_logistic(x: Floats, y: Floats, l2: float = 1e-2, steps: int = 50) -> Floats:
    """Logistic regression by Newton steps (a handful of features, a few thousand rows)."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, x.T @ (p - y) + l2 * w)
    return w


@dataclass
class Answers:
    """Per query: the verifier's answer and score, the copy feature's nearest (with their
    distances), and the seconds the verifier took."""

    verified: NDArray[np.int64]
    score: Floats
    nearest: list[list[tuple[int, float]]]
    took: list[float]
    # every (query, candidate) pair verified, and its evidence
    pairs: list[tuple[int, int]]
    evidence: Floats


def answer(made: list[bytes], gallery: list[Described], right: list[frozenset[int]],
           tune: NDArray[np.bool_]) -> Answers:  # fmt: skip
    """Verify every query's candidates, fit the scorer on the tuning half (a candidate is
    right when it is one of the query's `right` answers), pick answers."""
    candidates = Candidates(gallery)
    rows: list[tuple[int, int, Floats]] = []
    hashed: list[list[tuple[int, float]]] = []
    took: list[float] = []
    for n, data in enumerate(made):
        t0 = time.perf_counter()
        query = describe(decode_image(data, max_pixels=10**8), QUERY_KEYPOINTS, query=True)
        found = candidates.of(query)
        picked, votes, nearest = found.picked, found.votes, found.nearest
        near = dict(nearest)
        for c in picked:
            d = near[c] if c in near else candidates.hash_distance(query, c)
            pairs = found.pairs.get(c, [])
            rows.append((n, c, evidence(query, gallery[c], pairs, d, votes.get(c, 0.0))))
        took.append(time.perf_counter() - t0)
        hashed.append(nearest)
        if n % 100 == 0:
            print(f"  {n}/{len(made)} queries", flush=True)
    which = np.array([n for n, _, _ in rows])
    cand = np.array([c for _, c, _ in rows])
    x = np.stack([e for _, _, e in rows])
    label = np.array([c in right[n] for n, c in zip(which, cand, strict=True)], np.float64)
    w = fit_logistic(x[tune[which]], label[tune[which]])
    score = x @ w
    verified = np.full(len(made), -1)
    top = np.full(len(made), -np.inf)
    for r in range(len(rows)):
        if score[r] > top[which[r]]:
            top[which[r]], verified[which[r]] = score[r], cand[r]
    pairs = [(n, c) for n, c, _ in rows]
    return Answers(verified, top, hashed, took, pairs, x)


def explain_misses(got: Answers, right: list[frozenset[int]], chosen: NDArray[np.bool_]) -> str:
    """Why the verifier missed the `chosen` queries: was a right answer a candidate, and did
    the winner align as well as the best right one (covers >= 99 % of the query, median block
    correlation within 0.01 of it)?"""
    row = {pair: i for i, pair in enumerate(got.pairs)}
    missed = [int(n) for n in np.flatnonzero(chosen) if int(got.verified[n]) not in right[n]]
    as_well, absent = 0, 0
    for n in missed:
        rows = [row[(n, c)] for c in right[n] if (n, c) in row]
        if not rows:
            absent += 1
            continue
        best = max(got.evidence[r][BLOCK_MEDIAN] for r in rows)
        winner = got.evidence[row[(n, int(got.verified[n]))]]
        as_well += bool(winner[COVER] >= 0.99 and winner[BLOCK_MEDIAN] >= best - 0.01)
    return (
        f"{len(missed)} missed of {int(chosen.sum())}; no right answer among the candidates: "
        f"{absent}; a winner aligned as well as a right one: {as_well}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--originals", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--non-copies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--precision", type=float, default=0.99)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    copies = copy_set(args.originals, args.queries, args.seed, args.non_copies)
    others = copies.non_copies
    made = copies.queries + others
    right = copies.right + [frozenset() for _ in others]
    strict = copies.strict + [frozenset() for _ in others]
    kinds = [q.kind for q in made]
    tune = np.concatenate([copies.source % 2 == 0, np.arange(args.non_copies) % 2 == 0])
    gallery = [
        describe(decode_image(jpeg(g), max_pixels=10**8), GALLERY_KEYPOINTS, query=False)
        for g in copies.gallery
    ]
    print(f"gallery described in {time.perf_counter() - started:.0f}s", flush=True)
    got = answer([q.data for q in made], gallery, right, tune)
    is_copy = np.array([len(r) > 0 for r in right])
    held = ~tune
    columns = sorted({kind_column(k) for k in kinds[: args.queries]})
    several = sum(len(r) > 1 for r in np.array(right, dtype=object)[held & is_copy])
    print(f"\n## Copy detection with verification (held-out half: {int((held & is_copy).sum())} "
          f"copies, {several} of them show pixels that more than one original contains; "
          f"{int((held & ~is_copy).sum())} non-copies; seed {args.seed})\n")  # fmt: skip
    verified = [int(v) for v in got.verified]
    found = {}
    for title, labels in (("its own original only", strict), ("any original that contains "
                          "every pixel it shows", right)):  # fmt: skip
        print(f"Recall@1 when the right answer is {title}:\n")
        print("| method | recall@1 | " + " | ".join(columns) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
        hashed = np.array(
            [
                first_is_right([(str(i), d) for i, d in h], r)
                for h, r in zip(got.nearest, labels, strict=True)
            ]
        )
        checked = np.array([v in r for v, r in zip(verified, labels, strict=True)])
        print(recall_row("copy (product)", hashed, kinds, held & is_copy, columns))
        print(recall_row("copy + verification", checked, kinds, held & is_copy, columns))
        print()
        found = {"hashed": hashed, "verified": checked}
    print(f"Verdicts (threshold chosen on the tuning half for precision >= {args.precision}; "
          "a verdict is right when its answer contains the copy's pixels):\n")  # fmt: skip
    print(verdicts.HEADER)
    distance = np.array([h[0][1] for h in got.nearest])
    name = "copy: closest code pair, bits (at most = copy)"
    print(
        verdicts.verdict_row(
            name, distance, found["hashed"], is_copy, tune, args.precision, sign=-1
        )
    )
    name = "copy + verification: score"
    print(verdicts.verdict_row(name, got.score, found["verified"], is_copy, tune, args.precision))
    print("\nMisses of the tuning half, by kind:")
    for kind in sorted({k for k, c in zip(kinds, is_copy, strict=True) if c}):
        chosen = tune & is_copy & np.array([k == kind for k in kinds])
        print(f"- {kind}: {explain_misses(got, right, chosen)}")
    stored = statistics.mean(g.stored_bytes for g in gallery)
    code_bytes = len(b"".join(gallery[0].codes))
    print(f"\nquery p50 {1000 * statistics.median(got.took):.0f} ms, p90 "
          f"{1000 * float(np.percentile(got.took, 90)):.0f} ms ({len(gallery):,} images, one "
          f"thread); stored per image {stored / 1024:.1f} KiB (copy codes {code_bytes} B, ORB "
          f"descriptors and points, grey JPEG); {time.perf_counter() - started:.0f}s")  # fmt: skip


if __name__ == "__main__":
    main()

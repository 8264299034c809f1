"""Which transforms are worth refining on the pixels before comparison (issue 15).

    .venv/bin/python -m bench.copy_refine                      # 2,000 originals, seed 2026
    .venv/bin/python -m bench.copy_refine --below 1000000000,100 --seed 7

Before a candidate's pixels are compared, the transform RANSAC found from keypoint pairs is
refined on the pixels (index_store/alignment.refined, OpenCV's ECC): worth it when few pairs
agree (the transform can be a degree off), less so when many do. This runs the product's
verified search (consumers/indexer/copy_verification.py, on bench/copy_set.py's set, as
bench/copy_verify.py does) once per value of alignment.REFINE_BELOW (transforms with at least
that many inliers are compared as RANSAC found them; 10^9: every one refined, as the product
does), the values taking turns on every query, each first as often as the others (the
first search of a query finds its candidates' records colder), so that this machine's slow
and fast spells fall on each alike. Printed per value: recall@1 by content on
each half, the held-out verdicts at the shipped threshold (right, wrong, and "copy" said of
non-copies), refinements per query and the search time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import faiss
import numpy as np

from bench.copy_set import add_set_options, copy_set
from bench.copy_verify import ASKED, indexed
from consumers.features.catalog import COPY, KEYPOINTS
from consumers.features.decode import decode_image
from consumers.indexer.copy_verification import CopyVerifier
from index_store import alignment
from index_store.copy_scorer import CopyScorer
from index_store.lmdb_store import FeatureStore

Hits = list[tuple[str, float]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_set_options(parser)
    parser.add_argument(
        "--below",
        default="1000000000,150,100,50",
        help="values of alignment.REFINE_BELOW to compare, comma-separated",
    )
    args = parser.parse_args()
    values = [int(v) for v in args.below.split(",")]
    faiss.omp_set_num_threads(1)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    copies = copy_set(args.originals, args.queries, args.seed, args.non_copies)
    found: dict[int, list[Hits]] = {v: [] for v in values}
    took: dict[int, list[float]] = {v: [] for v in values}
    refinements = dict.fromkeys(values, 0)
    shipped = alignment.REFINE_BELOW
    refine = alignment.refined
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(Path(tmp))
        indexes, _ = indexed(copies, store)
        print(f"gallery indexed in {time.perf_counter() - started:.0f}s", flush=True)
        queries = [
            KEYPOINTS.query_vectors(decode_image(q.data, max_pixels=10**8)) for q in copies.asked
        ]
        scorer = CopyScorer.load()
        verifier = CopyVerifier(indexes[KEYPOINTS.name], indexes[COPY.name], scorer)
        try:
            for n, packed in enumerate(queries):
                for value in values[n % len(values) :] + values[: n % len(values)]:
                    alignment.REFINE_BELOW = value

                    def counted(*args: object, value: int = value) -> alignment.Matrix:
                        refinements[value] += 1
                        return refine(*args)  # type: ignore[arg-type]

                    alignment.refined = counted  # type: ignore[assignment]
                    t0 = time.perf_counter()
                    found[value].append(verifier.search(packed, ASKED))
                    took[value].append(time.perf_counter() - t0)
                if n % 100 == 0:
                    print(f"  asked {n}/{len(queries)}", flush=True)
        finally:
            alignment.REFINE_BELOW, alignment.refined = shipped, refine
        store.close()
    report(copies.by_content, copies.tuning, found, took, refinements, scorer.max_distance)
    print(f"\n{len(copies.gallery):,} originals, seed {args.seed}; "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip


def report(right: Sequence[frozenset[int]], tune: np.ndarray, found: dict[int, list[Hits]],
           took: dict[int, list[float]], refinements: dict[int, int],
           max_distance: float) -> None:  # fmt: skip
    is_copy = np.array([len(r) > 0 for r in right])
    held = ~tune
    print(
        "\n| refined below (inliers) | tuning recall@1 | held-out recall@1 | held-out verdicts "
        "right / wrong | non-copies called copies | refinements per query | search mean ms "
        "| p50 ms | p90 ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    for value, hits in found.items():
        top = [h[0] if h else None for h in hits]
        ok = np.array([t is not None and int(t[0]) in r for t, r in zip(top, right, strict=True)])
        said = np.array([t is not None and t[1] <= max_distance for t in top])
        right_said, wrong_said = (int((said & v)[held & is_copy].sum()) for v in (ok, ~ok))
        ms = 1000 * np.array(took[value])
        print(
            f"| {value:,} | {ok[tune & is_copy].mean():.3f} | {ok[held & is_copy].mean():.3f} "
            f"| {right_said} / {wrong_said} "
            f"| {int(said[held & ~is_copy].sum())} | {refinements[value] / len(hits):.2f} "
            f"| {ms.mean():.1f} | {np.median(ms):.1f} | {np.percentile(ms, 90):.1f} |"
        )
    print(f"\n({int((held & is_copy).sum())} held-out copies, {int((tune & is_copy).sum())} tuning "
          f"copies, {int((held & ~is_copy).sum())} held-out non-copies)")  # fmt: skip


if __name__ == "__main__":
    main()

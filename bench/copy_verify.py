"""Copy verification in one process, and the copy scorer's fit (issue 15).

    .venv/bin/python -m bench.copy_verify                 # the shipped scorer, 2,000 originals
    .venv/bin/python -m bench.copy_verify --fit           # fit it on the tuning half, save it
    .venv/bin/python -m bench.copy_verify --fit 2026,11,13  # on these sets' tuning halves
    .venv/bin/python -m bench.copy_verify --fit-framed 2026,7  # frame alignments' weights
    .venv/bin/python -m bench.copy_verify --originals 10000
    .venv/bin/python -m bench.copy_verify --originals 100000 --keep /var/tmp/copies

The set is bench/copy_set.py's (seed 2026, 2,000 originals, 600 copies, 300 non-copies; right
answers by content: every original containing all the pixels a copy shows; the tuning half is
the copies of even-numbered originals and the even-numbered non-copies). The gallery goes into a
copy and a keypoints FeatureIndex in a temporary store, as an indexer fills them, and each query
is answered by the product's own verification (consumers/indexer/copy_verification.py:
`CopyVerifier.search`, as the `keypoints` feature's search answers it), on one thread. The same
run through the stack is bench/copy_detection.py; this one is faster, and it fits the scorer.

`--fit` first examines every tuning query's candidates with every candidate's pixels compared
(`CopyVerifier.examine`), fits the logistic weights (a candidate is right when it is one of its
query's right answers), then picks the threshold: the lowest score whose verdicts keep
precision >= `--fit-precision` (0.995) on the tuning half, stricter than the 0.99 the held-out
half is judged by: a threshold picked where the tuning queries just reach a precision lands
on either side of it on unseen ones. `--fit SEEDS` pools the tuning halves of several seeds'
sets (more rare wrong verdicts to pick the threshold by; the held-out halves stay unseen).
It saves index_store/copy_scorer.json (keeping the frame alignments' weights it had), and
the report that follows uses it.

`--fit-framed SEEDS` fits the weights of frame alignments (candidates keypoints could not
align, aligned from their frames: too few of them in one set's tuning half, so the tuning
halves of several seeds' sets are pooled; the report is still seed 2026's held-out half, which
none of them contains) and saves them beside the scorer's.

Printed: recall@1 per kind of transform for `copy` alone (its nearest by code distance) and for
the verified search, strictly and by content; the verdicts at the shipped threshold and at the
one the tuning half would choose; query time by stage, and the CPU a verified search takes
on all its threads; stored bytes per image. `--keep DIR` keeps the indexed gallery for later runs
(describing and training a 100,000-original set is most of a first run's time).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import faiss
import numpy as np
from numpy.typing import NDArray

from bench import copy_verdicts as verdicts
from bench.copy_scale import found, kind_column, recall_row
from bench.copy_set import CopySet, Cut, add_set_options, copy_set
from consumers.features.catalog import COPY, KEYPOINTS
from consumers.features.decode import decode_image
from consumers.indexer.copy_verification import CopyVerifier
from index_store import copy_scorer, search_threads
from index_store.copy_scorer import CopyScorer
from index_store.engines.factory import EngineFactory
from index_store.feature_index import FeatureIndex
from index_store.keypoints import unpack
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert
from index_store.openmp import omp_threads
from lookalike.samples import jpeg

Floats = NDArray[np.float64]
Hits = list[tuple[str, float]]  # (gallery number, distance), nearest first
STAGES = ("describe", "copy alone")
FRAMED_L2 = 0.1  # few rows: a firmer pull towards zero than the keypoint scorer's
CHUNK = 1000  # originals described and indexed at a time
ASKED = 10  # hits a verified search asks for (SearchRequest's default k): enough to judge the
# first, and comparisons stop once this many are sure copies


def described(cut: Cut) -> bytes:
    """One original as the extractor describes it after its upload (a JPEG round trip): its
    packed keypoints, which carry its copy codes (what the copy feature's vector is)."""
    image = decode_image(jpeg(cut.render()), max_pixels=10**8)
    return KEYPOINTS.describe_batch([image])[0]


def indexed(
    copies: CopySet, store: FeatureStore, kept: Path | None = None
) -> tuple[dict[str, FeatureIndex], float]:
    """The gallery in a copy and a keypoints index (as an indexer fills them: applied, then
    the vote index rebuilt once from the store, trained); mean stored bytes per image. The
    originals are described CHUNK at a time on worker processes (100,000 of them would not
    fit in memory at once). `kept`: where `store` lives; the indexes' snapshots are kept
    beside it, and a store that holds the whole gallery already is loaded from them."""
    engines = EngineFactory("exact")
    indexes = {
        spec.name: FeatureIndex(
            store,
            spec.index_name,
            engines.make(spec.metric, spec.dim, spec.codes_per_item),
            # By index name (it carries the feature's version): a snapshot of an older
            # version's vectors is never loaded for a newer one.
            None if kept is None else kept / "snapshots" / spec.index_name,
        )
        for spec in (COPY, KEYPOINTS)
    }
    cuts = copies.gallery.cuts
    with omp_threads(os.cpu_count() or 1):  # training the vote index, as an indexer's rebuild
        if kept is not None and all(i.load() == len(cuts) for i in indexes.values()):
            print(f"  gallery loaded from {kept}", flush=True)
        else:
            described_all(cuts, indexes)
            print("  training the vote index", flush=True)
            indexes[KEYPOINTS.name].rebuild(store.vectors(KEYPOINTS.index_name))
    for index in indexes.values():
        index.checkpoint()
    stored = sum(len(v) for i in indexes.values() for _, v in store.vectors(i.name))
    return indexes, stored / max(len(cuts), 1)


def described_all(cuts: list[Cut], indexes: dict[str, FeatureIndex]) -> None:
    """Each original described (on worker processes) and applied to both indexes."""
    spawned = multiprocessing.get_context("spawn")  # not forked from a process running OpenMP
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=spawned) as pool:
        for start in range(0, len(cuts), CHUNK):
            packed = list(pool.map(described, cuts[start : start + CHUNK], chunksize=25))
            vectors = {KEYPOINTS.name: packed, COPY.name: [unpack(p).codes for p in packed]}
            for name, index in indexes.items():
                changes = [
                    Upsert(str(start + n), v, ImageRecord(bucket="b", key=str(start + n)))
                    for n, v in enumerate(vectors[name])
                ]
                index.apply(changes, {"bench/0": start + len(packed)})
            if (start // CHUNK) % 10 == 9:
                print(f"  described {start + len(packed):,}/{len(cuts):,}", flush=True)


def fit_logistic(x: Floats, y: Floats, l2: float = 1e-2, steps: int = 50) -> Floats:
    """Logistic regression by Newton steps (a handful of features, a few thousand rows)."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, x.T @ (p - y) + l2 * w)
    return w


Asked = tuple[int, int]  # a query: (its set's seed, its number in the set)
Row = tuple[Asked, Floats, bool]  # (query, a candidate's evidence, whether a right answer)


def tuning_rows(verifier: CopyVerifier, copies: CopySet, queries: list[Sequence[bytes]],
                seed: int) -> tuple[list[Row], list[Asked]]:  # fmt: skip
    """Evidence of every keypoint alignment of the tuning half's queries (all candidates
    examined) and whether each is one of its query's right answers; the tuning queries."""
    rows: list[Row] = []
    tuning = [int(n) for n in np.flatnonzero(copies.tuning)]
    for done, n in enumerate(tuning):
        answers = copies.by_content[n]
        for e in verifier.examine(unpack(queries[n][0]), sure_of=None):
            if not e.aligned.framed:  # frame alignments have weights of their own
                rows.append(((seed, n), e.evidence, int(e.image_id) in answers))
        if done % 100 == 0:
            print(f"  seed {seed}: examined {done}/{len(tuning)}", flush=True)
    return rows, [(seed, n) for n in tuning]


def fitted(rows: list[Row], tuning: list[Asked], precision: float,
           fitted_on: str) -> CopyScorer:  # fmt: skip
    """Weights from the tuning queries' examined candidates (`rows`), then the lowest
    threshold with `precision` over the `tuning` queries (each query's answer: its top-scored
    candidate; a query with no row has none)."""
    x = np.stack([r for _, r, _ in rows])
    weights = fit_logistic(x, np.array([y for _, _, y in rows], np.float64))
    top: dict[Asked, tuple[float, bool]] = {}  # query -> its top score, whether right
    for (n, _, is_right), score in zip(rows, (x @ weights).tolist(), strict=True):
        if n not in top or score > top[n][0]:
            top[n] = (score, is_right)
    best = np.array([top.get(n, (-np.inf, False))[0] for n in tuning])
    correct = np.array([top.get(n, (0.0, False))[1] for n in tuning])
    threshold = verdicts.threshold_for(best, correct, precision)
    return CopyScorer(weights, threshold, fitted_on)


def other_tuning_rows(seeds: list[int], scorer: CopyScorer, args: argparse.Namespace
                      ) -> tuple[list[Row], list[Asked]]:  # fmt: skip
    """`tuning_rows` of the sets made from `seeds`, each indexed in a store of its own."""
    rows: list[Row] = []
    tuning: list[Asked] = []
    for seed in seeds:
        copies = copy_set(args.originals, args.queries, seed, args.non_copies)
        packed = [
            KEYPOINTS.query_vectors(decode_image(q.data, max_pixels=10**8)) for q in copies.asked
        ]
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(Path(tmp))
            indexes, _ = indexed(copies, store)
            verifier = CopyVerifier(indexes[KEYPOINTS.name], indexes[COPY.name], scorer)
            more_rows, more_tuning = tuning_rows(verifier, copies, packed, seed)
            store.close()
        rows += more_rows
        tuning += more_tuning
    return rows, tuning


def framed_rows(copies: CopySet, verifier: CopyVerifier) -> tuple[Floats, Floats]:
    """Evidence of every frame alignment of the tuning half's queries, and whether each is a
    right answer."""
    rows, right = [], []
    for n in np.flatnonzero(copies.tuning):
        query = KEYPOINTS.query_vectors(decode_image(copies.asked[n].data, max_pixels=10**8))
        for e in verifier.examine(unpack(query[0]), sure_of=None):
            if e.aligned.framed:
                rows.append(e.evidence)
                right.append(float(int(e.image_id) in copies.by_content[n]))
    return np.array(rows).reshape(-1, len(copy_scorer.EVIDENCE)), np.array(right)


def fitted_framed(scorer: CopyScorer, seeds: list[int], args: argparse.Namespace) -> CopyScorer:
    """`scorer` with frame alignments' weights fitted on the tuning halves of the sets made
    from `seeds` (few queries of one set need a frame alignment: several sets are pooled)."""
    xs, ys = [], []
    for seed in seeds:
        copies = copy_set(args.originals, args.queries, seed, args.non_copies)
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(Path(tmp))
            indexes, _ = indexed(copies, store)
            x, y = framed_rows(
                copies, CopyVerifier(indexes[KEYPOINTS.name], indexes[COPY.name], scorer)
            )
            store.close()
        print(f"  seed {seed}: {len(y)} frame alignments, {int(y.sum())} right", flush=True)
        xs.append(x)
        ys.append(y)
    weights = fit_logistic(np.concatenate(xs), np.concatenate(ys), l2=FRAMED_L2)
    fitted_on = (f"python -m bench.copy_verify --fit-framed: seeds {seeds}, tuning halves, "
                 f"{args.originals} originals")  # fmt: skip
    return replace(scorer, framed_weights=weights, framed_fitted_on=fitted_on)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_set_options(parser)
    parser.add_argument(
        "--fit",
        nargs="?",
        const="",
        metavar="SEEDS",
        help=f"fit the scorer on these sets' tuning halves (e.g. 2026,11,13; alone: --seed's), "
        f"save it as {copy_scorer.WEIGHTS.name}",
    )
    parser.add_argument(
        "--fit-precision", type=float, default=0.995, help="tuning-half precision of the fit"
    )
    parser.add_argument(
        "--threads",
        default=str(search_threads.THREADS),
        help="compare threads of each search, e.g. 1,2: each query answered on each in turn",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the indexed gallery under DIR (one folder per seed and size): a later run "
        "of the same set loads it instead of describing and training again",
    )
    parser.add_argument(
        "--fit-framed",
        metavar="SEEDS",
        help="fit the frame alignments' weights on these sets' tuning halves (e.g. 2026,7), save",
    )
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    product_threads = search_threads.THREADS
    copies = copy_set(args.originals, args.queries, args.seed, args.non_copies)
    with tempfile.TemporaryDirectory() as tmp:
        kept = None if args.keep is None else args.keep / f"seed-{args.seed}-{args.originals}"
        store = FeatureStore(kept or Path(tmp))
        indexes, stored = indexed(copies, store, kept)
        print(f"gallery indexed in {time.perf_counter() - started:.0f}s", flush=True)
        took: dict[str, list[float]] = {stage: [] for stage in STAGES}
        queries: list[Sequence[bytes]] = []
        codes: list[list[bytes]] = []
        images = []
        for query in copies.asked:
            t0 = time.perf_counter()
            image = decode_image(query.data, max_pixels=10**8)
            queries.append(KEYPOINTS.query_vectors(image))
            images.append(image)
            codes.append(list(COPY.query_vectors(image)))
            took["describe"].append(time.perf_counter() - t0)
        scorer = CopyScorer.load()
        if args.fit is not None:
            seeds = [int(s) for s in args.fit.split(",")] if args.fit else [args.seed]
            fitted_on = (f"python -m bench.copy_verify --fit: seeds {seeds}, tuning halves, "
                         f"{args.originals} originals, precision {args.fit_precision}")  # fmt: skip
            rows, tuning = other_tuning_rows([s for s in seeds if s != args.seed], scorer, args)
            if args.seed in seeds:  # this run's set, indexed already
                verifier = CopyVerifier(indexes[KEYPOINTS.name], indexes[COPY.name], scorer)
                these_rows, these_tuning = tuning_rows(verifier, copies, queries, args.seed)
                rows, tuning = rows + these_rows, tuning + these_tuning
            scorer = replace(
                fitted(rows, tuning, args.fit_precision, fitted_on),
                framed_weights=scorer.framed_weights,
                framed_fitted_on=scorer.framed_fitted_on,
            )
            scorer.save()
            print(f"scorer fitted and saved to {copy_scorer.WEIGHTS}", flush=True)
        if args.fit_framed:
            scorer = fitted_framed(scorer, [int(s) for s in args.fit_framed.split(",")], args)
            scorer.save()
            print(f"frame alignments' weights fitted, saved to {copy_scorer.WEIGHTS}", flush=True)
        verifier = CopyVerifier(indexes[KEYPOINTS.name], indexes[COPY.name], scorer)
        depth = max(len(r) for r in copies.by_content) + 1  # a wrong one past every right one
        hashed: list[Hits] = []
        checked: list[Hits] = []
        counts = [int(c) for c in args.threads.split(",")]
        on_threads: dict[int, list[float]] = {c: [] for c in counts}
        cpu: dict[int, list[float]] = {c: [] for c in counts}  # of every thread of the process
        differ = 0  # queries whose answers depend on the thread count (none should)
        for n, (packed, code) in enumerate(zip(queries, codes, strict=True)):
            t0 = time.perf_counter()
            near = indexes[COPY.name].search(code, depth)
            took["copy alone"].append(time.perf_counter() - t0)
            answers = []
            for turn, count in enumerate(counts[n % len(counts) :] + counts[: n % len(counts)]):
                search_threads.THREADS = count  # each count first in turn
                if turn:  # afresh: every search describes its keypoints (and mirror's) itself
                    packed = KEYPOINTS.query_vectors(images[n])
                t1, c1 = time.perf_counter(), time.process_time()
                answers.append(verifier.search(packed, ASKED))
                on_threads[count].append(time.perf_counter() - t1)
                cpu[count].append(time.process_time() - c1)
            differ += any(a != answers[0] for a in answers)
            hashed.append([(h.image_id, h.distance) for h in near])
            checked.append(answers[0])
            if n % 100 == 0:
                print(f"  asked {n}/{len(queries)}", flush=True)
        for count, seconds in on_threads.items():
            took[f"verified search, {count} compare thread(s)"] = seconds
            took[f"its CPU, every thread ({count} compare)"] = cpu[count]
        search_threads.THREADS = product_threads
        store.close()
    report(copies, hashed, checked, scorer, args.precision)
    print("\nQuery time (describe: decoding the query, its copy codes and border trim; its "
          "keypoints, and its mirror's when asked, are described in the verified search and "
          "counted there; the "
          "verified search on each count of compare threads, each query on each count, each "
          "count first in turn, and the CPU it took on every thread of this process (the vote's "
          "OpenMP threads and the compare threads): what two cores must share; queries whose "
          f"answers differed: {differ}):\n")  # fmt: skip
    print("| stage | p50 ms | p90 ms |\n| --- | --- | --- |")
    for stage, seconds in took.items():
        ms = 1000 * np.array(seconds)
        print(f"| {stage} | {np.median(ms):.1f} | {np.percentile(ms, 90):.1f} |")
    print(
        f"\nstored per image {stored / 1024:.1f} KiB (copy codes; packed keypoints, grey copy and "
        f"copy codes); {len(copies.gallery):,} images; {time.perf_counter() - started:.0f}s"
    )


def report(copies: CopySet, hashed: list[Hits], checked: list[Hits], scorer: CopyScorer,
           precision: float) -> None:  # fmt: skip
    kinds = [q.kind for q in copies.asked]
    right, tune = copies.by_content, copies.tuning
    is_copy = np.array([len(r) > 0 for r in right])
    held = ~tune
    columns = sorted({kind_column(k) for k in kinds[: len(copies.queries)]})
    several = sum(len(r) > 1 for r, h in zip(right, held & is_copy, strict=True) if h)
    print(f"\n## Copy verification in process (held-out half: {int((held & is_copy).sum())} "
          f"copies, {several} of them show pixels that more than one original contains; "
          f"{int((held & ~is_copy).sum())} non-copies; {len(copies.gallery):,} "
          "originals)\n")  # fmt: skip
    by_content = "any original that contains every pixel it shows"
    correct: dict[str, dict[str, NDArray[np.bool_]]] = {}
    for title, labels in (("its own original only", copies.strict), (by_content, right)):
        print(f"Recall@1 when the right answer is {title}:\n")
        print("| method | recall@1 | " + " | ".join(columns) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
        correct[title] = {"copy": found(hashed, labels), "verified": found(checked, labels)}
        print(recall_row("copy alone", correct[title]["copy"], kinds, held & is_copy, columns))
        print(recall_row("keypoints (verified)", correct[title]["verified"], kinds,
                         held & is_copy, columns))  # fmt: skip
        print()
    print(f"Verdicts (precision target {precision}; a verdict is right when its answer contains "
          "the copy's pixels):\n")  # fmt: skip
    print(verdicts.HEADER)
    rows = (
        ("copy alone: closest code pair, bits, chosen on the tuning half", hashed, "copy", None),
        ("keypoints: distance, the shipped threshold", checked, "verified", scorer.max_distance),
        ("keypoints: distance, chosen on the tuning half", checked, "verified", None),
    )
    for name, hits, method, fixed in rows:
        nearest = np.array([h[0][1] if h else np.inf for h in hits])
        right_top = correct[by_content][method]
        print(verdicts.verdict_row(name, nearest, right_top, is_copy, tune, precision, -1, fixed))
    missed = tune & is_copy & ~correct[by_content]["verified"]
    absent = Counter(
        kind_column(kinds[n])
        for n in np.flatnonzero(missed)
        if not any(int(i) in right[n] for i, _ in checked[n])
    )
    print(f"\nTuning-half misses: {int(missed.sum())} of {int((tune & is_copy).sum())} copies, "
          f"by kind {dict(Counter(kind_column(kinds[n]) for n in np.flatnonzero(missed)))}; "
          f"no right answer among the candidates: {dict(absent)}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Recall measured against the store of record, and the search effort that keeps it.

An approximate engine's recall depends on the vectors it holds: a beam that finds nine of ten
neighbours on one collection finds five on another. So the indexer measures it where it runs:

- the queries are images the graph has never seen: the engine holds a sample of images out of
  the graph (engines/held_out.py; stored vectors searched without themselves would overstate
  recall, because a graph answers its own nodes from their neighbour lists);
- each query's exact ten nearest neighbours among the graph's images come from a scan of the
  store of record; recall@10 is the share of the graph's answers that are among them (by
  distance, so exact duplicates in the collection tie correctly);
- `choose_effort` walks the search beam (and the re-rank depth, for engines that re-rank) up
  from small until the queries' recall reaches the target, for each depth, and keeps the
  fastest effort that did; `RecallKeeper` does that when an engine is new (fitted, rebuilt,
  compacted, loaded), then measures a few queries a minute and chooses again when the recall
  of the recent ones falls below the target.

What it measures on the benchmark's data sets: BENCHMARKS.md ("CLIP recall").
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import structlog
from numpy.typing import NDArray

from index_store.engines.engine import Effort, FetchVectors, Hit
from index_store.lmdb_store import FeatureStore
from schemas.metrics import RECALL_AT_10

log = structlog.get_logger(__name__)

K = 10
EF_STEPS = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)
DEPTHS = (2, 4, 8)
SCAN_ROWS = 32_768  # store vectors per step of the exact scan
TIE = 1e-5  # a found neighbour this close to the k-th exact distance counts as right
MIN_QUERIES = 10  # held-out images needed before recall means anything


class Searchable(Protocol):
    """What recall is measured through: an index whose engine holds images out of its graph."""

    name: str

    @property
    def effort(self) -> Effort | None: ...
    @effort.setter
    def effort(self, effort: Effort) -> None: ...
    def engine_identity(self) -> object: ...
    def held_out_sample(self, n: int, rng: random.Random) -> list[tuple[str, bytes]]: ...
    def is_held_out(self, image_id: str) -> bool: ...
    def graph_nearest(self, vector: bytes, k: int) -> list[Hit]: ...


@dataclass(frozen=True, slots=True)
class Probe:
    """Query vectors (held-out images) and the exact distance of each one's k-th neighbour
    among the images the graph holds."""

    ids: list[str]
    vectors: list[bytes]
    kth: NDArray[np.float64]


def probe(
    index: Searchable, store: FeatureStore, queries: int, rng: random.Random, k: int = K
) -> Probe:
    """`queries` held-out images of `index` with their exact neighbours' distances (cosine)."""
    pairs = index.held_out_sample(queries, rng)
    ids, vectors = [i for i, _ in pairs], [v for _, v in pairs]
    if not ids:
        return Probe([], [], np.empty(0))
    query_rows = _matrix(vectors)
    best = np.full((len(ids), k), np.inf)
    chunk: list[bytes] = []

    def scan() -> None:
        dists = 1.0 - _matrix(chunk) @ query_rows.T  # (rows, queries)
        merged = np.concatenate([best, dists.T], axis=1)
        best[:] = np.sort(np.partition(merged, k - 1, axis=1)[:, :k], axis=1)

    for image_id, vector in store.vectors(index.name):
        if index.is_held_out(image_id):  # not in the graph: not an answer it can give
            continue
        chunk.append(vector)
        if len(chunk) == SCAN_ROWS:
            scan()
            chunk = []
    if chunk:
        scan()
    return Probe(ids, vectors, best[:, k - 1])


@dataclass(frozen=True, slots=True)
class Measured:
    recall: float
    p50_ms: float
    queries: int
    hits: list[int]  # right answers per query, out of K


def measure(index: Searchable, exact_vectors: FetchVectors, sample: Probe) -> Measured:
    """Search every probe query through `index`; the share of answers that are exact."""
    hits: list[int] = []
    took: list[float] = []
    for vector, kth in zip(sample.vectors, sample.kth, strict=True):
        started = time.perf_counter()
        found = index.graph_nearest(vector, K)
        took.append(time.perf_counter() - started)
        hits.append(_right(vector, [i for i, _ in found], exact_vectors, float(kth)))
    wanted = K * len(sample.ids)
    return Measured(
        recall=sum(hits) / wanted if wanted else 1.0,
        p50_ms=1000 * statistics.median(took) if took else 0.0,
        queries=len(sample.ids),
        hits=hits,
    )


def choose_effort(
    index: Searchable, exact_vectors: FetchVectors, sample: Probe, target: float
) -> tuple[Effort, Measured] | None:
    """The fastest effort whose recall on `sample` reaches `target` (the most effort tried
    when none does); applied to `index`. None for an exact engine."""
    current = index.effort
    if current is None:
        return None
    depths = DEPTHS if current.depth > 1 else (current.depth,)
    reached: list[tuple[float, Effort, Measured]] = []
    last: tuple[Effort, Measured] | None = None
    for depth in depths:
        for ef in EF_STEPS:
            effort = Effort(ef, depth)
            index.effort = effort
            measured = measure(index, exact_vectors, sample)
            last = (effort, measured)
            if measured.recall >= target:
                reached.append((measured.p50_ms, effort, measured))
                break
    if reached:
        _, effort, measured = min(reached, key=lambda r: r[0])
    else:
        assert last is not None
        effort, measured = last
        log.warning("index.recall_target_unreached", index=index.name, target=target)
    index.effort = effort
    return effort, measured


@dataclass(frozen=True, slots=True)
class RecallReport:
    index: str
    recall: float  # over the recent probe queries
    queries: int
    effort: Effort


class RecallKeeper:
    """Keeps one index's recall@10 at `target`: chooses the effort (for `target + margin`, so
    that sampling noise does not make it choose again at once) when the engine is new, then
    measures `check_queries` queries per `check()` and chooses again when the recall of the
    last `window` queries falls below the target."""

    def __init__(
        self,
        index: Searchable,
        store: FeatureStore,
        *,
        target: float = 0.95,
        margin: float = 0.01,
        check_queries: int = 10,
        tune_queries: int = 100,
        window: int = 100,
        seed: int = 0,
    ) -> None:
        self.index = index
        self.store = store
        self.target = target
        self.margin = margin
        self.check_queries = check_queries
        self.tune_queries = tune_queries
        self._recent: deque[int] = deque(maxlen=window)
        self._rng = random.Random(seed)
        self._tuned_for: object = None
        self._one_at_a_time = threading.Lock()
        self.last: RecallReport | None = None

    def _exact_vectors(self, ids: Sequence[str]) -> list[bytes | None]:
        return self.store.vectors_of(self.index.name, ids)

    def check(self) -> RecallReport | None:
        """Measure (choosing the effort first if the engine is new); None when exact."""
        with self._one_at_a_time:
            if self.index.effort is None:
                return None  # exact: nothing to measure
            if self.index.engine_identity() != self._tuned_for:
                if not self._tune("new engine"):
                    return None  # too few held-out images yet
            else:
                sample = probe(self.index, self.store, self.check_queries, self._rng)
                self._recent.extend(measure(self.index, self._exact_vectors, sample).hits)
                if len(self._recent) >= 3 * self.check_queries and self._recall() < self.target:
                    self._tune(f"recall {self._recall():.3f} below {self.target}")
            effort = self.index.effort
            assert effort is not None
            self.last = RecallReport(self.index.name, self._recall(), len(self._recent), effort)
            RECALL_AT_10.labels(index=self.index.name).set(self.last.recall)
            log.info(
                "index.recall",
                index=self.index.name,
                recall_at_10=round(self.last.recall, 4),
                queries=self.last.queries,
                ef=effort.ef,
                rerank_depth=effort.depth,
            )
            return self.last

    def _tune(self, why: str) -> bool:
        """Choose the effort; False when there are too few held-out images to measure."""
        identity = self.index.engine_identity()
        sample = probe(self.index, self.store, self.tune_queries, self._rng)
        if len(sample.ids) < MIN_QUERIES:
            return False
        chosen = choose_effort(self.index, self._exact_vectors, sample, self.target + self.margin)
        self._tuned_for = identity
        if chosen is None:
            return False
        effort, measured = chosen
        self._recent.clear()
        self._recent.extend(measured.hits)
        log.info(
            "index.effort_chosen",
            index=self.index.name,
            why=why,
            ef=effort.ef,
            rerank_depth=effort.depth,
            recall_at_10=round(measured.recall, 4),
            p50_ms=round(measured.p50_ms, 3),
            queries=measured.queries,
        )
        return True

    def _recall(self) -> float:
        return sum(self._recent) / (K * len(self._recent)) if self._recent else 1.0


def _right(query: bytes, found: list[str], exact_vectors: FetchVectors, kth: float) -> int:
    """How many of `found` are at most the k-th exact distance from `query`."""
    if not found:
        return 0
    vectors = exact_vectors(found)
    present = [v for v in vectors if v is not None]
    if not present:
        return 0
    dists = 1.0 - _matrix(present) @ _matrix([query])[0]
    return int((dists <= kth + TIE).sum())


def _matrix(vectors: Sequence[bytes]) -> NDArray[np.float32]:
    return np.frombuffer(b"".join(vectors), dtype=np.float32).reshape(len(vectors), -1)

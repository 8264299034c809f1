"""One feature's index: the LMDB store of record plus the in-memory search structure.

Writes go to LMDB first (with the offsets they cover), then to memory, so memory is always
rebuildable from disk. Applying the same change twice changes nothing (idempotent), which
is what makes at-least-once delivery safe.

Checkpoint, in order: (1) each batch's changes and offsets are committed to LMDB together,
numbered by the store's change counter; (2) `checkpoint()` writes the in-memory structure as
a snapshot tagged with the change number it covers (atomically, see snapshots.py); (3) the
store's change log up to that number is dropped. A restart loads the newest snapshot and
replays only the store's changes after it, then resumes Kafka at the stored offsets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

import numpy as np
import structlog

from index_store.ann_index import DEFAULT_KIND, FetchExact, make_ann_index
from index_store.exact_vector_index import ExactVectorIndex
from index_store.hamming_index import HammingIndex
from index_store.lmdb_store import Change, FeatureStore, ImageRecord, Reject, Upsert
from index_store.metric import Metric
from index_store.snapshots import latest, write

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Neighbour:
    image_id: str
    distance: float
    record: ImageRecord | None


class SearchStructure(Protocol):
    """What an in-memory index offers; vectors travel as the bytes the store keeps."""

    def __len__(self) -> int: ...
    def upsert(self, image_id: str, vector: bytes) -> None: ...
    def remove(self, image_id: str) -> bool: ...
    def code_of(self, image_id: str) -> bytes | None: ...
    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> Sequence[tuple[str, float]]: ...
    def save(self, directory: Path) -> None: ...
    @property
    def needs_compaction(self) -> bool:
        """Removed or replaced vectors left enough dead entries that a rebuild pays."""
        ...

    def search_like(self, configured: Self) -> None:
        """Take `configured`'s search-time settings (beam width, re-rank depth, compaction
        policy): a snapshot brings the data, the configuration says how to search it."""
        ...

    @property
    def layout(self) -> dict[str, object]:
        """What a snapshot's data means (engine, dimensions, projection): a snapshot of
        another layout cannot serve this configuration."""
        ...

    @classmethod
    def load(cls, directory: Path) -> Self: ...
    @classmethod
    def empty_like(cls, other: Self) -> Self: ...


def make_structure(
    metric: Metric,
    dim: int,
    codes_per_item: int = 1,
    vector_index: str = DEFAULT_KIND,
    fetch_exact: FetchExact | None = None,
    reduce_dim: int = 0,
) -> SearchStructure:
    """dim: bits for Hamming (all codes of an item), floats otherwise.

    Cosine vectors get the approximate engine `vector_index` (see ann_index.py), re-ranked
    with exact vectors from `fetch_exact` (the store of record) where the engine quantises;
    faiss graphs hold `reduce_dim`-d PCA projections when 0 < reduce_dim < dim (and the store
    re-ranks). Other float metrics (L1 colour histograms) are searched exactly.
    """
    if metric is Metric.HAMMING:
        return HammingIndex(dim // 8 // codes_per_item, codes_per_item=codes_per_item)
    if metric is Metric.COSINE:
        if vector_index.startswith("faiss-"):
            # Never compact inside an upsert (that would hold searches for the whole graph
            # rebuild): FeatureIndex.compact_if_needed rebuilds off the lock and swaps.
            reduce = 0 < reduce_dim < dim and fetch_exact is not None
            return make_ann_index(
                vector_index,
                dim,
                metric,
                fetch_exact=fetch_exact,
                compact_in_writes=False,
                reduce_to=reduce_dim if reduce else None,
            )
        return make_ann_index(vector_index, dim, metric, fetch_exact=fetch_exact)
    return ExactVectorIndex(dim, metric)


class FeatureIndex:
    def __init__(
        self,
        store: FeatureStore,
        name: str,
        structure: SearchStructure,
        snapshot_dir: Path | None = None,
    ) -> None:
        self.name = name
        self._store = store
        self._index = structure
        self._snapshot_dir = snapshot_dir
        # Searches run in worker threads while batches are applied: one lock keeps them apart.
        self._lock = threading.Lock()
        self._applied_seq = 0  # store change number that memory reflects
        self._checkpointed_seq = -1
        self._rebuild_from: int | None = None
        self._one_rebuild = threading.Lock()  # an operator's rebuild and a compaction

    def __len__(self) -> int:
        return len(self._index)

    @property
    def structure(self) -> SearchStructure:
        """The in-memory structure serving searches now (a rebuild swaps in a new one)."""
        return self._index

    def load(self) -> int:
        """From the newest snapshot plus the changes after it, or else from the whole store."""
        snapshot = latest(self._snapshot_dir) if self._snapshot_dir else None
        with self._lock:
            loaded = self._load_snapshot(snapshot.path) if snapshot is not None else None
            if snapshot is not None and loaded is not None:
                self._index = loaded
                changed = self._catch_up(loaded, snapshot.seq)
                self._checkpointed_seq = snapshot.seq
                source = f"snapshot {snapshot.seq} + {changed} later changes"
            else:
                self._index = type(self._index).empty_like(self._index)
                _fill(self._index, self._store.vectors(self.name))
                source = "store"
            self._applied_seq = self._store.seq(self.name)
        log.info("index.loaded", index=self.name, images=len(self._index), source=source)
        return len(self._index)

    def _load_snapshot(self, path: Path) -> SearchStructure | None:
        """None when the snapshot was written by another engine, layout or format (the
        configuration changed, or an older version wrote it): the store rebuilds it instead."""
        try:
            loaded = type(self._index).load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("index.snapshot_unusable", index=self.name, path=str(path), error=str(exc))
            return None
        if loaded.layout != self._index.layout:
            log.warning(
                "index.snapshot_unusable",
                index=self.name,
                path=str(path),
                error=f"snapshot layout {loaded.layout}, configured {self._index.layout}",
            )
            return None
        loaded.search_like(self._index)
        return loaded

    def checkpoint(self) -> bool:
        """Snapshot the in-memory structure if it changed since the last one."""
        if self._snapshot_dir is None:
            return False
        with self._lock:
            seq = self._applied_seq
            if seq == self._checkpointed_seq:
                return False
            write(
                self._snapshot_dir, seq, self._index.save, {"index": self.name, "count": len(self)}
            )
            self._checkpointed_seq = seq
        keep_from = self._rebuild_from
        self._store.forget_changes(self.name, seq if keep_from is None else min(seq, keep_from))
        log.info("index.checkpointed", index=self.name, seq=seq, images=len(self))
        return True

    def apply(self, changes: Sequence[Change], offsets: dict[str, int]) -> list[Upsert]:
        """Persist then index `changes`; returns the upserts that changed something."""
        effective: list[Change] = []
        for change in _last_per_image(changes):
            current = self._store.record(self.name, change.image_id)
            if isinstance(change, Upsert):
                if (
                    current is not None
                    and current.etag == change.record.etag
                    and (self._store.vector(self.name, change.image_id) == change.vector)
                ):
                    continue  # replayed message: already indexed
            elif isinstance(change, Reject):
                if current is None and self._store.rejection(self.name, change.image_id) == (
                    change.etag or ""
                ):
                    continue  # replayed rejection
            elif current is None and self._store.rejection(self.name, change.image_id) is None:
                continue  # delete of something never indexed
            effective.append(change)
        seq = self._store.apply(self.name, effective, offsets)
        with self._lock:
            for change in effective:
                if isinstance(change, Upsert):
                    self._index.upsert(change.image_id, change.vector)
                else:
                    self._index.remove(change.image_id)
            self._applied_seq = seq
        return [c for c in effective if isinstance(c, Upsert)]

    def rebuild(
        self,
        vectors: Iterable[tuple[str, bytes]],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Build a fresh structure from `vectors` while searches use the old one, then swap.

        Changes applied meanwhile are in the store's change log: replayed into the new
        structure under the lock, just before the swap, so nothing is lost.
        """
        with self._one_rebuild:
            return self._rebuild(vectors, progress)

    def _rebuild(
        self,
        vectors: Iterable[tuple[str, bytes]],
        progress: Callable[[int], None] | None,
    ) -> int:
        started_at = self._store.seq(self.name)
        self._rebuild_from = started_at  # checkpoints keep the change log from here on
        fresh = type(self._index).empty_like(self._index)
        try:
            _fill(fresh, vectors, progress)
            with self._lock:
                self._catch_up(fresh, started_at)
                self._index = fresh
                self._checkpointed_seq = -1  # the next checkpoint writes the new structure
        finally:
            self._rebuild_from = None
        log.info("index.rebuilt", index=self.name, images=len(fresh))
        return len(fresh)

    def _catch_up(self, structure: SearchStructure, seq: int) -> int:
        """Apply the store's changes after change number `seq` to `structure`; how many."""
        changed = list(self._store.changed_since(self.name, seq))
        for image_id, vector in zip(
            changed, self._store.vectors_of(self.name, changed), strict=True
        ):
            if vector is None:
                structure.remove(image_id)
            else:
                structure.upsert(image_id, vector)
        return len(changed)

    def compact_if_needed(self) -> bool:
        """Rebuild from the store once the engine says removed or replaced vectors left too
        many dead entries (faiss HNSW cannot delete in place); searches go on meanwhile."""
        if not self._index.needs_compaction:
            return False
        log.info("index.compacting", index=self.name, images=len(self))
        self.rebuild(self._store.vectors(self.name))
        return True

    def code_of(self, image_id: str) -> bytes | None:
        with self._lock:
            return self._index.code_of(image_id)

    def record(self, image_id: str) -> ImageRecord | None:
        return self._store.record(self.name, image_id)

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Neighbour]:
        with self._lock:
            found = self._index.search(queries, k, max_distance, exclude)
        return [Neighbour(i, float(d), self._store.record(self.name, i)) for i, d in found]


def _last_per_image(changes: Sequence[Change]) -> list[Change]:
    """Within one batch only the last change per image matters (Kafka keeps per-key order)."""
    last: dict[str, Change] = {}
    for change in changes:
        last.pop(change.image_id, None)
        last[change.image_id] = change
    return list(last.values())


def _fill(
    index: SearchStructure,
    vectors: Iterable[tuple[str, bytes]],
    progress: Callable[[int], None] | None = None,
    chunk: int = 10_000,
) -> None:
    """Insert many vectors, in bulk where the engine can (graph inserts on all cores)."""
    bulk = getattr(index, "upsert_many", None)
    ids: list[str] = []
    rows: list[bytes] = []
    done = 0

    def flush() -> None:
        nonlocal done, ids, rows
        if bulk is None:
            for image_id, vector in zip(ids, rows, strict=True):
                index.upsert(image_id, vector)
        else:
            bulk(ids, np.frombuffer(b"".join(rows), np.float32).reshape(len(ids), -1))
        done += len(ids)
        ids, rows = [], []
        if progress is not None:
            progress(done)

    for image_id, vector in vectors:
        ids.append(image_id)
        rows.append(vector)
        if len(ids) == chunk:
            flush()
    if ids:
        flush()

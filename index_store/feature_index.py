"""One feature's index: the LMDB store of record plus the in-memory engine that searches it.

Writes go to LMDB first (with the offsets they cover), then to memory, so memory is always
rebuildable from disk. The store decides which changes take effect (`FeatureStore.apply`:
applying the same change twice changes nothing, which makes at-least-once delivery safe); the
engine mirrors only those.

Checkpoint, in order: (1) each batch's changes and offsets are committed to LMDB together,
numbered by the store's change counter; (2) `checkpoint()` writes the engine as a snapshot
tagged with the change number it covers and the engine's snapshot format (atomically, see
snapshots.py); (3) the store's change log up to that number is dropped. A restart loads the
newest snapshot in the configured engine's format, replays only the store's changes after it,
then resumes Kafka at the stored offsets; a snapshot it cannot use (another engine or format)
is ignored and the engine is filled from the store instead.
"""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

from index_store.engines.engine import Effort, Engine, Hit
from index_store.engines.held_out import HoldOut
from index_store.lmdb_store import Change, FeatureStore, ImageRecord, Upsert
from index_store.snapshots import Snapshot, latest, write

log = structlog.get_logger(__name__)

T = TypeVar("T")

FILL_CHUNK = 10_000  # vectors per bulk upsert when filling an engine from the store


@dataclass(frozen=True, slots=True)
class Neighbour:
    image_id: str
    distance: float
    record: ImageRecord | None


class FeatureIndex:
    def __init__(
        self,
        store: FeatureStore,
        name: str,
        engine: Engine,
        snapshot_dir: Path | None = None,
    ) -> None:
        """`engine`: empty, configured as this index should search (engines/factory.py)."""
        self.name = name
        self._store = store
        self._engine = engine
        self._snapshot_dir = snapshot_dir
        # Searches run in worker threads while batches are applied: one lock keeps them apart.
        self._lock = threading.Lock()
        self._applied_seq = 0  # store change number that memory reflects
        self._checkpointed_seq = -1
        self._rebuild_from: int | None = None
        self._one_rebuild = threading.Lock()  # an operator's rebuild and a compaction
        self._engine_is_stale = False  # the store's content was replaced under the engine

    def __len__(self) -> int:
        return len(self._engine)

    @property
    def engine(self) -> Engine:
        """The engine serving searches now (a rebuild swaps in a new one)."""
        return self._engine

    def load(self) -> int:
        """From the newest snapshot plus the changes after it, or else from the whole store."""
        snapshot = latest(self._snapshot_dir) if self._snapshot_dir else None
        with self._lock:
            loaded = self._load_snapshot(snapshot) if snapshot is not None else None
            if snapshot is not None and loaded is not None:
                self._engine = loaded
                changed = self._catch_up(loaded, snapshot.seq)
                self._checkpointed_seq = snapshot.seq
                source = f"snapshot {snapshot.seq} + {changed} later changes"
            else:
                self._engine = self._engine.empty()
                _fill(self._engine, self._store.vectors(self.name))
                source = "store"
            self._applied_seq = self._store.seq(self.name)
        log.info("index.loaded", index=self.name, images=len(self._engine), source=source)
        return len(self._engine)

    def _load_snapshot(self, snapshot: Snapshot) -> Engine | None:
        """None when the snapshot was written by another engine or in another format (the
        configuration changed, or an older version wrote it): the store fills the engine."""
        written, configured = snapshot.manifest.get("format"), self._engine.snapshot_format
        try:
            if written != configured:
                raise ValueError(f"snapshot format {written}, configured {configured}")
            return self._engine.restored(snapshot.path)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            log.warning(
                "index.snapshot_unusable", index=self.name, path=str(snapshot.path), error=str(exc)
            )
            return None

    def checkpoint(self) -> bool:
        """Snapshot the engine if it changed since the last snapshot."""
        if self._snapshot_dir is None or self._engine_is_stale:
            return False
        with self._lock:
            seq = self._applied_seq
            if seq == self._checkpointed_seq:
                return False
            engine_format = self._engine.snapshot_format
            manifest = {"index": self.name, "count": len(self), "format": engine_format}
            write(self._snapshot_dir, seq, self._engine.save, manifest)
            self._checkpointed_seq = seq
        keep_from = self._rebuild_from
        self._store.forget_changes(self.name, seq if keep_from is None else min(seq, keep_from))
        log.info("index.checkpointed", index=self.name, seq=seq, images=len(self))
        return True

    def apply(self, changes: Sequence[Change], offsets: dict[str, int]) -> list[Upsert]:
        """Persist then index `changes`; returns the upserts that changed something."""
        applied = self._store.apply(self.name, changes, offsets)
        with self._lock:
            for change in applied.changes:
                if isinstance(change, Upsert):
                    self._engine.upsert(change.image_id, change.vector)
                else:
                    self._engine.remove(change.image_id)
            self._applied_seq = applied.seq
        return [c for c in applied.changes if isinstance(c, Upsert)]

    def rebuild(
        self,
        vectors: Iterable[tuple[str, bytes]],
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Build a fresh engine from `vectors` while searches use the old one, then swap.

        Changes applied meanwhile are in the store's change log: replayed into the new
        engine under the lock, just before the swap, so nothing is lost.
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
        fresh = self._engine.empty()
        try:
            _fill(fresh, vectors, progress)
            with self._lock:
                self._catch_up(fresh, started_at)
                self._engine = fresh
                self._checkpointed_seq = -1  # the next checkpoint writes the new engine
        finally:
            self._rebuild_from = None
        log.info("index.rebuilt", index=self.name, images=len(fresh))
        return len(fresh)

    def invalidate_snapshots(self) -> None:
        """The store's content is about to be replaced (a rebuild from the topic): snapshots
        of the engine no longer describe it. Until `reload_from_store`, none is written, and
        a restart fills the engine from the store."""
        self._engine_is_stale = True
        if self._snapshot_dir is not None:
            shutil.rmtree(self._snapshot_dir, ignore_errors=True)

    def reload_from_store(self, progress: Callable[[int], None] | None = None) -> int:
        """After the store's content was replaced: a fresh engine from it, swapped in."""
        try:
            return self.rebuild(self._store.vectors(self.name), progress)
        finally:
            self._engine_is_stale = False

    def _catch_up(self, engine: Engine, seq: int) -> int:
        """Apply the store's changes after change number `seq` to `engine`; how many."""
        changed = list(self._store.changed_since(self.name, seq))
        for image_id, vector in zip(
            changed, self._store.vectors_of(self.name, changed), strict=True
        ):
            if vector is None:
                engine.remove(image_id)
            else:
                engine.upsert(image_id, vector)
        return len(changed)

    def compact_if_needed(self) -> bool:
        """Rebuild from the store once the engine says removed or replaced vectors left too
        many dead slots (faiss HNSW cannot delete in place); searches go on meanwhile."""
        if not self._engine.needs_compaction:
            return False
        log.info("index.compacting", index=self.name, images=len(self))
        self.rebuild(self._store.vectors(self.name))
        return True

    @property
    def effort(self) -> Effort | None:
        """How hard the engine searches (recall.py chooses it); None when it is exact."""
        with self._lock:
            return self._engine.effort

    @effort.setter
    def effort(self, effort: Effort) -> None:
        with self._lock:
            self._engine.effort = effort

    def engine_identity(self) -> object:
        """Changes when the engine serving is another one, or starts approximating (trained)."""
        with self._lock:
            return (id(self._engine), self._engine.effort is None)

    def held_out_sample(self, n: int, rng: random.Random) -> list[tuple[str, bytes]]:
        """Up to `n` images the engine holds out of its graph (engines/held_out.py)."""
        with self._lock:
            engine = self._engine
            return engine.sample(n, rng) if isinstance(engine, HoldOut) else []

    def is_held_out(self, image_id: str) -> bool:
        engine = self._engine
        return isinstance(engine, HoldOut) and engine.is_held_out(image_id)

    def graph_nearest(self, vector: bytes, k: int) -> list[Hit]:
        """The graph's own k nearest (without the held-out images): what recall measures."""
        with self._lock:
            engine = self._engine
            if isinstance(engine, HoldOut):
                return engine.graph_search(vector, k)
            return engine.search([vector], k)

    def consult(self, ask: Callable[[Engine], T]) -> T:
        """Ask the engine serving now something beyond a search (e.g. a vote index's votes),
        under the lock that keeps it apart from changes."""
        with self._lock:
            return ask(self._engine)

    def vector_of(self, image_id: str) -> bytes | None:
        with self._lock:
            return self._engine.vector_of(image_id)

    def record(self, image_id: str) -> ImageRecord | None:
        return self._store.record(self.name, image_id)

    def records_of(self, image_ids: Sequence[str]) -> list[ImageRecord | None]:
        return self._store.records_of(self.name, image_ids)

    def vectors_of(self, image_ids: Sequence[str]) -> list[bytes | None]:
        """The exact stored vectors (the store of record's, not the engine's)."""
        return self._store.vectors_of(self.name, image_ids)

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Neighbour]:
        with self._lock:
            found = self._engine.search(queries, k, max_distance, exclude)
        records = self._store.records_of(self.name, [image_id for image_id, _ in found])
        return [
            Neighbour(image_id, distance, record)
            for (image_id, distance), record in zip(found, records, strict=True)
        ]


def _fill(
    engine: Engine,
    vectors: Iterable[tuple[str, bytes]],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Insert many vectors (distinct ids, as the store holds them) in bulk, then tell the
    engine the fill is over (Engine.filled)."""
    ids: list[str] = []
    rows: list[bytes] = []
    done = 0
    for image_id, vector in vectors:
        ids.append(image_id)
        rows.append(vector)
        if len(ids) == FILL_CHUNK:
            engine.upsert_many(ids, b"".join(rows))
            done += len(ids)
            ids, rows = [], []
            if progress is not None:
                progress(done)
    if ids:
        engine.upsert_many(ids, b"".join(rows))
        done += len(ids)
        if progress is not None:
            progress(done)
    engine.filled()

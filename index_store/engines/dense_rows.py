"""What the exact engines share: one numpy row per image, slots reused, a chunked scan.

A subclass says how bytes become a row (`_row`), how a search's queries split into parts
(`_query_parts`), and how far a run of rows is from them (`_scanner`); this class keeps the
rows, grows them, ranks (nearest_pool.py) and saves. A slot freed by a delete is handed to
the next insert, so churn does not grow memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from index_store.engines.engine import Effort, Hit, Vectors, ranked, rows_of
from index_store.engines.nearest_pool import NearestPool
from index_store.engines.slots import SlotEngine, SlotMap

# Distances of rows [lo, hi) to the nearest of a search's query parts; the array may be a
# scratch buffer that the next call overwrites.
Scanner = Callable[[int, int], NDArray[Any]]

ROWS_FILE = "rows.npy"


class DenseRowEngine(SlotEngine):
    def __init__(
        self, width: int, dtype: type[np.generic], *, scan_rows: int, capacity: int = 1024
    ) -> None:
        """`scan_rows`: rows per scan step (a chunk's distances should stay in cache)."""
        self.scan_rows = scan_rows
        self._rows: NDArray[Any] = np.zeros((max(capacity, 1), width), dtype=dtype)
        self._live = np.zeros(max(capacity, 1), dtype=bool)
        self._slots = SlotMap(reuse=True)

    # --- what a subclass provides ----------------------------------------------------------
    def _row(self, vector: bytes) -> NDArray[Any]:
        raise NotImplementedError

    def _scanner(self, parts: list[bytes]) -> Scanner:
        raise NotImplementedError

    def _query_parts(self, queries: Sequence[bytes]) -> list[bytes]:
        return list(queries)

    @property
    def snapshot_format(self) -> dict[str, object]:
        raise NotImplementedError

    def empty(self) -> Self:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    @property
    def exact_distances(self) -> bool:
        return True

    @property
    def needs_compaction(self) -> bool:
        return False  # freed slots are reused in place

    @property
    def effort(self) -> Effort | None:
        return None  # exact: every search scans every row

    @effort.setter
    def effort(self, effort: Effort) -> None:
        pass

    def upsert(self, image_id: str, vector: bytes) -> None:
        self._put(image_id, self._row(vector))

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        rows = rows_of(vectors, len(image_ids), self._rows.shape[1], self._rows.dtype.type)
        for image_id, row in zip(image_ids, rows, strict=True):
            self._put(image_id, row)

    def _put(self, image_id: str, row: NDArray[Any]) -> None:
        slot = self._slots.slot_of(image_id)
        if slot is None:
            slot = self._slots.add(image_id)
            self._grow_to(slot + 1)
            self._live[slot] = True
        self._rows[slot] = row

    def _vacate(self, slot: int) -> None:
        self._live[slot] = False

    def vector_of(self, image_id: str) -> bytes | None:
        slot = self._slots.slot_of(image_id)
        return None if slot is None else self._rows[slot].tobytes()

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        n = self._slots.size
        parts = self._query_parts(queries)
        if n == 0 or not parts or k < 1:
            return []
        scan = self._scanner(parts)
        excluded = np.array(
            [s for s in map(self._slots.slot_of, exclude) if s is not None], dtype=np.intp
        )
        pool = NearestPool(k, max_distance)
        for lo in range(0, n, self.scan_rows):
            hi = min(n, lo + self.scan_rows)
            pool.offer(scan(lo, hi), lo, self._live[lo:hi], excluded)
        # Everything as close as the k-th best, then ties broken by id.
        slots, dists = pool.nearest()
        ids = self._slots.ids_at(slots.tolist())
        hits = [(i, d) for i, d in zip(ids, dists.tolist(), strict=True) if i is not None]
        return ranked(hits, k, max_distance)

    def live_rows(self) -> tuple[list[str], NDArray[Any]]:
        """Ids and rows of every live image, by slot."""
        live = list(self._slots.live())
        rows = self._rows[np.array([slot for slot, _ in live], dtype=np.intp)]
        return [image_id for _, image_id in live], rows

    def save(self, directory: Path) -> None:
        """Live rows and their ids (compacted: free slots are not saved)."""
        ids, rows = self.live_rows()
        np.save(directory / ROWS_FILE, rows)
        SlotMap.of(ids, reuse=True).save(directory)

    def restored(self, directory: Path) -> Self:
        engine = self.empty()
        engine._slots = SlotMap.load(directory, reuse=True)
        rows = np.load(directory / ROWS_FILE)
        n = engine._slots.size
        if rows.shape != (n, engine._rows.shape[1]) or engine._slots.dead:
            raise ValueError(f"{directory}: {rows.shape} rows for {n} ids")
        engine._grow_to(n)
        engine._rows[:n] = rows
        engine._live[:n] = True
        return engine

    def _grow_to(self, rows: int) -> None:
        capacity = len(self._live)
        if rows <= capacity:
            return
        capacity = max(rows, 2 * capacity)
        grown = np.zeros((capacity, self._rows.shape[1]), dtype=self._rows.dtype)
        grown[: len(self._rows)] = self._rows
        live = np.zeros(capacity, dtype=bool)
        live[: len(self._live)] = self._live
        self._rows, self._live = grown, live

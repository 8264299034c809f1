"""The part every exact in-memory index shares: one numpy row per image, slots reused.

A subclass says how bytes become a row (`_row`), and how far a run of rows is from a query
(`_scanner`); this class keeps ids and slots, grows the matrix, ranks and saves. A slot
freed by a delete is handed to the next insert, so churn does not grow memory.

A search scans rows [0, used) a chunk at a time and keeps only what can still make the top k
(`_NearestPool`): writing millions of distances out and selecting afterwards cost as much as
computing them, while a chunk's distances stay in cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

# Distances of rows [lo, hi) to the nearest of a search's query parts; the array may be a
# scratch buffer that the next call overwrites.
Scanner = Callable[[int, int], NDArray[Any]]


class DenseRowIndex:
    # Rows per scan step; a subclass whose rows hold several codes takes fewer.
    _scan_rows = 1 << 18

    def __init__(self, width: int, dtype: type[np.generic], capacity: int = 1024) -> None:
        self._rows: NDArray[Any] = np.zeros((capacity, width), dtype=dtype)
        self._live = np.zeros(capacity, dtype=bool)
        self._ids: list[str | None] = [None] * capacity
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0  # slots ever handed out: [0, _used) is the searched range

    # --- what a subclass provides ----------------------------------------------------------
    def _row(self, vector: bytes) -> NDArray[Any]:
        raise NotImplementedError

    def _scanner(self, parts: list[bytes]) -> Scanner:
        raise NotImplementedError

    def _query_parts(self, queries: Sequence[bytes]) -> list[bytes]:
        return list(queries)

    def _params(self) -> dict[str, Any]:
        """Constructor arguments, saved with a snapshot."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    @property
    def layout(self) -> dict[str, object]:
        return {"engine": type(self).__name__, **self._params()}

    @property
    def needs_compaction(self) -> bool:
        return False  # freed slots are reused in place

    def search_like(self, configured: Self) -> None:
        """Nothing to take: an exact scan has no search-time settings."""

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._slot_of

    def upsert(self, image_id: str, vector: bytes) -> None:
        row = self._row(vector)
        slot = self._slot_of.get(image_id)
        if slot is None:
            slot = self._take_slot()
            self._slot_of[image_id] = slot
            self._ids[slot] = image_id
            self._live[slot] = True
        self._rows[slot] = row

    def remove(self, image_id: str) -> bool:
        slot = self._slot_of.pop(image_id, None)
        if slot is None:
            return False
        self._live[slot] = False
        self._ids[slot] = None
        self._free.append(slot)
        return True

    def code_of(self, image_id: str) -> bytes | None:
        slot = self._slot_of.get(image_id)
        return None if slot is None else self._rows[slot].tobytes()

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """Top-k (id, distance) by the smallest distance to any of `queries`."""
        n = self._used
        parts = self._query_parts(queries)
        if n == 0 or not parts or k < 1:
            return []
        scan = self._scanner(parts)
        excluded = np.array([s for s in map(self._slot_of.get, exclude) if s is not None], np.intp)
        pool = _NearestPool(k, max_distance)
        for lo in range(0, n, self._scan_rows):
            hi = min(n, lo + self._scan_rows)
            pool.offer(scan(lo, hi), lo, self._live[lo:hi], excluded)
        # Everything as close as the k-th best, then ties broken by id: the same content
        # gives the same answer whatever order it was loaded in.
        slots, dists = pool.nearest()
        ranked = sorted(zip(dists.tolist(), (self._ids[s] for s in slots.tolist()), strict=True))
        return [(i, float(d)) for d, i in ranked[:k] if i is not None]

    def save(self, directory: Path) -> None:
        """Live rows and their ids (compacted: free slots are not saved)."""
        ids = [i for i in self._ids[: self._used] if i is not None]
        np.save(directory / "rows.npy", self._rows[: self._used][self._live[: self._used]])
        (directory / "ids.json").write_text(json.dumps({"params": self._params(), "ids": ids}))

    @classmethod
    def load(cls, directory: Path) -> Self:
        doc = json.loads((directory / "ids.json").read_text())
        rows = np.load(directory / "rows.npy")
        ids: list[str] = doc["ids"]
        index = cls(**doc["params"], capacity=max(1024, len(ids)))
        n = len(ids)
        index._rows[:n] = rows
        index._live[:n] = True
        index._ids[:n] = ids
        index._slot_of = {image_id: slot for slot, image_id in enumerate(ids)}
        index._used = n
        return index

    @classmethod
    def empty_like(cls, other: Self) -> Self:
        return cls(**other._params())

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self._ids):
            cap = len(self._ids) * 2
            rows = np.zeros((cap, self._rows.shape[1]), dtype=self._rows.dtype)
            rows[: self._used] = self._rows[: self._used]
            live = np.zeros(cap, dtype=bool)
            live[: self._used] = self._live[: self._used]
            self._rows, self._live = rows, live
            self._ids.extend([None] * (cap - len(self._ids)))
        slot = self._used
        self._used += 1
        return slot


class _NearestPool:
    """The rows that can still be among the k nearest, fed one scanned chunk at a time.

    It keeps every live, not excluded row at or under `bound`: the k-th smallest distance seen
    so far (ties included), capped by `max_distance`. After the first k rows, a chunk yields
    only the few rows that beat or tie the bound, so almost all the work is the scan itself.
    """

    def __init__(self, k: int, max_distance: float | None) -> None:
        self.k = k
        self.cap = max_distance
        self.bound: float | None = max_distance  # None: fewer than k rows seen, take all
        self._slots: list[NDArray[np.intp]] = []
        self._dists: list[NDArray[Any]] = []
        self._size = 0

    def offer(
        self,
        dist: NDArray[Any],
        first_slot: int,
        live: NDArray[np.bool_],
        excluded: NDArray[np.intp],
    ) -> None:
        if self.bound is None:
            rows = np.flatnonzero(live)
        else:
            rows = np.flatnonzero(dist <= self.bound)
            rows = rows[live[rows]]
        if rows.size == 0:
            return
        slots = rows + first_slot
        if excluded.size:
            wanted = ~np.isin(slots, excluded)
            rows, slots = rows[wanted], slots[wanted]
        self._slots.append(slots)
        self._dists.append(dist[rows])
        self._size += rows.size
        # Tighten once k rows are known, then whenever the pool has grown well past k.
        if self._size >= self.k and (self.bound is None or self._size > 4 * self.k + 64):
            self._shrink()

    def _shrink(self) -> None:
        slots, dists = np.concatenate(self._slots), np.concatenate(self._dists)
        if dists.size >= self.k:
            kth = float(np.partition(dists, self.k - 1)[self.k - 1])
            self.bound = kth if self.cap is None else min(kth, self.cap)
        if self.bound is not None:
            near = dists <= self.bound
            slots, dists = slots[near], dists[near]
        self._slots, self._dists, self._size = [slots], [dists], slots.size

    def nearest(self) -> tuple[NDArray[np.intp], NDArray[Any]]:
        """Slots at or under the k-th smallest distance (ties included), and their distances."""
        if not self._slots:
            return np.empty(0, np.intp), np.empty(0)
        self._shrink()
        return self._slots[0], self._dists[0]

"""The part every exact in-memory index shares: one numpy row per image, slots reused.

A subclass says how bytes become a row (`_row`), and how far every row is from one query
(`_distances`); this class keeps ids and slots, grows the matrix, ranks and saves. A slot
freed by a delete is handed to the next insert, so churn does not grow memory; a search
scans rows [0, used) and masks free ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from numpy.typing import NDArray


class DenseRowIndex:
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

    def _distances(self, query: bytes, n: int) -> NDArray[Any]:
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
        dist = self._distances_to_any(parts, n)
        masked = self._free + [s for s in map(self._slot_of.get, exclude) if s is not None]
        dist[masked] = _far(dist.dtype)
        slots = _nearest_slots(dist, min(k, n), max_distance)
        # Everything as close as the k-th best, then ties broken by id: the same content
        # gives the same answer whatever order it was loaded in.
        ranked = sorted((float(dist[s]), self._ids[s]) for s in slots.tolist())
        return [(i, d) for d, i in ranked[:k] if i is not None]

    def _distances_to_any(self, parts: list[bytes], n: int) -> NDArray[Any]:
        """Distance of rows [0, n) to their nearest query part (a fresh array)."""
        dist = self._distances(parts[0], n).copy()
        for q in parts[1:]:
            np.minimum(dist, self._distances(q, n), out=dist)
        return dist

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


# Rows per block when bounding the k-th distance: block minima are cheap to take, and the
# k-th smallest of them bounds the k-th smallest distance from above.
_BLOCK = 1024


def _far(dtype: np.dtype[Any]) -> float | int:
    return float("inf") if np.issubdtype(dtype, np.floating) else int(np.iinfo(dtype).max)


def _nearest_slots(dist: NDArray[Any], k: int, max_distance: float | None) -> NDArray[np.intp]:
    """Slots whose distance is at most the k-th smallest (ties included) and `max_distance`.

    A full partition of millions of distances costs more than computing them, so the k-th
    distance is first bounded from above by the k-th smallest block minimum (at least k rows
    lie at or under it), and only the rows under that bound are ranked exactly.
    """
    far = _far(dist.dtype)
    bound: float = far
    blocks = dist.size // _BLOCK
    if blocks >= 4 * k:
        minima = dist[: blocks * _BLOCK].reshape(blocks, _BLOCK).min(axis=1)
        bound = float(np.partition(minima, k - 1)[k - 1])
    if max_distance is not None:
        bound = min(bound, max_distance)
    candidates = np.flatnonzero(dist < far) if bound >= far else np.flatnonzero(dist <= bound)
    if candidates.size == 0:
        return candidates
    near = dist[candidates]
    kth = float(np.partition(near, min(k, near.size) - 1)[min(k, near.size) - 1])
    chosen: NDArray[np.intp] = candidates[near <= kth]
    return chosen

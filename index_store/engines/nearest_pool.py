"""Selecting the k nearest rows while an exact engine scans its rows chunk by chunk.

Exact engines scan their rows a chunk at a time (dense_rows.py): writing millions of distances
out and selecting afterwards costs as much as computing them, while a chunk's distances stay in
cache and the pool keeps only the few rows that can still make the top k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


class NearestPool:
    """The rows that can still be among the k nearest.

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

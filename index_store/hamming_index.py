"""Exact Hamming search over fixed-length binary codes held in one numpy array.

Slots of deleted images are reused by the next insert, so churn does not grow memory.
A search compares the query with every live code (XOR + popcount over 64-bit words):
simple, exact, and fast enough for a few million codes per shard.

An item may hold several codes (`codes_per_item`, e.g. hashes of crops and turns of one
image): its distance to a query is the smallest over all (query code, item code) pairs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

_FAR = np.iinfo(np.int32).max


class HammingIndex:
    def __init__(self, code_bytes: int, capacity: int = 1024, codes_per_item: int = 1) -> None:
        if code_bytes % 8:
            raise ValueError("code length must be a multiple of 64 bits")
        self.code_bytes = code_bytes
        self.codes_per_item = codes_per_item
        self.item_bytes = code_bytes * codes_per_item
        self._words = code_bytes // 8
        self._codes = np.zeros((capacity, self._words * codes_per_item), dtype=np.uint64)
        self._live = np.zeros(capacity, dtype=bool)
        self._ids: list[str | None] = [None] * capacity
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0  # slots ever handed out: [0, _used) is the searched range

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._slot_of

    def upsert(self, image_id: str, vector: bytes) -> None:
        if len(vector) != self.item_bytes:
            raise ValueError(f"item has {len(vector)} bytes, index holds {self.item_bytes}")
        slot = self._slot_of.get(image_id)
        if slot is None:
            slot = self._take_slot()
            self._slot_of[image_id] = slot
            self._ids[slot] = image_id
            self._live[slot] = True
        self._codes[slot] = np.frombuffer(vector, dtype=np.uint64)

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
        return None if slot is None else self._codes[slot].tobytes()

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """Top-k (id, distance) by the smallest distance to any of `queries`."""
        n = self._used
        codes = [
            q[i : i + self.code_bytes] for q in queries for i in range(0, len(q), self.code_bytes)
        ]
        if n == 0 or not codes:
            return []
        dist = self._distances(codes[0], n)
        for q in codes[1:]:
            np.minimum(dist, self._distances(q, n), out=dist)
        dist[~self._live[:n]] = _FAR
        for image_id in exclude:
            slot = self._slot_of.get(image_id)
            if slot is not None:
                dist[slot] = _FAR
        k = min(k, n)
        # Everything as close as the k-th best, then ties broken by id: the same index
        # content gives the same answer whatever order it was loaded in.
        kth = np.partition(dist, k - 1)[k - 1] if k < n else dist.max()
        limit = kth if max_distance is None else min(kth, max_distance)
        candidates = np.flatnonzero(dist <= min(limit, _FAR - 1))
        found = [(self._ids[slot], int(dist[slot])) for slot in candidates]
        ranked = sorted((d, i) for i, d in found if i is not None)
        return [(i, float(d)) for d, i in ranked[:k]]

    def save(self, directory: Path) -> None:
        """Live codes and their ids (slots are compacted: free slots are not saved)."""
        ids = [i for i in self._ids[: self._used] if i is not None]
        np.save(directory / "codes.npy", self._codes[: self._used][self._live[: self._used]])
        doc = {"code_bytes": self.code_bytes, "codes_per_item": self.codes_per_item, "ids": ids}
        (directory / "ids.json").write_text(json.dumps(doc))

    @classmethod
    def empty_like(cls, other: HammingIndex) -> HammingIndex:
        return cls(other.code_bytes, codes_per_item=other.codes_per_item)

    @classmethod
    def load(cls, directory: Path) -> HammingIndex:
        doc = json.loads((directory / "ids.json").read_text())
        codes = np.load(directory / "codes.npy")
        index = cls(
            int(doc["code_bytes"]),
            capacity=max(1024, len(doc["ids"])),
            codes_per_item=int(doc.get("codes_per_item", 1)),
        )
        n = len(doc["ids"])
        index._codes[:n] = codes
        index._live[:n] = True
        index._ids[:n] = doc["ids"]
        index._slot_of = {image_id: slot for slot, image_id in enumerate(doc["ids"])}
        index._used = n
        return index

    def _distances(self, query: bytes, n: int) -> NDArray[np.int32]:
        q = np.frombuffer(query, dtype=np.uint64)
        if self.codes_per_item == 1:
            counts: NDArray[np.int32] = np.bitwise_count(self._codes[:n] ^ q).sum(
                axis=1, dtype=np.int32
            )
            return counts
        items = self._codes[:n].reshape(n, self.codes_per_item, self._words)
        per_code = np.bitwise_count(items ^ q).sum(axis=2, dtype=np.int32)
        best: NDArray[np.int32] = per_code.min(axis=1)
        return best

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self._ids):
            self._grow()
        slot = self._used
        self._used += 1
        return slot

    def _grow(self) -> None:
        cap = len(self._ids) * 2
        codes = np.zeros((cap, self._words * self.codes_per_item), dtype=np.uint64)
        codes[: self._used] = self._codes[: self._used]
        live = np.zeros(cap, dtype=bool)
        live[: self._used] = self._live[: self._used]
        self._codes, self._live = codes, live
        self._ids.extend([None] * (cap - len(self._ids)))

"""Exact search over float32 vectors (L1 or cosine), one numpy matrix, slots reused on delete.

Right for small indexes and as the ground truth that approximate indexes are checked against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from index_store.metric import Metric

_FAR = np.float32(np.inf)


class ExactVectorIndex:
    def __init__(self, dim: int, metric: Metric, capacity: int = 1024) -> None:
        if metric not in (Metric.L1, Metric.COSINE):
            raise ValueError(f"{metric} is not a float-vector metric")
        self.dim = dim
        self.metric = metric
        self._vectors = np.zeros((capacity, dim), dtype=np.float32)
        self._live = np.zeros(capacity, dtype=bool)
        self._ids: list[str | None] = [None] * capacity
        self._slot_of: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._slot_of

    def upsert(self, image_id: str, vector: bytes) -> None:
        values = np.frombuffer(vector, dtype=np.float32)
        if values.shape != (self.dim,):
            raise ValueError(f"vector has {values.size} floats, index holds {self.dim}")
        slot = self._slot_of.get(image_id)
        if slot is None:
            slot = self._take_slot()
            self._slot_of[image_id] = slot
            self._ids[slot] = image_id
            self._live[slot] = True
        self._vectors[slot] = values

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
        return None if slot is None else self._vectors[slot].tobytes()

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        n = self._used
        if n == 0 or not queries:
            return []
        dist = self._distances(queries[0], n)
        for q in queries[1:]:
            np.minimum(dist, self._distances(q, n), out=dist)
        dist[~self._live[:n]] = _FAR
        for image_id in exclude:
            slot = self._slot_of.get(image_id)
            if slot is not None:
                dist[slot] = _FAR
        k = min(k, n)
        top = np.argpartition(dist, k - 1)[:k] if k < n else np.arange(n)
        ranked = sorted((float(dist[s]), self._ids[s]) for s in top if np.isfinite(dist[s]))
        limit = np.inf if max_distance is None else max_distance
        return [(i, d) for d, i in ranked if i is not None and d <= limit]

    def save(self, directory: Path) -> None:
        ids = [i for i in self._ids[: self._used] if i is not None]
        np.save(directory / "vectors.npy", self._vectors[: self._used][self._live[: self._used]])
        doc = {"dim": self.dim, "metric": self.metric.value, "ids": ids}
        (directory / "ids.json").write_text(json.dumps(doc))

    @classmethod
    def empty_like(cls, other: ExactVectorIndex) -> ExactVectorIndex:
        return cls(other.dim, other.metric)

    @classmethod
    def load(cls, directory: Path) -> ExactVectorIndex:
        doc = json.loads((directory / "ids.json").read_text())
        vectors = np.load(directory / "vectors.npy")
        n = len(doc["ids"])
        index = cls(int(doc["dim"]), Metric(doc["metric"]), capacity=max(1024, n))
        index._vectors[:n] = vectors
        index._live[:n] = True
        index._ids[:n] = doc["ids"]
        index._slot_of = {image_id: slot for slot, image_id in enumerate(doc["ids"])}
        index._used = n
        return index

    def _distances(self, query: bytes, n: int) -> NDArray[np.float32]:
        q = np.frombuffer(query, dtype=np.float32)
        if self.metric is Metric.L1:
            out: NDArray[np.float32] = np.abs(self._vectors[:n] - q).sum(axis=1)
        else:
            out = 1.0 - self._vectors[:n] @ q
        return out

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self._ids):
            cap = len(self._ids) * 2
            vectors = np.zeros((cap, self.dim), dtype=np.float32)
            vectors[: self._used] = self._vectors[: self._used]
            live = np.zeros(cap, dtype=bool)
            live[: self._used] = self._live[: self._used]
            self._vectors, self._live = vectors, live
            self._ids.extend([None] * (cap - len(self._ids)))
        slot = self._used
        self._used += 1
        return slot

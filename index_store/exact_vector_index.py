"""Exact search over float32 vectors (L1 or cosine), one numpy matrix, slots reused on delete.

Right for small indexes and as the ground truth that approximate indexes are checked against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from index_store.dense_rows import DenseRowIndex
from index_store.metric import Metric


class ExactVectorIndex(DenseRowIndex):
    def __init__(self, dim: int, metric: Metric | str, capacity: int = 1024) -> None:
        metric = Metric(metric)
        if metric not in (Metric.L1, Metric.COSINE):
            raise ValueError(f"{metric} is not a float-vector metric")
        self.dim = dim
        self.metric = metric
        super().__init__(dim, np.float32, capacity)

    def _params(self) -> dict[str, Any]:
        return {"dim": self.dim, "metric": self.metric.value}

    def _row(self, vector: bytes) -> NDArray[Any]:
        values = np.frombuffer(vector, dtype=np.float32)
        if values.shape != (self.dim,):
            raise ValueError(f"vector has {values.size} floats, index holds {self.dim}")
        return values

    def _distances(self, query: bytes, n: int) -> NDArray[np.float32]:
        q = np.frombuffer(query, dtype=np.float32)
        if self.metric is Metric.L1:
            out: NDArray[np.float32] = np.abs(self._rows[:n] - q).sum(axis=1)
        else:
            out = 1.0 - self._rows[:n] @ q
        return out

"""Exact search over float32 vectors (L1 or cosine): one numpy matrix, slots reused on delete.

Right for small indexes and L1 colour histograms, the staging engine of the graph engines
until they are trained (exact_until_trained.py), and the ground truth recall is measured by.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from numpy.typing import NDArray

from index_store.engines.dense_rows import DenseRowEngine, Scanner
from index_store.metric import Metric

# The L1 distance makes a rows x dim temporary: 16,384 x 512 floats is 32 MB.
SCAN_ROWS = 1 << 14


class ExactFloatEngine(DenseRowEngine):
    def __init__(
        self, dim: int, metric: Metric | str, *, scan_rows: int = SCAN_ROWS, capacity: int = 1024
    ) -> None:
        metric = Metric(metric)
        if metric not in (Metric.L1, Metric.COSINE):
            raise ValueError(f"{metric} is not a float-vector metric")
        self.dim = dim
        self.metric = metric
        super().__init__(dim, np.float32, scan_rows=scan_rows, capacity=capacity)

    @property
    def snapshot_format(self) -> dict[str, object]:
        return {"engine": "exact", "dim": self.dim, "metric": self.metric.value}

    def empty(self) -> Self:
        return type(self)(self.dim, self.metric, scan_rows=self.scan_rows)

    def _row(self, vector: bytes) -> NDArray[Any]:
        values = np.frombuffer(vector, dtype=np.float32)
        if values.shape != (self.dim,):
            raise ValueError(f"vector has {values.size} floats, the engine holds {self.dim}")
        return values

    def _scanner(self, parts: list[bytes]) -> Scanner:
        queries = [self._row(q) for q in parts]

        def scan(lo: int, hi: int) -> NDArray[np.float32]:
            rows = self._rows[lo:hi]
            best: NDArray[np.float32] | None = None
            for q in queries:
                if self.metric is Metric.L1:
                    dist: NDArray[np.float32] = np.abs(rows - q).sum(axis=1)
                else:
                    dist = 1.0 - rows @ q
                best = dist if best is None else np.minimum(best, dist)
            assert best is not None  # search() passes at least one part
            return best

        return scan

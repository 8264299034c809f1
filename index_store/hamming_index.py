"""Exact Hamming search over fixed-length binary codes on faiss's popcount kernel: ~34 ms p50
per query code over 10M 576-bit codes on one core (bench/index_scale.py, BENCHMARKS.md),
within ~2 ms of faiss's heap-based IndexBinaryFlat scan, while ties at the k-th distance,
free slots, exclusions and several codes per item stay exact.

An item may hold several codes (`codes_per_item`, e.g. hashes of crops and turns of one
image): its distance to a query is the smallest over all (query code, item code) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
from numpy.typing import NDArray

from index_store.dense_rows import DenseRowIndex, Scanner


class HammingIndex(DenseRowIndex):
    def __init__(self, code_bytes: int, capacity: int = 1024, codes_per_item: int = 1) -> None:
        if code_bytes % 8:
            raise ValueError("code length must be a multiple of 64 bits")
        self.code_bytes = code_bytes
        self.codes_per_item = codes_per_item
        self.item_bytes = code_bytes * codes_per_item
        self._words = code_bytes // 8
        super().__init__(self._words * codes_per_item, np.uint64, capacity)
        self._scan_rows = max(1024, DenseRowIndex._scan_rows // codes_per_item)

    def _params(self) -> dict[str, Any]:
        return {"code_bytes": self.code_bytes, "codes_per_item": self.codes_per_item}

    def _row(self, vector: bytes) -> NDArray[Any]:
        if len(vector) != self.item_bytes:
            raise ValueError(f"item has {len(vector)} bytes, index holds {self.item_bytes}")
        return np.frombuffer(vector, dtype=np.uint64)

    def _query_parts(self, queries: Sequence[bytes]) -> list[bytes]:
        # A query may be several codes too (e.g. an indexed item's own vector).
        step = self.code_bytes
        return [q[i : i + step] for q in queries for i in range(0, len(q), step)]

    def _scanner(self, parts: list[bytes]) -> Scanner:
        queries = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
        # One buffer for the whole search, refilled per chunk: it stays in cache.
        out = np.empty(len(parts) * self._scan_rows * self.codes_per_item, dtype=np.int32)

        def scan(lo: int, hi: int) -> NDArray[np.int32]:
            codes = self._rows[lo:hi].view(np.uint8)
            per_code = (hi - lo) * self.codes_per_item
            faiss.hammings(  # type: ignore[attr-defined]
                faiss.swig_ptr(queries),
                faiss.swig_ptr(codes),
                len(parts),
                per_code,
                self.code_bytes,
                faiss.swig_ptr(out),
            )
            dist = out[: len(parts) * per_code].reshape(len(parts), per_code)
            best: NDArray[np.int32] = dist.min(axis=0) if len(parts) > 1 else dist[0]
            if self.codes_per_item > 1:
                best = best.reshape(hi - lo, self.codes_per_item).min(axis=1)
            return best

        return scan

"""Exact Hamming search over fixed-length binary codes, on faiss's popcount kernel.

A chunk of rows at a time is scanned into a cache-resident buffer and only the rows that can
still make the top k are kept (nearest_pool.py), so ties at the k-th distance, free slots,
exclusions and several codes per item stay exact; BENCHMARKS.md ("Hamming") compares it with
faiss's heap-based IndexBinaryFlat scan.

An item may hold several codes (`codes_per_item`, e.g. hashes of crops and turns of one
image): its distance to a query is the smallest over all (query code, item code) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import faiss
import numpy as np
from numpy.typing import NDArray

from index_store.engines.dense_rows import DenseRowEngine, Scanner

SCAN_ROWS = 1 << 18  # rows of one code per scan step; items of several codes take fewer


class HammingEngine(DenseRowEngine):
    def __init__(
        self,
        code_bytes: int,
        codes_per_item: int = 1,
        *,
        scan_rows: int | None = None,
        capacity: int = 1024,
    ) -> None:
        if code_bytes % 8:
            raise ValueError("code length must be a multiple of 64 bits")
        self.code_bytes = code_bytes
        self.codes_per_item = codes_per_item
        self.item_bytes = code_bytes * codes_per_item
        rows = scan_rows or max(1024, SCAN_ROWS // codes_per_item)
        words = code_bytes // 8
        super().__init__(words * codes_per_item, np.uint64, scan_rows=rows, capacity=capacity)

    @property
    def snapshot_format(self) -> dict[str, object]:
        return {
            "engine": "hamming",
            "code_bytes": self.code_bytes,
            "codes_per_item": self.codes_per_item,
        }

    def empty(self) -> Self:
        return type(self)(self.code_bytes, self.codes_per_item, scan_rows=self.scan_rows)

    def _row(self, vector: bytes) -> NDArray[Any]:
        if len(vector) != self.item_bytes:
            raise ValueError(f"item has {len(vector)} bytes, the engine holds {self.item_bytes}")
        return np.frombuffer(vector, dtype=np.uint64)

    def _query_parts(self, queries: Sequence[bytes]) -> list[bytes]:
        # A query may be several codes too (e.g. an indexed item's own vector).
        step = self.code_bytes
        return [q[i : i + step] for q in queries for i in range(0, len(q), step)]

    def _scanner(self, parts: list[bytes]) -> Scanner:
        queries = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
        # One buffer for the whole search, refilled per chunk: it stays in cache.
        out = np.empty(len(parts) * self.scan_rows * self.codes_per_item, dtype=np.int32)

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

"""Exact re-ranking around any engine: its top `depth * k` candidates, re-ranked with the exact
float32 vectors read from the store of record in one transaction, so an engine that quantises
or projects keeps the recall of a float32 one and returns exact cosine distances. What it costs
and buys: BENCHMARKS.md ("Index scale", '+rerank').
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

import numpy as np

from index_store.engines.engine import Effort, Engine, FetchVectors, Hit, float_matrix, ranked
from index_store.engines.wrapper import EngineWrapper


class ExactRerank(EngineWrapper):
    def __init__(self, inner: Engine, exact_vectors: FetchVectors, dim: int, depth: int) -> None:
        """`exact_vectors`: float32 bytes by id from the store of record (None where absent)."""
        self.inner = inner
        self.exact_vectors = exact_vectors
        self.dim = dim
        self.depth = depth

    @property
    def exact_distances(self) -> bool:
        return True

    @property
    def effort(self) -> Effort | None:
        inner = self.inner.effort
        if inner is None or self.inner.exact_distances:
            return inner  # nothing to re-rank
        return Effort(inner.ef, self.depth)

    @effort.setter
    def effort(self, effort: Effort) -> None:
        self.inner.effort = effort
        self.depth = effort.depth

    def vector_of(self, image_id: str) -> bytes | None:
        """The exact vector from the store, or what the engine holds if the store has none."""
        if image_id not in self.inner:
            return None
        exact = self.exact_vectors([image_id])[0]
        if exact is not None and len(exact) == 4 * self.dim:
            return exact
        return self.inner.vector_of(image_id)

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        if self.inner.exact_distances or self.depth <= 1:
            return self.inner.search(queries, k, max_distance, exclude)
        candidates = self.inner.search(queries, k * self.depth, None, exclude)
        if not candidates:
            return []
        ids = [image_id for image_id, _ in candidates]
        size = 4 * self.dim
        found = [v if v is not None and len(v) == size else None for v in self.exact_vectors(ids)]
        rows = np.frombuffer(b"".join(v or bytes(size) for v in found), np.float32)
        query_rows = float_matrix(queries, self.dim)
        dists = (1.0 - rows.reshape(-1, self.dim) @ query_rows.T).min(axis=1).tolist()
        # Store and engine may disagree for a moment (a write between them): such a candidate
        # keeps its approximate distance.
        hits = [
            (image_id, exact if vector is not None else approx)
            for (image_id, approx), vector, exact in zip(candidates, found, dists, strict=True)
        ]
        return ranked(hits, k, max_distance)

    def empty(self) -> Self:
        return type(self)(self.inner.empty(), self.exact_vectors, self.dim, self.depth)

    def restored(self, directory: Path) -> Self:
        return type(self)(self.inner.restored(directory), self.exact_vectors, self.dim, self.depth)

"""What the two HNSW graph engines (hnswlib_graph.py, faiss_graph.py) share: their settings,
how vectors reach the graph, and turning a graph's candidate slots into ranked hits."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from index_store.engines.engine import (
    Effort,
    Hit,
    Vectors,
    float_matrix,
    float_rows,
    ranked,
    require_distinct,
)
from index_store.engines.slots import SlotEngine, SlotMap

# (slots, distances) of candidates for any of a search's queries; duplicates allowed, -1: none.
Candidates = tuple[NDArray[np.int64], NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class GraphSettings:
    """`m`: neighbours per node; `ef_construction`: the build beam; `ef_search`: the search
    beam (a search-time setting: a loaded snapshot searches with the configured one)."""

    m: int
    ef_construction: int
    ef_search: int


def graph_search(
    slots: SlotMap,
    dim: int,
    candidates: Callable[[NDArray[np.float32], int], Candidates],
    queries: Sequence[bytes],
    k: int,
    max_distance: float | None,
    exclude: Iterable[str],
) -> list[Hit]:
    """Top-k over `candidates(query matrix, how many per query)`, each image at its best
    distance to any query, excluded ids dropped."""
    if k <= 0 or not queries or not len(slots):
        return []
    excluded = {i for i in exclude if i in slots}
    want = min(k + len(excluded), len(slots))
    if want <= len(excluded):
        return []
    found, dists = candidates(float_matrix(queries, dim), want)
    keep = found >= 0  # -1: fewer candidates than asked for
    ids = slots.ids_at(found[keep].tolist())
    best: dict[str, float] = {}
    for image_id, dist in zip(ids, dists[keep].tolist(), strict=True):
        if image_id is None or image_id in excluded:
            continue
        if dist < best.get(image_id, np.inf):
            best[image_id] = dist
    return ranked(best.items(), k, max_distance)


class GraphEngine(SlotEngine):
    """A graph over float32 vectors of `dim`: a subclass inserts (`_insert`), reads a slot's
    vector back (`_stored`) and finds candidates (`_candidates`); this class does the rest."""

    dim: int
    ef_search: int

    @property
    def effort(self) -> Effort | None:
        return Effort(self.ef_search)

    @effort.setter
    def effort(self, effort: Effort) -> None:
        self.ef_search = effort.ef

    def upsert(self, image_id: str, vector: bytes) -> None:
        self._insert([image_id], float_matrix([vector], self.dim), bulk=False)

    def upsert_many(self, image_ids: Sequence[str], vectors: Vectors) -> None:
        """Graph insertion on the engine's threads."""
        require_distinct(image_ids)
        values = float_rows(vectors, len(image_ids), self.dim)
        if image_ids:
            self._insert(image_ids, values, bulk=True)

    def vector_of(self, image_id: str) -> bytes | None:
        slot = self._slots.slot_of(image_id)
        return None if slot is None else self._stored(slot).astype(np.float32).tobytes()

    def search(
        self,
        queries: Sequence[bytes],
        k: int,
        max_distance: float | None = None,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        return graph_search(
            self._slots, self.dim, self._candidates, queries, k, max_distance, exclude
        )

    def _insert(self, image_ids: Sequence[str], values: NDArray[np.float32], bulk: bool) -> None:
        """Insert or replace the vectors of distinct `image_ids`; `bulk`: on many threads."""
        raise NotImplementedError

    def _stored(self, slot: int) -> NDArray[np.float32]:
        raise NotImplementedError

    def _candidates(self, queries: NDArray[np.float32], count: int) -> Candidates:
        raise NotImplementedError

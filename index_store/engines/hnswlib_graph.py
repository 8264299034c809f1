"""hnswlib graph over float32 unit vectors, cosine distance (1 - dot).

True in-place updates: a replaced image keeps its slot (hnswlib repairs the graph around the
new vector); a removed image's slot is marked deleted (never returned by a search) and handed
to the next new image, so memory stays at the peak number of live images. Neighbours are
approximate, distances exact (float32). Its memory and speed against the faiss engine:
BENCHMARKS.md ("Index scale").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import hnswlib
import numpy as np
from numpy.typing import NDArray

from index_store.engines.graph import Candidates, GraphEngine, GraphSettings
from index_store.engines.slots import SlotMap

GRAPH_FILE = "hnswlib.bin"
SEED = 100


class HnswlibEngine(GraphEngine):
    def __init__(self, dim: int, graph: GraphSettings, *, add_threads: int = 2) -> None:
        """`add_threads`: threads of a bulk insert."""
        self.dim = dim
        self.graph = graph
        self.add_threads = add_threads
        self._slots = SlotMap(reuse=True)
        self._graph = hnswlib.Index(space="ip", dim=dim)  # 1 - dot: cosine on unit vectors
        self._graph.init_index(
            max_elements=1024, ef_construction=graph.ef_construction, M=graph.m, random_seed=SEED
        )
        self.ef_search = graph.ef_search

    @property
    def ef_search(self) -> int:
        return self._ef

    @ef_search.setter
    def ef_search(self, ef: int) -> None:
        self._ef = ef
        self._graph.set_ef(ef)

    @property
    def snapshot_format(self) -> dict[str, object]:
        return {"engine": "hnsw", "dim": self.dim}

    @property
    def exact_distances(self) -> bool:
        return True

    @property
    def needs_compaction(self) -> bool:
        return False  # removed slots are reused in place

    def _insert(self, image_ids: Sequence[str], values: NDArray[np.float32], bulk: bool) -> None:
        # A live slot is updated in place; a reused (deleted) one is unmarked and updated.
        slots = np.array([self._slot(image_id) for image_id in image_ids], dtype=np.int64)
        self._graph.add_items(values, slots, num_threads=self.add_threads if bulk else 1)

    def _vacate(self, slot: int) -> None:
        self._graph.mark_deleted(slot)

    def _stored(self, slot: int) -> NDArray[np.float32]:
        values: NDArray[np.float32] = self._graph.get_items([slot], return_type="numpy")[0]
        return values

    def empty(self) -> Self:
        return type(self)(self.dim, self.graph, add_threads=self.add_threads)

    def save(self, directory: Path) -> None:
        self._graph.save_index(str(directory / GRAPH_FILE))
        self._slots.save(directory)

    def restored(self, directory: Path) -> Self:
        engine = self.empty()
        engine._slots = SlotMap.load(directory, reuse=True)
        graph = hnswlib.Index(space="ip", dim=self.dim)
        graph.load_index(str(directory / GRAPH_FILE))
        nodes = graph.get_current_count()
        if nodes != engine._slots.size:
            raise ValueError(f"{directory}: {nodes} graph nodes, {engine._slots.size} slots")
        engine._graph = graph
        engine.ef_search = self.ef_search  # a loaded graph forgets its beam
        return engine

    def _slot(self, image_id: str) -> int:
        slot = self._slots.slot_of(image_id)
        if slot is None:
            slot = self._slots.add(image_id)
            capacity = int(self._graph.get_max_elements())
            if slot >= capacity:
                self._graph.resize_index(max(2 * capacity, 1024))
        return slot

    def _candidates(self, queries: NDArray[np.float32], want: int) -> Candidates:
        # hnswlib refuses to return fewer than k rows; that can happen when many nodes near the
        # query are deleted: widen the beam, then ask for fewer.
        k, ef = want, self._ef
        try:
            while True:
                try:
                    slots, dists = self._graph.knn_query(queries, k=k, num_threads=1)
                    return slots.astype(np.int64).ravel(), dists.ravel()
                except RuntimeError:
                    if ef < self._slots.size:
                        ef *= 4
                        self._graph.set_ef(ef)
                    elif k > 1:
                        k //= 2
                    else:
                        return np.empty(0, np.int64), np.empty(0, np.float32)
        finally:
            if ef != self._ef:
                self._graph.set_ef(self._ef)

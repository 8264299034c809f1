"""What the two HNSW graph engines (hnswlib_graph.py, faiss_graph.py) share: their settings,
and turning a graph's candidate slots into ranked hits."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from index_store.engines.engine import Hit, float_matrix, ranked
from index_store.engines.slots import SlotMap

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

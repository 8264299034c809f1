"""faiss HNSW graph over unit vectors: 8-bit scalar-quantised (a quarter of float32) or float32,
optionally over PCA projections; cosine distance.

faiss HNSW cannot remove or overwrite a vector: a remove or replace leaves a tombstone, a dead
slot that searches skip (a live bitmap read by faiss's `IDSelectorBitmap` inside the graph
search, so removed ids are never returned). `needs_compaction` says when the tombstones are
enough that rebuilding from the store pays; the owner rebuilds off the search lock
(`FeatureIndex.compact_if_needed`).

With a projection (projection.py: a fixed size, or one chosen from the training sample) the
graph holds PCA projections (faiss `PCAMatrix` in an `IndexPreTransform`) searched by L2, which
costs less per visited node. The projection is orthonormal and applied to
*centred* vectors, so L2 distances between projections approximate the original ones (the
dropped components add a nearly constant term), and for unit vectors L2 order is cosine order.
Inner products would not survive the centring: embeddings such as CLIP's share a large common
direction, and `(q - mean) . (x - mean)` ranks differently from `q . x`.

A quantised or projected graph is trained (`train`) before its first vector; until then
exact_until_trained.py serves exactly. Its distances are approximate: rerank.py makes them
exact from the store. How the defaults were chosen: BENCHMARKS.md ("Index scale").
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import faiss
import numpy as np
import structlog
from numpy.typing import NDArray

from index_store.engines.graph import Candidates, GraphEngine, GraphSettings
from index_store.engines.projection import Projection, shares_of
from index_store.engines.slots import SlotMap
from index_store.openmp import omp_threads

log = structlog.get_logger(__name__)

GRAPH_FILE = "faiss.index"
NO_PROJECTION = Projection()


@dataclass(frozen=True, slots=True)
class Compaction:
    """Rebuild once tombstones exceed `fraction` of the live count and `minimum`: amortised,
    a rebuild of L vectors happens at most once per `fraction * L` removals."""

    fraction: float
    minimum: int


class FaissHnswEngine(GraphEngine):
    def __init__(
        self,
        dim: int,
        graph: GraphSettings,
        *,
        quantised: bool = True,
        projection: Projection = NO_PROJECTION,
        compaction: Compaction = Compaction(fraction=0.25, minimum=1_000),
    ) -> None:
        if projection.dims is not None and not 0 < projection.dims < dim:
            raise ValueError(f"a projection must keep 1 to {dim - 1} dimensions")
        self.dim = dim
        self.graph = graph
        self.quantised = quantised
        self.projection = projection
        self.compaction = compaction
        self.ef_search = graph.ef_search
        self._slots = SlotMap(reuse=False)
        self._live = _LiveBits()
        # The graph, built once its projection size is known (at training if chosen then).
        self._projected_to: int | None = projection.dims
        self._index: Any = None if projection.chosen_at_training else self._new_index()

    @property
    def snapshot_format(self) -> dict[str, object]:
        name = "faiss-hnsw-sq8" if self.quantised else "faiss-hnsw"
        return {"engine": name, "dim": self.dim, "reduce_to": self.projection.name}

    @property
    def projected_to(self) -> int | None:
        """Dimensions the graph holds when it holds projections (known once trained)."""
        return self._projected_to

    @property
    def exact_distances(self) -> bool:
        """Float32 over the vectors themselves (unknown, so False, until a projection chosen
        at training is chosen)."""
        return not self.quantised and self._projected_to is None and self._index is not None

    @property
    def needs_training(self) -> bool:
        return self._index is None or not self._index.is_trained

    @property
    def tombstones(self) -> int:
        return self._slots.dead

    @property
    def needs_compaction(self) -> bool:
        policy = self.compaction
        return self._slots.dead > max(policy.minimum, policy.fraction * len(self))

    def train(self, sample: NDArray[np.float32]) -> None:
        """Fit the projection (choosing its size first, if chosen from the data) and the
        quantiser on `sample` (rows are vectors)."""
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if self.projection.chosen_at_training:
            self._projected_to = self.projection.size_for(sample)
            self._index = self._new_index()
        self._index.train(sample)
        if self._projected_to is not None:
            pca: Any = faiss.downcast_VectorTransform(self._index.chain.at(0))
            kept = float(
                shares_of(faiss.vector_to_array(pca.eigenvalues))[: self._projected_to].sum()
            )
            log.info(
                "index.projection_fitted",
                dims=f"{self.dim}->{self._projected_to}",
                variance_kept=round(kept, 4),
                vectors=len(sample),
            )
            if kept < 0.9:  # the graph misses neighbours; re-ranking cannot find them
                log.warning("index.projection_loses_variance", variance_kept=kept)

    def empty(self) -> Self:
        engine = type(self)(
            self.dim,
            self.graph,
            quantised=self.quantised,
            projection=self.projection,
            compaction=self.compaction,
        )
        engine.ef_search = self.ef_search
        return engine

    def save(self, directory: Path) -> None:
        faiss.write_index(self._index, str(directory / GRAPH_FILE))
        self._slots.save(directory)

    def restored(self, directory: Path) -> Self:
        engine = self.empty()
        engine._slots = SlotMap.load(directory, reuse=False)
        engine._index = faiss.read_index(str(directory / GRAPH_FILE))
        if engine._index.d != self.dim or engine._index.ntotal != engine._slots.size:
            raise ValueError(f"{directory}: the graph does not match its ids or dimensions")
        engine._projected_to = None
        if isinstance(engine._index, faiss.IndexPreTransform):
            pretransform: Any = engine._index
            engine._projected_to = int(pretransform.chain.at(0).d_out)
        engine._hnsw().efConstruction = self.graph.ef_construction
        engine._live = _LiveBits()
        engine._live.set(np.array([slot for slot, _ in engine._slots.live()], dtype=np.int64))
        return engine

    # -- internals --

    def _new_index(self) -> Any:
        reduce_to = self._projected_to
        metric = faiss.METRIC_INNER_PRODUCT if reduce_to is None else faiss.METRIC_L2
        dim, m = reduce_to or self.dim, self.graph.m
        graph: Any
        if self.quantised:
            qtype: Any = faiss.ScalarQuantizer.QT_8bit
            graph = faiss.IndexHNSWSQ(dim, qtype, m, metric)
        else:
            graph = faiss.IndexHNSWFlat(dim, m, metric)
        graph.hnsw.efConstruction = self.graph.ef_construction
        if reduce_to is None:
            return graph
        return faiss.IndexPreTransform(faiss.PCAMatrix(self.dim, reduce_to), graph)

    def _hnsw(self) -> Any:
        graph: Any = self._index
        if self._projected_to is not None:  # the graph behind the projection
            graph = faiss.downcast_index(graph.index)
        return graph.hnsw

    def _insert(self, image_ids: Sequence[str], values: NDArray[np.float32], bulk: bool) -> None:
        """A replaced image's old node becomes a tombstone; new nodes go at the end."""
        if self.needs_training:
            raise ValueError("the graph is not trained yet: train() it first")
        for image_id in image_ids:
            self.remove(image_id)
        first = self._slots.size
        with nullcontext() if bulk else omp_threads(1):  # OpenMP for one vector costs more
            self._index.add(values)
        for image_id in image_ids:
            self._slots.add(image_id)
        self._live.set(np.arange(first, self._slots.size, dtype=np.int64))

    def _vacate(self, slot: int) -> None:
        self._live.clear(slot)

    def _stored(self, slot: int) -> NDArray[np.float32]:
        """Within half a quantisation step of the original, and projected back (losing what
        the projection dropped)."""
        values: NDArray[np.float32] = self._index.reconstruct(slot)
        return values

    def _candidates(self, queries: NDArray[np.float32], count: int) -> Candidates:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.ef_search, count)
        selector = None
        if self._slots.dead:
            selector = self._live.selector()
            params.sel = selector
        with omp_threads(1):
            scores, found = self._index.search(queries, count, params=params)
        del selector
        dists: NDArray[np.float32]
        if self._projected_to is None:  # inner products
            dists = (1.0 - scores).astype(np.float32)
        else:  # squared L2 of unit vectors = 2 * cosine distance (approximate: projected)
            dists = (0.5 * scores).astype(np.float32)
        return found.astype(np.int64).ravel(), dists.ravel()


class _LiveBits:
    """One bit per slot, 1 = live: what a search's `IDSelectorBitmap` reads."""

    def __init__(self) -> None:
        self.bits = np.zeros(128, dtype=np.uint8)

    def set(self, slots: NDArray[np.int64]) -> None:
        if not slots.size:
            return
        need = int(slots.max()) // 8 + 1
        if need > self.bits.size:
            bits = np.zeros(max(need, 2 * self.bits.size), dtype=np.uint8)
            bits[: self.bits.size] = self.bits
            self.bits = bits
        masks = np.left_shift(np.uint8(1), (slots & 7).astype(np.uint8))
        np.bitwise_or.at(self.bits, slots >> 3, masks)

    def clear(self, slot: int) -> None:
        self.bits[slot >> 3] &= np.uint8(0xFF ^ (1 << (slot & 7)))

    def selector(self) -> Any:
        return faiss.IDSelectorBitmap(self.bits.size, faiss.swig_ptr(self.bits))

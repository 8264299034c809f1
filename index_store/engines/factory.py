"""Which engine each feature gets, bound to the configuration.

- Hamming codes: `HammingEngine` (exact).
- keypoints (copy verification): `KeypointEngine` (votes; verified by the query path).
- L1 float vectors (colour histograms), and cosine ones with `vector_engine="exact"`:
  `ExactFloatEngine`.
- cosine, `"hnsw"`: `HnswlibEngine` (float32, so its distances are exact).
- cosine, `"faiss-hnsw-sq8"` / `"faiss-hnsw"`: `FaissHnswEngine`, SQ8 or float32, over PCA
  projections when the store can re-rank (`reduce_dim` of them, or with "auto" as many as keep
  `keep_variance` of the variance, projection.py); inside `ExactUntilTrained` when it needs
  training, and inside `ExactRerank` when its distances may be approximate and the store can
  re-rank.
- with the store given, a graph engine holds one image in `hold_out_every` out of the graph
  (`HoldOut`), so that recall can be measured on queries it has not seen.

The defaults (engine, graph settings, re-rank depth, projection) are the ones measured with
`bench/index_scale.py` in BENCHMARKS.md ("Index scale").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self

from index_store.engines.engine import Engine, FetchVectors
from index_store.engines.exact_float import ExactFloatEngine
from index_store.engines.exact_until_trained import ExactUntilTrained
from index_store.engines.faiss_graph import Compaction, FaissHnswEngine
from index_store.engines.graph import GraphSettings
from index_store.engines.hamming import HammingEngine
from index_store.engines.held_out import HoldOut
from index_store.engines.keypoint_engine import KeypointEngine
from index_store.engines.projection import Projection
from index_store.engines.rerank import ExactRerank
from index_store.metric import Metric
from schemas.settings import Settings

FloatEngineName = Literal["exact", "hnsw", "faiss-hnsw", "faiss-hnsw-sq8"]
FLOAT_ENGINES: tuple[FloatEngineName, ...] = ("exact", "hnsw", "faiss-hnsw", "faiss-hnsw-sq8")

# ef_search: the beam that reaches the recall target in BENCHMARKS.md ("ef ladder") for the
# faiss graph; hnswlib needs a wider one there, so its default trades recall for latency.
FAISS_GRAPH = GraphSettings(m=32, ef_construction=200, ef_search=160)
HNSWLIB_GRAPH = GraphSettings(m=16, ef_construction=100, ef_search=160)
COMPACTION = Compaction(fraction=0.25, minimum=1_000)


@dataclass(frozen=True, slots=True)
class EngineFactory:
    """`float_engine`, `reduce_dim`, `keep_variance`: Settings.vector_engine,
    .vector_reduce_dim and .vector_keep_variance;
    `graph`: None for the engine's default (FAISS_GRAPH, HNSWLIB_GRAPH); `rerank_depth`:
    candidates per result re-ranked from the store; `train_size`: vectors a quantiser and a
    projection are fitted on (served exactly until then)."""

    float_engine: FloatEngineName = "faiss-hnsw-sq8"
    reduce_dim: int | Literal["auto"] = "auto"
    keep_variance: float = 0.95
    graph: GraphSettings | None = None
    rerank_depth: int = 4
    train_size: int = 10_000
    compaction: Compaction = COMPACTION
    hold_out_every: int = 200

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            float_engine=settings.vector_engine,
            reduce_dim=settings.vector_reduce_dim,
            keep_variance=settings.vector_keep_variance,
            train_size=settings.vector_train_size,
            hold_out_every=settings.recall_hold_out_every,
        )

    def make(
        self,
        metric: Metric,
        dim: int,
        codes_per_item: int = 1,
        exact_vectors: FetchVectors | None = None,
    ) -> Engine:
        """An empty engine. `dim`: bits of all an item's codes for Hamming, floats otherwise;
        `exact_vectors`: exact float32 bytes by id from the store of record, which lets an
        approximate engine re-rank (and project: without it, a projection is not used)."""
        if metric is Metric.HAMMING:
            return HammingEngine(dim // 8 // codes_per_item, codes_per_item)
        if metric is Metric.VERIFIED:
            return KeypointEngine()
        if metric is not Metric.COSINE or self.float_engine == "exact":
            return ExactFloatEngine(dim, metric)
        if self.float_engine == "hnsw":
            # Imported when chosen: the default engine needs no compiled hnswlib.
            from index_store.engines.hnswlib_graph import HnswlibEngine

            return self._held_out(
                HnswlibEngine(dim, self.graph or HNSWLIB_GRAPH), dim, exact_vectors
            )
        if self.float_engine not in ("faiss-hnsw", "faiss-hnsw-sq8"):
            raise ValueError(f"unknown engine {self.float_engine!r}, not one of {FLOAT_ENGINES}")
        graph = FaissHnswEngine(
            dim,
            self.graph or FAISS_GRAPH,
            quantised=self.float_engine == "faiss-hnsw-sq8",
            # Projected distances are approximate: only where the store can re-rank them.
            projection=self._projection(dim) if exact_vectors is not None else Projection(),
            compaction=self.compaction,
        )
        engine: Engine = graph
        if graph.needs_training:
            engine = ExactUntilTrained(graph, self.train_size)
        if exact_vectors is not None and not graph.exact_distances:
            engine = ExactRerank(engine, exact_vectors, dim, self.rerank_depth)
        return self._held_out(engine, dim, exact_vectors)

    def _held_out(self, engine: Engine, dim: int, exact_vectors: FetchVectors | None) -> Engine:
        """With a store to measure against, a sample of images is held out of the graph so
        that its recall can be measured (held_out.py)."""
        if exact_vectors is None or self.hold_out_every < 2:
            return engine
        return HoldOut(engine, dim, self.hold_out_every)

    def _projection(self, dim: int) -> Projection:
        if self.reduce_dim == "auto":
            return Projection(keep_variance=self.keep_variance)
        if not 0 < self.reduce_dim < dim:
            return Projection()
        if self.train_size <= self.reduce_dim:
            raise ValueError(f"{self.train_size} vectors cannot fit {self.reduce_dim} components")
        return Projection(dims=self.reduce_dim)

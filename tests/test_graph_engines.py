"""The graph engines, as the factory composes them, agree with exact search through adds,
replaces and deletes, never return removed ids, and come back equal from their saved data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from index_store.engines.engine import Engine
from index_store.engines.exact_float import ExactFloatEngine
from index_store.engines.exact_until_trained import ExactUntilTrained
from index_store.engines.factory import FAISS_GRAPH, FLOAT_ENGINES, EngineFactory
from index_store.engines.faiss_graph import FaissHnswEngine
from index_store.engines.held_out import HoldOut
from index_store.engines.hnswlib_graph import HnswlibEngine
from index_store.engines.projection import Projection
from index_store.engines.rerank import ExactRerank
from index_store.metric import Metric
from schemas.settings import Settings

DIM = 64
PCA_DIM = 56  # '+pca': the graph holds 56-d PCA projections (re-ranked from the store)
# Engine configurations under test; '+rerank' re-ranks SQ8 candidates with exact vectors.
CONFIGS = ["hnsw", "faiss-hnsw", "faiss-hnsw-sq8", "faiss-hnsw-sq8+rerank", "faiss-hnsw-sq8+pca"]


def unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def clustered(rng: np.random.Generator, n: int, centres: int = 40) -> NDArray[np.float32]:
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return unit(x)


class Store:
    """Stands in for the LMDB store of record: exact bytes by id."""

    def __init__(self) -> None:
        self.vectors: dict[str, bytes] = {}

    def fetch(self, image_ids: Sequence[str]) -> list[bytes | None]:
        return [self.vectors.get(i) for i in image_ids]


def factory(config: str, **options: Any) -> EngineFactory:
    """A small training threshold so the trained graph (not its exact staging) is exercised."""
    name = next(n for n in FLOAT_ENGINES if n == config.split("+")[0])
    reduce_dim = PCA_DIM if "+pca" in config else 0
    return EngineFactory(name, reduce_dim, **{"train_size": 500, "hold_out_every": 0, **options})


def build(config: str, store: Store, **options: Any) -> Engine:
    with_store = "+rerank" in config or "+pca" in config
    fetch = store.fetch if with_store else None
    return factory(config, **options).make(Metric.COSINE, DIM, exact_vectors=fetch)


class Twin:
    """A graph engine, the exact engine and the store, written together."""

    def __init__(self, config: str, **options: Any) -> None:
        self.store = Store()
        self.engine = build(config, self.store, **options)
        self.exact = ExactFloatEngine(DIM, Metric.COSINE)

    def upsert(self, image_id: str, vector: NDArray[np.float32]) -> None:
        raw = vector.astype(np.float32).tobytes()
        self.store.vectors[image_id] = raw
        self.engine.upsert(image_id, raw)
        self.exact.upsert(image_id, raw)

    def upsert_many(self, ids: list[str], vectors: NDArray[np.float32]) -> None:
        for image_id, v in zip(ids, vectors, strict=True):
            self.store.vectors[image_id] = v.tobytes()
            self.exact.upsert(image_id, v.tobytes())
        self.engine.upsert_many(ids, vectors.tobytes())

    def remove(self, image_id: str) -> bool:
        self.store.vectors.pop(image_id, None)
        removed = self.engine.remove(image_id)
        assert removed == self.exact.remove(image_id)
        return removed

    def recall(self, queries: NDArray[np.float32], k: int = 10) -> float:
        hits = 0
        for q in queries:
            want = {i for i, _ in self.exact.search([q.tobytes()], k)}
            got = self.engine.search([q.tobytes()], k)
            assert len(got) == min(k, len(self.exact))
            assert {i for i, _ in got} <= set(self.store.vectors)
            hits += len(want & {i for i, _ in got})
        return hits / (k * len(queries))


def churned(config: str, n: int = 3000, seed: int = 1, **options: Any) -> Twin:
    """n vectors (half one by one, half in batches), then 10% replaced and 10% removed."""
    rng = np.random.default_rng(seed)
    twin = Twin(config, **options)
    data = clustered(rng, n)
    half = n // 2
    for i in range(half):
        twin.upsert(f"img-{i}", data[i])
    for start in range(half, n, 256):
        stop = min(start + 256, n)
        twin.upsert_many([f"img-{i}" for i in range(start, stop)], data[start:stop])
    for i in rng.choice(n, n // 10, replace=False):
        twin.upsert(f"img-{i}", clustered(rng, 1)[0])
    for i in rng.choice(n, n // 10, replace=False):
        twin.remove(f"img-{i}")
    return twin


def results(engine: Engine, queries: NDArray[np.float32]) -> list[list[tuple[str, float]]]:
    return [engine.search([q.tobytes()], 10) for q in queries]


@pytest.mark.parametrize("config", CONFIGS)
def test_recall_against_exact_after_churn(config: str) -> None:
    twin = churned(config)
    assert len(twin.engine) == len(twin.exact)
    assert twin.recall(clustered(np.random.default_rng(99), 100)) >= 0.9


@pytest.mark.parametrize("config", CONFIGS)
def test_multi_query_search_is_best_over_all_queries(config: str) -> None:
    twin = churned(config, n=2000)
    queries = clustered(np.random.default_rng(5), 40)
    hits = 0
    for a, b in zip(queries[::2], queries[1::2], strict=True):
        pair = [a.tobytes(), b.tobytes()]
        want = {i for i, _ in twin.exact.search(pair, 10)}
        got = twin.engine.search(pair, 10)
        assert [d for _, d in got] == sorted(d for _, d in got)
        hits += len(want & {i for i, _ in got})
    assert hits / (10 * 20) >= 0.9


@pytest.mark.parametrize("config", ["faiss-hnsw-sq8+rerank", "faiss-hnsw-sq8+pca"])
def test_reranked_distances_are_exact(config: str) -> None:
    twin = churned(config, n=2000)
    assert twin.engine.exact_distances
    q = clustered(np.random.default_rng(3), 1)[0]
    for image_id, dist in twin.engine.search([q.tobytes()], 10):
        exact = 1.0 - float(np.frombuffer(twin.store.vectors[image_id], np.float32) @ q)
        assert dist == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_removed_ids_are_never_returned(config: str) -> None:
    rng = np.random.default_rng(2)
    twin = Twin(config)
    data = clustered(rng, 2000)
    twin.upsert_many([f"img-{i}" for i in range(2000)], data)
    removed = {f"img-{i}" for i in rng.choice(2000, 1600, replace=False)}
    for image_id in removed:
        twin.remove(image_id)
    # Query with the removed vectors themselves: their old slots are the nearest nodes.
    for i in range(0, 2000, 7):
        got = twin.engine.search([data[i].tobytes()], 10)
        assert len(got) == 10
        assert not {image_id for image_id, _ in got} & removed
    assert twin.recall(clustered(rng, 50)) >= 0.9
    assert all(twin.engine.vector_of(i) is None for i in removed)
    assert twin.engine.slots == 2000  # tombstones (faiss) or reusable slots (hnswlib)
    assert twin.engine.needs_compaction == config.startswith("faiss")


@pytest.mark.parametrize("config", CONFIGS)
def test_replace_moves_an_image_to_its_new_vector(config: str) -> None:
    rng = np.random.default_rng(4)
    twin = churned(config, n=1500)
    old, new = clustered(rng, 2)
    twin.upsert("moved", old)
    twin.upsert("moved", new)
    top_id, top_dist = twin.engine.search([new.tobytes()], 1)[0]
    assert top_id == "moved"
    assert top_dist == pytest.approx(0.0, abs=0.02)
    near_old = dict(twin.engine.search([old.tobytes()], 50))
    if "moved" in near_old:  # still findable, but at its new distance
        assert near_old["moved"] == pytest.approx(1.0 - float(old @ new), abs=0.02)
    vector = twin.engine.vector_of("moved")
    assert vector is not None
    if config != "faiss-hnsw-sq8":
        assert vector == new.tobytes()
    else:  # SQ8 without the store decodes its 8-bit code
        np.testing.assert_allclose(np.frombuffer(vector, np.float32), new, atol=0.02)
    assert len(twin.engine) == len(twin.exact)


def test_hnswlib_reuses_removed_slots_under_churn() -> None:
    rng = np.random.default_rng(6)
    twin = Twin("hnsw")
    live = [f"img-{i}" for i in range(1000)]
    for image_id in live:
        twin.upsert(image_id, clustered(rng, 1)[0])
    for step in range(4000):  # 4x the index size in replaces, and deletes + inserts
        slot = int(rng.integers(0, len(live)))
        if rng.random() < 0.5:
            twin.upsert(live[slot], clustered(rng, 1)[0])  # replace
        else:
            assert twin.remove(live[slot])
            live[slot] = f"new-{step}"
            twin.upsert(live[slot], clustered(rng, 1)[0])
    assert len(twin.engine) == len(twin.exact) == len(live)
    assert twin.engine.slots == len(live)  # removed slots reused, replaces in place
    assert not twin.engine.needs_compaction
    assert twin.recall(clustered(rng, 50)) >= 0.9


@pytest.mark.parametrize("config", CONFIGS)
def test_saved_data_comes_back_equal_and_keeps_taking_writes(config: str, tmp_path: Path) -> None:
    twin = churned(config, n=2000)
    if config.startswith("faiss"):
        assert twin.engine.slots > len(twin.engine)  # tombstones travel with the data
    queries = clustered(np.random.default_rng(8), 30)
    twin.engine.save(tmp_path)
    loaded = twin.engine.restored(tmp_path)
    assert type(loaded) is type(twin.engine)
    assert loaded.snapshot_format == twin.engine.snapshot_format
    assert len(loaded) == len(twin.engine) and loaded.slots == twin.engine.slots
    assert results(loaded, queries) == results(twin.engine, queries)
    for image_id in list(twin.store.vectors)[:20]:
        assert loaded.vector_of(image_id) == twin.engine.vector_of(image_id)
    # The loaded engine keeps taking writes: reuse of free slots, replace, remove.
    twin.engine = loaded
    rng = np.random.default_rng(9)
    for i in range(300):
        twin.upsert(f"new-{i}", clustered(rng, 1)[0])
        twin.remove(f"img-{i}")
    assert len(loaded) == len(twin.exact)
    assert twin.recall(queries) >= 0.9


def test_exact_until_trained_then_the_graph(tmp_path: Path) -> None:
    twin = Twin("faiss-hnsw-sq8+rerank", train_size=200)
    rng = np.random.default_rng(10)
    data = clustered(rng, 300)
    for i in range(150):
        twin.upsert(f"img-{i}", data[i])
    twin.remove("img-3")
    engine = twin.engine
    assert isinstance(engine, ExactRerank) and isinstance(engine.inner, ExactUntilTrained)
    staged = engine.inner
    assert not staged.trained and staged.exact_distances
    q = data[7].tobytes()
    assert engine.search([q], 5) == twin.exact.search([q], 5)  # exact while staging
    engine.save(tmp_path)
    loaded = engine.restored(tmp_path)
    got, want = loaded.search([q], 5), engine.search([q], 5)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [d for _, d in got] == pytest.approx([d for _, d in want], abs=1e-6)
    twin.upsert_many([f"img-{i}" for i in range(150, 300)], data[150:])
    assert staged.trained and not staged.exact_distances
    assert len(engine) == 299
    assert twin.recall(data[::10]) >= 0.9


def test_a_bulk_upsert_across_the_training_threshold_keeps_every_vector() -> None:
    twin = Twin("faiss-hnsw-sq8+rerank", train_size=200)
    data = clustered(np.random.default_rng(20), 400)
    ids = [f"img-{i}" for i in range(400)]
    twin.upsert_many(ids[:150], data[:150])
    twin.upsert_many(ids[100:], data[100:])  # 50 of them already staged
    engine = twin.engine
    assert isinstance(engine, ExactRerank) and isinstance(engine.inner, ExactUntilTrained)
    assert len(engine) == 400 and engine.inner.trained
    assert all(twin.engine.vector_of(i) == twin.store.vectors[i] for i in ids)
    assert twin.recall(data[::10]) >= 0.9


@pytest.mark.parametrize("config", CONFIGS)
def test_exclude_and_max_distance(config: str) -> None:
    twin = churned(config, n=1500)
    q = clustered(np.random.default_rng(12), 1)[0].tobytes()
    first = twin.engine.search([q], 10)
    skip = [i for i, _ in first[:5]]
    again = twin.engine.search([q], 10, exclude=[*skip, "never-indexed"])
    assert len(again) == 10
    assert not set(skip) & {i for i, _ in again}
    cutoff = first[4][1]
    assert all(d <= cutoff for _, d in twin.engine.search([q], 10, max_distance=cutoff))
    assert twin.engine.search([q], 0) == []
    assert twin.engine.search([], 10) == []


def test_rerank_survives_store_lagging_behind_the_engine() -> None:
    twin = churned("faiss-hnsw-sq8+rerank", n=1500)
    q = clustered(np.random.default_rng(13), 1)[0].tobytes()
    top = [i for i, _ in twin.engine.search([q], 10)]
    for image_id in top[:3]:  # deleted from the store, not yet from the engine
        del twin.store.vectors[image_id]
    assert {i for i, _ in twin.engine.search([q], 10)} == set(top)


def test_factory_composes_engines_from_the_configuration() -> None:
    def fetch(ids: Sequence[str]) -> list[bytes | None]:
        return [None] * len(ids)

    default = EngineFactory().make(Metric.COSINE, 512, exact_vectors=fetch)
    assert isinstance(default, HoldOut) and isinstance(default.inner, ExactRerank)
    assert isinstance(default.inner.inner, ExactUntilTrained)
    graph = default.inner.inner.inner
    assert isinstance(graph, FaissHnswEngine) and graph.quantised
    assert graph.needs_training and graph.projection.chosen_at_training
    # Without the store there is nothing to re-rank or project with.
    bare = EngineFactory().make(Metric.COSINE, 512)
    assert isinstance(bare, ExactUntilTrained) and bare.snapshot_format["reduce_to"] is None
    flat = EngineFactory("faiss-hnsw", reduce_dim=0, hold_out_every=0).make(
        Metric.COSINE, 8, exact_vectors=fetch
    )
    assert isinstance(flat, FaissHnswEngine) and flat.exact_distances
    assert isinstance(EngineFactory("hnsw").make(Metric.COSINE, 8), HnswlibEngine)
    assert isinstance(EngineFactory("exact").make(Metric.COSINE, 8), ExactFloatEngine)
    assert isinstance(EngineFactory().make(Metric.L1, 8), ExactFloatEngine)
    hamming = EngineFactory().make(Metric.HAMMING, 576 * 3, codes_per_item=3)
    assert hamming.snapshot_format == {"engine": "hamming", "code_bytes": 72, "codes_per_item": 3}
    with pytest.raises(ValueError):
        EngineFactory("annoy").make(Metric.COSINE, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EngineFactory(reduce_dim=64, train_size=32).make(Metric.COSINE, 512, exact_vectors=fetch)
    with pytest.raises(ValueError):
        EngineFactory("hnsw").make(Metric.COSINE, 8).upsert("a", b"\x00" * 12)
    with pytest.raises(ValueError):
        EngineFactory("hnsw").make(Metric.COSINE, 8).upsert_many(["a", "a"], bytes(64))
    with pytest.raises(ValueError):
        EngineFactory().make(Metric.COSINE, 8).upsert_many(["a", "b"], bytes(60))


def test_the_factory_is_bound_to_the_settings() -> None:
    settings = Settings(_env_file=None, vector_engine="hnsw", vector_reduce_dim=32)
    factory = EngineFactory.from_settings(settings)
    assert (factory.float_engine, factory.reduce_dim) == ("hnsw", 32)
    assert EngineFactory.from_settings(Settings(_env_file=None)) == EngineFactory()


def test_projected_graph_keeps_cosine_order_when_vectors_share_a_direction() -> None:
    # CLIP-like: every vector leans on one common direction, so centring (which PCA does)
    # changes inner products; the projected graph must still rank by cosine.
    rng = np.random.default_rng(21)
    common = unit(rng.standard_normal(DIM).astype(np.float32))
    data = unit(2.0 * common + clustered(rng, 3000))
    twin = Twin("faiss-hnsw-sq8+pca")
    twin.upsert_many([f"img-{i}" for i in range(len(data))], data)
    queries = unit(2.0 * common + clustered(np.random.default_rng(22), 50))
    assert twin.recall(queries) >= 0.95
    for q in queries[:5]:  # re-ranked: the distances are the exact ones
        got = twin.engine.search([q.tobytes()], 5)
        want = dict(twin.exact.search([q.tobytes()], 50))
        for image_id, distance in got:
            assert distance == pytest.approx(want[image_id], abs=1e-5)


def test_a_projection_chosen_at_training_keeps_what_the_data_needs() -> None:
    rng = np.random.default_rng(7)
    # Signal in 20 dimensions (projected to 256) plus faint noise: about 20 dimensions suffice.
    latent = rng.standard_normal((2_000, 20)) @ rng.standard_normal((20, 256))
    narrow = latent + 0.01 * rng.standard_normal((2_000, 256))
    # Variance spread evenly over every dimension: projecting would lose most of it.
    wide = rng.standard_normal((2_000, 256))
    auto = Projection(keep_variance=0.95)
    chosen = {}
    for name, data in (("narrow", narrow), ("wide", wide)):
        vectors = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
        graph = FaissHnswEngine(256, FAISS_GRAPH, projection=auto)
        graph.train(vectors)
        graph.upsert_many([f"v{i}" for i in range(len(vectors))], vectors.tobytes())
        chosen[name] = graph.projected_to
        # Either way the graph finds a vector's own neighbourhood.
        assert graph.search([vectors[5].tobytes()], 1)[0][0] == "v5"
    assert chosen["narrow"] is not None and 20 <= chosen["narrow"] <= 32
    assert (
        chosen["wide"] is None
        and not FaissHnswEngine(256, FAISS_GRAPH, quantised=False, projection=auto).exact_distances
    )  # unknown until trained

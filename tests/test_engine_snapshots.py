"""Graph engines inside a FeatureIndex: snapshots reload with the configured search settings,
a snapshot of another engine, layout or older format is rebuilt from the store, compaction
rebuilds from the store, and a crash while checkpointing loses nothing."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from index_store.engines.engine import Engine
from index_store.engines.exact_float import ExactFloatEngine
from index_store.engines.exact_until_trained import ExactUntilTrained
from index_store.engines.factory import EngineFactory, FloatEngineName
from index_store.engines.faiss_graph import Compaction, FaissHnswEngine
from index_store.engines.graph import GraphSettings
from index_store.engines.hnswlib_graph import HnswlibEngine
from index_store.engines.rerank import ExactRerank
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import Change, Delete, FeatureStore, ImageRecord, Upsert
from index_store.metric import Metric
from tests.test_graph_engines import DIM, PCA_DIM, clustered

RECORD = ImageRecord(bucket="b", key="k.jpg")


def upserts(data: np.ndarray, ids: range, prefix: str = "img") -> list[Change]:
    return [Upsert(f"{prefix}-{i}", data[i].tobytes(), RECORD) for i in ids]


def make(store: FeatureStore, name: str, factory: EngineFactory) -> Engine:
    return factory.make(Metric.COSINE, DIM, exact_vectors=partial(store.vectors_of, name))


def faiss_graph(engine: Engine) -> FaissHnswEngine:
    """The graph inside the factory's wrappers."""
    while isinstance(engine, ExactRerank | ExactUntilTrained):
        engine = engine.inner
    assert isinstance(engine, FaissHnswEngine)
    return engine


@pytest.mark.parametrize("name", ["hnsw", "faiss-hnsw-sq8"])
def test_engines_checkpoint_and_reload_through_the_index(
    name: FloatEngineName, tmp_path: Path
) -> None:
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(14), 1200)
    factory = EngineFactory(name, train_size=300)
    index = FeatureIndex(store, "clip", make(store, "clip", factory), tmp_path / "snap")
    index.apply(upserts(data, range(1200)), {})
    index.apply([Delete(f"img-{i}") for i in range(100)], {})
    assert index.checkpoint()
    q = [data[500].tobytes()]
    before = [(n.image_id, n.distance) for n in index.search(q, 10)]
    assert before[0][0] == "img-500"
    assert all(n.record == RECORD for n in index.search(q, 10))
    reopened = FeatureIndex(store, "clip", make(store, "clip", factory), tmp_path / "snap")
    with capture_logs() as logs:
        assert reopened.load() == 1100
    assert any(e["event"] == "index.loaded" and e["source"].startswith("snapshot") for e in logs)
    assert [(n.image_id, n.distance) for n in reopened.search(q, 10)] == before
    store.close()


@pytest.mark.parametrize("name", ["hnsw", "faiss-hnsw-sq8"])
def test_a_reloaded_snapshot_searches_with_the_configured_settings(
    name: FloatEngineName, tmp_path: Path
) -> None:
    """A snapshot brings the data; how to search it (ef, re-rank depth, compaction policy)
    comes from the configuration, so a changed default reaches an existing indexer."""
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(17), 600)
    old = EngineFactory(
        name,
        graph=GraphSettings(m=16, ef_construction=100, ef_search=40),
        rerank_depth=2,
        train_size=300,
        compaction=Compaction(fraction=0.5, minimum=50),
        hold_out_every=0,
    )
    index = FeatureIndex(store, "clip", make(store, "clip", old), tmp_path / "snap")
    index.apply(upserts(data, range(600)), {})
    assert index.checkpoint()

    configured = EngineFactory(
        name,
        graph=GraphSettings(m=16, ef_construction=100, ef_search=96),
        rerank_depth=6,
        train_size=300,
        compaction=Compaction(fraction=0.1, minimum=500),
        hold_out_every=0,
    )
    engine = make(store, "clip", configured)
    reopened = FeatureIndex(store, "clip", engine, tmp_path / "snap")
    with capture_logs() as logs:
        assert reopened.load() == 600
    assert any(e["event"] == "index.loaded" and e["source"].startswith("snapshot") for e in logs)
    loaded = reopened.engine
    assert loaded is not engine
    if isinstance(loaded, HnswlibEngine):
        assert loaded.ef_search == 96
    else:
        assert isinstance(loaded, ExactRerank) and loaded.depth == 6
        graph = faiss_graph(loaded)
        assert graph.ef_search == 96
        assert graph.compaction == Compaction(fraction=0.1, minimum=500)
    store.close()


def test_switching_the_engine_reloads_from_the_store(tmp_path: Path) -> None:
    """A snapshot another engine or layout wrote is not used: the store fills the new one."""
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(15), 800)
    exact = FeatureIndex(store, "clip", ExactFloatEngine(DIM, Metric.COSINE), tmp_path / "snap")
    exact.apply(upserts(data, range(800)), {})
    assert exact.checkpoint()
    q = [data[42].tobytes()]
    want = [n.image_id for n in exact.search(q, 5)]

    unprojected = EngineFactory(reduce_dim=0, train_size=300)
    projected = EngineFactory(reduce_dim=PCA_DIM, train_size=300)
    for factory in (unprojected, projected):
        switched = FeatureIndex(store, "clip", make(store, "clip", factory), tmp_path / "snap")
        with capture_logs() as logs:
            assert switched.load() == 800
        unusable = [e for e in logs if e["event"] == "index.snapshot_unusable"]
        assert unusable and "configured" in unusable[0]["error"]
        assert any(e["event"] == "index.loaded" and e["source"] == "store" for e in logs)
        assert [n.image_id for n in switched.search(q, 5)] == want
        assert switched.checkpoint()  # written with the new engine from now on
        again = FeatureIndex(store, "clip", make(store, "clip", factory), tmp_path / "snap")
        with capture_logs() as logs:
            assert again.load() == 800
        assert not [e for e in logs if e["event"] == "index.snapshot_unusable"]
    store.close()


def test_a_snapshot_of_an_older_format_is_rebuilt_from_the_store(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(18), 300)
    factory = EngineFactory(reduce_dim=PCA_DIM, train_size=100)
    index = FeatureIndex(store, "clip", make(store, "clip", factory), tmp_path / "snap")
    index.apply(upserts(data, range(300)), {})
    # What an older version left: its own files, a manifest without an engine layout.
    old = tmp_path / "snap" / f"{store.seq('clip'):012d}"
    old.mkdir(parents=True)
    (old / "ann.json").write_text('{"format": "lookalike-ann-checkpoint/1"}')
    (old / "MANIFEST.json").write_text(json.dumps({"index": "clip", "count": 300, "seq": 300}))
    again = FeatureIndex(store, "clip", make(store, "clip", factory), tmp_path / "snap")
    with capture_logs() as logs:
        assert again.load() == 300
    assert [e["event"] for e in logs if e["event"].startswith("index.")] == [
        "index.snapshot_unusable",
        "index.projection_fitted",
        "index.loaded",
    ]
    assert again.search([data[7].tobytes()], 1)[0].image_id == "img-7"
    store.close()


def test_compaction_rebuilds_from_the_store_and_keeps_answering(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(16), 3000)
    index = FeatureIndex(store, "c", make(store, "c", EngineFactory(train_size=500)))
    index.apply(upserts(data, range(3000)), {})
    index.apply([Delete(f"img-{i}") for i in range(0, 3000, 2)], {})  # 1,500 tombstones
    assert index.engine.slots == 3000 and index.engine.needs_compaction
    q = [data[1].tobytes()]
    before = [n.image_id for n in index.search(q, 10)]
    assert index.compact_if_needed()
    assert not index.compact_if_needed()
    assert index.engine.slots == len(index) == 1500
    assert [n.image_id for n in index.search(q, 10)] == before
    store.close()


def test_churn_keeps_memory_bounded_through_compaction(tmp_path: Path) -> None:
    """Replaces and deletes leave tombstones; the checkpoint loop's compaction bounds them."""
    store = FeatureStore(tmp_path / "lmdb")
    rng = np.random.default_rng(6)
    factory = EngineFactory(train_size=500, compaction=Compaction(fraction=0.25, minimum=200))
    index = FeatureIndex(store, "c", make(store, "c", factory))
    exact = ExactFloatEngine(DIM, Metric.COSINE)
    live = [f"img-{i}" for i in range(1000)]
    first = clustered(rng, 1000)
    index.apply(upserts(first, range(1000)), {})
    exact.upsert_many(live, first.tobytes())
    compactions = 0
    for batch_no in range(40):  # 4x the index size in replaces, and deletes + inserts
        batch: list[Change] = []
        for step in range(100):
            slot = int(rng.integers(0, len(live)))
            vector = clustered(rng, 1)[0].tobytes()
            if rng.random() >= 0.5:
                batch.append(Delete(live[slot]))
                exact.remove(live[slot])
                live[slot] = f"new-{batch_no}-{step}"
            batch.append(Upsert(live[slot], vector, RECORD))
            exact.upsert(live[slot], vector)
        index.apply(batch, {})
        assert index.engine.slots <= len(index) + max(200, 0.25 * len(index)) + 200
        compactions += index.compact_if_needed()
    assert compactions > 0
    assert len(index) == len(exact) == len(live)
    queries = clustered(rng, 50)
    hits = sum(
        len(
            {i for i, _ in exact.search([q.tobytes()], 10)}
            & {n.image_id for n in index.search([q.tobytes()], 10)}
        )
        for q in queries
    )
    assert hits / 500 >= 0.9
    store.close()


def test_a_crash_while_checkpointing_leaves_the_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(11), 1500)
    factory = EngineFactory(train_size=300)
    index = FeatureIndex(store, "c", make(store, "c", factory), tmp_path / "snap")
    index.apply(upserts(data, range(1000)), {})
    assert index.checkpoint()
    index.apply([Delete(f"img-{i}") for i in range(300)], {})
    index.apply(upserts(data, range(1000, 1500)), {})

    def power_cut(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="power cut"):
        index.checkpoint()
    monkeypatch.undo()
    queries = [data[i].tobytes() for i in range(0, 1500, 50)]
    live = [[n.image_id for n in index.search([q], 10)] for q in queries]
    reopened = FeatureIndex(store, "c", make(store, "c", factory), tmp_path / "snap")
    with capture_logs() as logs:
        assert reopened.load() == 1200
    assert any(e.get("source") == "snapshot 1000 + 800 later changes" for e in logs)
    assert [[n.image_id for n in reopened.search([q], 10)] for q in queries] == live
    assert reopened.checkpoint()  # and the leftovers go with the next checkpoint
    assert [p.name for p in (tmp_path / "snap").iterdir()] == [f"{1800:012d}"]
    store.close()

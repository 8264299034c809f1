"""Recall measured against the store of record, and the effort chosen to keep it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from index_store.engines.engine import Effort
from index_store.engines.factory import EngineFactory
from index_store.engines.graph import GraphSettings
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert
from index_store.metric import Metric
from index_store.recall import RecallKeeper, measure, probe

DIM = 96
NAME = "clip-test"
# A sparse graph built with a narrow beam: small beams at search time miss neighbours here.
# One image in 10 held out of the graph: 400 unseen queries to measure with.
WEAK_GRAPH = EngineFactory(
    train_size=1_000,
    graph=GraphSettings(m=8, ef_construction=32, ef_search=16),
    hold_out_every=10,
)


def wide(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    """Vectors whose variance spreads over most dimensions (a slow spectrum): hard for a
    graph at a small beam, impossible for a small projection."""
    scale = np.arange(1, DIM + 1, dtype=np.float32) ** -0.3
    x = rng.standard_normal((n, DIM)).astype(np.float32) * scale
    out: NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def filled(
    tmp_path: Path, factory: EngineFactory, n: int = 4_000
) -> tuple[FeatureIndex, FeatureStore]:
    store = FeatureStore(tmp_path)
    engine = factory.make(Metric.COSINE, DIM, exact_vectors=lambda ids: store.vectors_of(NAME, ids))
    index = FeatureIndex(store, NAME, engine)
    vectors = wide(np.random.default_rng(3), n)
    record = ImageRecord(bucket="b", key="k")
    changes = [Upsert(f"b/{i}", v.tobytes(), record) for i, v in enumerate(vectors)]
    for start in range(0, n, 500):
        index.apply(changes[start : start + 500], {"t/0": start + 500})
    return index, store


def held_out_recall(index: FeatureIndex, store: FeatureStore) -> float:
    sample = probe(index, store, 150, random.Random(99))
    assert len(sample.ids) == 150
    return measure(index, lambda ids: store.vectors_of(NAME, ids), sample).recall


def test_an_exact_engine_has_nothing_to_tune(tmp_path: Path) -> None:
    index, store = filled(tmp_path, EngineFactory("exact"), n=300)
    assert index.effort is None
    assert RecallKeeper(index, store).check() is None


def test_images_held_out_of_the_graph_are_still_found(tmp_path: Path) -> None:
    index, _ = filled(tmp_path, WEAK_GRAPH, n=1_500)
    ((held_id, vector),) = index.held_out_sample(1, random.Random(5))
    assert index.search([vector], 1)[0].image_id == held_id  # served beside the graph
    assert all(hit[0] != held_id for hit in index.graph_nearest(vector, 10))
    assert len(index) == 1_500


def test_a_new_engine_gets_an_effort_that_reaches_the_target_on_unseen_queries(
    tmp_path: Path,
) -> None:
    index, store = filled(tmp_path, WEAK_GRAPH)
    index.effort = Effort(ef=16, depth=2)
    too_little = held_out_recall(index, store)
    report = RecallKeeper(index, store, target=0.95, seed=1).check()
    assert report is not None and report.recall >= 0.95
    assert index.effort == report.effort != Effort(ef=16, depth=2)
    assert too_little < 0.95 <= held_out_recall(index, store) + 0.02  # 150 unseen queries


def test_the_effort_is_chosen_again_when_measured_recall_falls(tmp_path: Path) -> None:
    index, store = filled(tmp_path, WEAK_GRAPH)
    keeper = RecallKeeper(index, store, target=0.95, check_queries=20, seed=2)
    chosen = keeper.check()
    assert chosen is not None
    index.effort = Effort(ef=16, depth=2)  # as if the collection had outgrown the beam
    reports = [keeper.check() for _ in range(4)]
    assert index.effort != Effort(ef=16, depth=2)
    last = reports[-1]
    assert last is not None and last.recall >= 0.95


def test_held_out_images_come_back_from_a_snapshot(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "lmdb")

    def index_with_snapshots() -> FeatureIndex:
        engine = WEAK_GRAPH.make(
            Metric.COSINE, DIM, exact_vectors=lambda ids: store.vectors_of(NAME, ids)
        )
        return FeatureIndex(store, NAME, engine, tmp_path / "snapshots")

    index = index_with_snapshots()
    vectors = wide(np.random.default_rng(8), 1_500)
    record = ImageRecord(bucket="b", key="k")
    index.apply([Upsert(f"b/{i}", v.tobytes(), record) for i, v in enumerate(vectors)], {})
    held = index.held_out_sample(1_000, random.Random(1))
    assert index.checkpoint()

    reopened = index_with_snapshots()
    assert reopened.load() == 1_500
    assert reopened.held_out_sample(1_000, random.Random(1)) == held
    assert reopened.search([held[0][1]], 1)[0].image_id == held[0][0]

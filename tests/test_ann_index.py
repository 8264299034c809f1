"""Approximate float-vector indexes agree with exact search through adds, replaces and deletes,
never return removed ids, stay bounded under churn, and checkpoint safely."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from index_store.ann_index import (
    ANN_KINDS,
    FaissHnswIndex,
    HnswIndex,
    load_ann_index,
    make_ann_index,
)
from index_store.exact_vector_index import ExactVectorIndex
from index_store.feature_index import FeatureIndex, SearchStructure, make_structure
from index_store.lmdb_store import Delete, FeatureStore, ImageRecord, Upsert
from index_store.metric import Metric

DIM = 64
# Engine configurations under test; "+rerank" re-ranks SQ8 candidates with exact vectors.
# "+pca" graphs hold 56-d PCA projections (re-ranked from the store).
KINDS = ["hnsw", "faiss-hnsw", "faiss-hnsw-sq8", "faiss-hnsw-sq8+rerank", "faiss-hnsw-sq8+pca"]
PCA_DIM = 56

Index = HnswIndex | FaissHnswIndex


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


def build(kind: str, store: Store | None = None, **options: Any) -> Index:
    if kind == "faiss-hnsw-sq8+pca":
        options = {"reduce_to": PCA_DIM, **options}
    if kind in ("faiss-hnsw-sq8+rerank", "faiss-hnsw-sq8+pca"):
        assert store is not None
        index = make_ann_index(
            "faiss-hnsw-sq8", DIM, Metric.COSINE, fetch_exact=store.fetch, **options
        )
    else:
        index = make_ann_index(kind, DIM, Metric.COSINE, **options)
    assert isinstance(index, HnswIndex | FaissHnswIndex)
    return index


def options_for(kind: str) -> dict[str, Any]:
    # A small training threshold so the SQ8 graph (not its exact staging area) is exercised.
    return {"train_size": 500} if kind.startswith("faiss-hnsw-sq8") else {}


class Twin:
    """An approximate index, the exact index and the store, written together."""

    def __init__(self, kind: str, **options: Any) -> None:
        self.store = Store()
        self.ann = build(kind, self.store, **{**options_for(kind), **options})
        self.exact = ExactVectorIndex(DIM, Metric.COSINE)

    def upsert(self, image_id: str, vector: NDArray[np.float32]) -> None:
        raw = vector.astype(np.float32).tobytes()
        self.store.vectors[image_id] = raw
        self.ann.upsert(image_id, raw)
        self.exact.upsert(image_id, raw)

    def upsert_many(self, ids: list[str], vectors: NDArray[np.float32]) -> None:
        for image_id, v in zip(ids, vectors, strict=True):
            self.store.vectors[image_id] = v.tobytes()
            self.exact.upsert(image_id, v.tobytes())
        self.ann.upsert_many(ids, vectors)

    def remove(self, image_id: str) -> bool:
        self.store.vectors.pop(image_id, None)
        removed = self.ann.remove(image_id)
        assert removed == self.exact.remove(image_id)
        return removed

    def recall(self, queries: NDArray[np.float32], k: int = 10) -> float:
        hits = 0
        for q in queries:
            want = {i for i, _ in self.exact.search([q.tobytes()], k)}
            got = self.ann.search([q.tobytes()], k)
            assert len(got) == min(k, len(self.exact))
            assert {i for i, _ in got} <= set(self.store.vectors)
            hits += len(want & {i for i, _ in got})
        return hits / (k * len(queries))


def churned(kind: str, n: int = 3000, seed: int = 1, **options: Any) -> Twin:
    """n vectors (half one by one, half in batches), then 10% replaced and 10% removed."""
    rng = np.random.default_rng(seed)
    twin = Twin(kind, **options)
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


@pytest.mark.parametrize("kind", KINDS)
def test_recall_against_exact_after_churn(kind: str) -> None:
    twin = churned(kind)
    assert len(twin.ann) == len(twin.exact)
    queries = clustered(np.random.default_rng(99), 100)
    assert twin.recall(queries) >= 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_multi_query_search_is_best_over_all_queries(kind: str) -> None:
    twin = churned(kind, n=2000)
    queries = clustered(np.random.default_rng(5), 40)
    hits = 0
    for a, b in zip(queries[::2], queries[1::2], strict=True):
        pair = [a.tobytes(), b.tobytes()]
        want = {i for i, _ in twin.exact.search(pair, 10)}
        got = twin.ann.search(pair, 10)
        assert [d for _, d in got] == sorted(d for _, d in got)
        hits += len(want & {i for i, _ in got})
    assert hits / (10 * 20) >= 0.9


def test_reranked_distances_are_exact() -> None:
    twin = churned("faiss-hnsw-sq8+rerank", n=2000)
    q = clustered(np.random.default_rng(3), 1)[0]
    for image_id, dist in twin.ann.search([q.tobytes()], 10):
        exact = 1.0 - float(np.frombuffer(twin.store.vectors[image_id], np.float32) @ q)
        assert dist == pytest.approx(exact, abs=1e-5)


# hnswlib reuses removed slots instead of compacting: it has no compaction setting to vary.
REMOVAL_CASES = [("hnsw", False)] + [
    (kind, in_writes) for kind in KINDS if kind != "hnsw" for in_writes in (False, True)
]


@pytest.mark.parametrize(("kind", "compact_in_writes"), REMOVAL_CASES)
def test_removed_ids_are_never_returned(kind: str, compact_in_writes: bool) -> None:
    options = {} if kind == "hnsw" else {"compact_in_writes": compact_in_writes}
    rng = np.random.default_rng(2)
    twin = Twin(kind, **options)
    data = clustered(rng, 2000)
    twin.upsert_many([f"img-{i}" for i in range(2000)], data)
    removed = {f"img-{i}" for i in rng.choice(2000, 1600, replace=False)}
    for image_id in removed:
        twin.remove(image_id)
    # Query with the removed vectors themselves: their old slots are the nearest nodes.
    for i in range(0, 2000, 7):
        got = twin.ann.search([data[i].tobytes()], 10)
        assert len(got) == 10
        assert not {image_id for image_id, _ in got} & removed
    assert twin.recall(clustered(rng, 50)) >= 0.9
    assert all(twin.ann.code_of(i) is None for i in removed)


@pytest.mark.parametrize("kind", KINDS)
def test_replace_moves_an_image_to_its_new_vector(kind: str) -> None:
    rng = np.random.default_rng(4)
    twin = churned(kind, n=1500)
    old, new = clustered(rng, 2)
    twin.upsert("moved", old)
    twin.upsert("moved", new)
    top_id, top_dist = twin.ann.search([new.tobytes()], 1)[0]
    assert top_id == "moved"
    assert top_dist == pytest.approx(0.0, abs=0.02)
    near_old = dict(twin.ann.search([old.tobytes()], 50))
    if "moved" in near_old:  # still findable, but at its new distance
        assert near_old["moved"] == pytest.approx(1.0 - float(old @ new), abs=0.02)
    code = twin.ann.code_of("moved")
    assert code is not None
    exact = kind != "faiss-hnsw-sq8"  # SQ8 without the store decodes its 8-bit code
    if exact:
        assert code == new.tobytes()
    else:
        np.testing.assert_allclose(np.frombuffer(code, np.float32), new, atol=0.02)
    assert len(twin.ann) == len(twin.exact)


@pytest.mark.parametrize("kind", KINDS)
def test_churn_keeps_memory_bounded(kind: str) -> None:
    rng = np.random.default_rng(6)
    twin = Twin(kind, **({} if kind == "hnsw" else {"compact_min": 200}))
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
    ann = twin.ann
    assert len(ann) == len(twin.exact) == len(live)
    if isinstance(ann, HnswIndex):
        assert ann.slots == len(live)  # removed slots reused, replaces in place
        assert ann.capacity <= 1024
    else:
        assert ann.compactions > 0
        assert ann.slots <= len(ann) + max(200, 0.25 * len(ann)) + 1
    assert twin.recall(clustered(rng, 50)) >= 0.9


def results(index: Index, queries: NDArray[np.float32]) -> list[list[tuple[str, float]]]:
    return [index.search([q.tobytes()], 10) for q in queries]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    twin = churned(kind, n=2000, compact_in_writes=False) if kind != "hnsw" else churned(kind, 2000)
    if isinstance(twin.ann, FaissHnswIndex):
        assert twin.ann.tombstones > 0  # tombstones travel with the checkpoint
    queries = clustered(np.random.default_rng(8), 30)
    path = tmp_path / "snapshot"
    twin.ann.save(path)
    # As FeatureIndex reloads a snapshot: through the class, no arguments (a '+rerank' index
    # comes from a subclass bound to its store, so it keeps re-ranking).
    loaded = type(twin.ann).load(path)
    assert type(loaded) is type(twin.ann)
    assert loaded.kind == twin.ann.kind
    if isinstance(loaded, FaissHnswIndex) and isinstance(twin.ann, FaissHnswIndex):
        assert loaded.fetch_exact is twin.ann.fetch_exact
    assert len(loaded) == len(twin.ann)
    assert results(loaded, queries) == results(twin.ann, queries)
    for image_id in list(twin.store.vectors)[:20]:
        assert loaded.code_of(image_id) == twin.ann.code_of(image_id)
    # The loaded index keeps taking writes: reuse of free slots, replace, remove.
    twin.ann = loaded
    rng = np.random.default_rng(9)
    for i in range(300):
        twin.upsert(f"new-{i}", clustered(rng, 1)[0])
        twin.remove(f"img-{i}")
    assert len(loaded) == len(twin.exact)
    assert twin.recall(queries) >= 0.9


def test_staging_area_before_the_quantiser_is_trained(tmp_path: Path) -> None:
    twin = Twin("faiss-hnsw-sq8+rerank", train_size=200)
    rng = np.random.default_rng(10)
    data = clustered(rng, 300)
    for i in range(150):
        twin.upsert(f"img-{i}", data[i])
    twin.remove("img-3")
    ann = twin.ann
    assert isinstance(ann, FaissHnswIndex)
    assert not ann.trained
    q = data[7].tobytes()
    assert ann.search([q], 5) == twin.exact.search([q], 5)  # exact while staging
    ann.save(tmp_path / "staged")
    loaded = load_ann_index(tmp_path / "staged")
    got, want = loaded.search([q], 5), ann.search([q], 5)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [d for _, d in got] == pytest.approx([d for _, d in want], abs=1e-6)
    twin.upsert_many([f"img-{i}" for i in range(150, 300)], data[150:])
    assert ann.trained
    assert len(ann) == 299
    assert twin.recall(data[::10]) >= 0.9


def test_save_is_crash_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twin = churned("faiss-hnsw-sq8", n=1500)
    path = tmp_path / "snapshot"
    twin.ann.save(path)
    queries = clustered(np.random.default_rng(11), 20)
    before = results(twin.ann, queries)
    saved_files = sorted(p.name for p in path.iterdir())

    # A crash between writing the new files and switching the manifest over.
    for i in range(500):
        twin.remove(f"img-{i}")

    def crash(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        twin.ann.save(path)
    monkeypatch.undo()
    # And a torn temporary manifest from another crash.
    (path / "ann.json.tmp-dead-1").write_text('{"format": "lookal')
    assert len(list(path.iterdir())) > len(saved_files)
    assert results(load_ann_index(path), queries) == before

    # The next successful save switches over and removes the leftovers.
    twin.ann.save(path)
    assert len(list(path.iterdir())) == len(saved_files)
    reloaded = load_ann_index(path)
    assert results(reloaded, queries) == results(twin.ann, queries)
    assert len(reloaded) == len(twin.ann)


@pytest.mark.parametrize("kind", KINDS)
def test_exclude_and_max_distance(kind: str) -> None:
    twin = churned(kind, n=1500)
    q = clustered(np.random.default_rng(12), 1)[0].tobytes()
    first = twin.ann.search([q], 10)
    skip = [i for i, _ in first[:5]]
    again = twin.ann.search([q], 10, exclude=[*skip, "never-indexed"])
    assert len(again) == 10
    assert not set(skip) & {i for i, _ in again}
    cutoff = first[4][1]
    assert all(d <= cutoff for _, d in twin.ann.search([q], 10, max_distance=cutoff))
    assert twin.ann.search([q], 0) == []
    assert twin.ann.search([], 10) == []


def test_rerank_survives_store_lagging_behind_the_index() -> None:
    twin = churned("faiss-hnsw-sq8+rerank", n=1500)
    q = clustered(np.random.default_rng(13), 1)[0].tobytes()
    top = [i for i, _ in twin.ann.search([q], 10)]
    for image_id in top[:3]:  # deleted from the store, not yet from the index
        del twin.store.vectors[image_id]
    assert {i for i, _ in twin.ann.search([q], 10)} == set(top)


def test_factory() -> None:
    assert set(ANN_KINDS) >= {"exact", "hnsw", "faiss-hnsw-sq8"}
    assert isinstance(make_ann_index("exact", 8, Metric.L1), ExactVectorIndex)
    assert isinstance(make_ann_index("hnsw", 8, Metric.COSINE), HnswIndex)
    sq8 = make_ann_index("faiss-hnsw-sq8", 8, Metric.COSINE, ef_search=77)
    assert isinstance(sq8, FaissHnswIndex) and sq8.storage == "sq8" and sq8.ef_search == 77
    with pytest.raises(ValueError):
        make_ann_index("hnsw", 8, Metric.L1)
    with pytest.raises(ValueError):
        make_ann_index("annoy", 8, Metric.COSINE)
    index = make_ann_index("hnsw", 8, Metric.COSINE)
    with pytest.raises(ValueError):
        index.upsert("a", b"\x00" * 12)


def test_engines_fit_the_search_structure_protocol(tmp_path: Path) -> None:
    """Plugged into FeatureIndex: apply, checkpoint, reload from the snapshot, search."""
    store = FeatureStore(tmp_path / "lmdb")
    rng = np.random.default_rng(14)
    data = clustered(rng, 1200)
    for kind in ("hnsw", "faiss-hnsw-sq8"):
        name = f"clip-{kind}"
        fetch = partial(store.vectors_of, name)
        options = {"train_size": 300} if kind == "faiss-hnsw-sq8" else {}
        structure: SearchStructure = make_ann_index(
            kind, DIM, Metric.COSINE, fetch_exact=fetch, **options
        )
        index = FeatureIndex(store, name, structure, snapshot_dir=tmp_path / name)
        upserts = [
            Upsert(f"img-{i}", data[i].tobytes(), ImageRecord(bucket="b", key=f"{i}.jpg"))
            for i in range(1200)
        ]
        index.apply(upserts, {})
        index.apply([Delete(f"img-{i}") for i in range(100)], {})
        assert index.checkpoint()
        q = [data[500].tobytes()]
        before = [(n.image_id, n.distance) for n in index.search(q, 10)]
        assert before[0][0] == "img-500"
        reopened = FeatureIndex(
            store, name, structure.empty_like(structure), snapshot_dir=tmp_path / name
        )
        assert reopened.load() == 1100
        assert [(n.image_id, n.distance) for n in reopened.search(q, 10)] == before
    store.close()


@pytest.mark.parametrize("kind", ["hnsw", "faiss-hnsw-sq8"])
def test_a_reloaded_snapshot_searches_with_the_configured_settings(
    kind: str, tmp_path: Path
) -> None:
    """A snapshot brings the data; how to search it (ef, re-rank depth, compaction policy)
    comes from the configuration, so a changed default reaches an existing indexer."""
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(17), 600)
    fetch = partial(store.vectors_of, "clip")
    options: dict[str, Any] = {"train_size": 300} if kind != "hnsw" else {}
    old = make_ann_index(kind, DIM, fetch_exact=fetch, ef_search=40, **options)
    if isinstance(old, FaissHnswIndex):
        old.rerank, old.compact_min, old.compact_in_writes = 2, 50, True
    index = FeatureIndex(store, "clip", old, snapshot_dir=tmp_path / "snap")
    record = ImageRecord(bucket="b", key="k.jpg")
    index.apply([Upsert(f"img-{i}", data[i].tobytes(), record) for i in range(600)], {})
    assert index.checkpoint()

    configured = make_ann_index(kind, DIM, fetch_exact=fetch, ef_search=96, **options)
    if isinstance(configured, FaissHnswIndex):
        configured.rerank, configured.compact_min, configured.compact_in_writes = 6, 500, False
    reopened = FeatureIndex(store, "clip", configured, snapshot_dir=tmp_path / "snap")
    with capture_logs() as logs:
        assert reopened.load() == 600
    assert any(e["event"] == "index.loaded" and e["source"].startswith("snapshot") for e in logs)
    loaded = reopened.structure
    assert isinstance(loaded, HnswIndex | FaissHnswIndex) and loaded is not configured
    assert loaded.ef_search == 96
    if isinstance(loaded, FaissHnswIndex):
        assert (loaded.rerank, loaded.compact_min, loaded.compact_in_writes) == (6, 500, False)
    store.close()


def test_switching_the_vector_engine_reloads_from_the_store(tmp_path: Path) -> None:
    """A snapshot another engine wrote is not loadable: the store of record fills the new one."""
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(15), 800)
    exact = FeatureIndex(
        store, "clip", ExactVectorIndex(DIM, Metric.COSINE), snapshot_dir=tmp_path / "snap"
    )
    record = ImageRecord(bucket="b", key="k.jpg")
    exact.apply([Upsert(f"img-{i}", data[i].tobytes(), record) for i in range(800)], {})
    assert exact.checkpoint()
    q = [data[42].tobytes()]
    want = [n.image_id for n in exact.search(q, 5)]

    fetch = partial(store.vectors_of, "clip")
    graph = make_ann_index("faiss-hnsw-sq8", DIM, fetch_exact=fetch, train_size=300)
    assert isinstance(graph, FaissHnswIndex)
    switched = FeatureIndex(store, "clip", graph, snapshot_dir=tmp_path / "snap")
    assert switched.load() == 800
    assert [n.image_id for n in switched.search(q, 5)] == want
    assert switched.checkpoint()  # written with the new engine from now on
    again = FeatureIndex(store, "clip", graph.empty_like(graph), snapshot_dir=tmp_path / "snap")
    assert again.load() == 800
    # Turning on the PCA projection: the unprojected snapshot is not reused either.
    projected = make_ann_index(
        "faiss-hnsw-sq8", DIM, fetch_exact=fetch, train_size=300, reduce_to=PCA_DIM
    )
    assert isinstance(projected, FaissHnswIndex)
    reduced = FeatureIndex(store, "clip", projected, snapshot_dir=tmp_path / "snap")
    with capture_logs() as logs:
        assert reduced.load() == 800
    unusable = [e for e in logs if e["event"] == "index.snapshot_unusable"]
    assert unusable
    assert "'reduce_to': None}, configured" in unusable[0]["error"]
    assert f"'reduce_to': {PCA_DIM}}}" in unusable[0]["error"]
    assert any(e["event"] == "index.loaded" and e["source"] == "store" for e in logs)
    assert [n.image_id for n in reduced.search(q, 5)] == want
    assert reduced.checkpoint()
    assert FeatureIndex(store, "clip", projected.empty_like(projected), tmp_path / "snap").load()
    store.close()


def test_compaction_rebuilds_from_the_store_and_keeps_answering(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "lmdb")
    data = clustered(np.random.default_rng(16), 3000)
    graph = make_structure(
        Metric.COSINE,
        DIM,
        vector_index="faiss-hnsw-sq8",
        fetch_exact=partial(store.vectors_of, "c"),
    )
    assert isinstance(graph, FaissHnswIndex)
    graph.train_size = 500
    index = FeatureIndex(store, "c", graph)
    record = ImageRecord(bucket="b", key="k.jpg")
    index.apply([Upsert(f"img-{i}", data[i].tobytes(), record) for i in range(3000)], {})
    index.apply([Delete(f"img-{i}") for i in range(0, 3000, 2)], {})  # 1,500 tombstones
    assert graph.tombstones == 1500  # not compacted inside the delete
    q = [data[1].tobytes()]
    before = [n.image_id for n in index.search(q, 10)]
    assert index.compact_if_needed()
    assert not index.compact_if_needed()
    assert [n.image_id for n in index.search(q, 10)] == before
    assert len(index) == 1500
    store.close()


def test_projected_graph_keeps_cosine_order_when_vectors_share_a_direction() -> None:
    # CLIP-like: every vector leans on one common direction, so centring (which PCA does)
    # changes inner products; the projected graph must still rank by cosine.
    rng = np.random.default_rng(21)
    common = unit(rng.standard_normal(DIM).astype(np.float32))
    data = unit(2.0 * common + clustered(rng, 3000))
    twin = Twin("faiss-hnsw-sq8+pca")
    twin.upsert_many([f"img-{i}" for i in range(len(data))], data)
    ann = twin.ann
    assert isinstance(ann, FaissHnswIndex) and ann.trained
    queries = unit(2.0 * common + clustered(np.random.default_rng(22), 50))
    assert twin.recall(queries) >= 0.95
    for q in queries[:5]:  # re-ranked: the distances are the exact ones
        got = ann.search([q.tobytes()], 5)
        want = dict(twin.exact.search([q.tobytes()], 50))
        for image_id, distance in got:
            assert distance == pytest.approx(want[image_id], abs=1e-5)


def test_projection_is_refitted_by_compaction_and_survives_a_checkpoint(tmp_path: Path) -> None:
    twin = churned("faiss-hnsw-sq8+pca", n=2000, compact_in_writes=False)
    ann = twin.ann
    assert isinstance(ann, FaissHnswIndex) and ann.tombstones > 0
    queries = clustered(np.random.default_rng(23), 30)
    ann.compact()
    assert ann.tombstones == 0 and ann.compactions == 1
    assert twin.recall(queries) >= 0.9
    ann.save(tmp_path / "snapshot")
    loaded = type(ann).load(tmp_path / "snapshot")
    assert loaded.reduce_to == PCA_DIM
    assert results(loaded, queries) == results(ann, queries)

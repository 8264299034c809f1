"""The LMDB-backed feature index: the store decides what a change does (idempotent), the engine
mirrors it, and what it applied survives a reopen."""

from __future__ import annotations

from pathlib import Path

from index_store.engines.hamming import HammingEngine
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import Applied, Delete, FeatureStore, ImageRecord, Reject, Upsert


def upsert(image_id: str, code: bytes, etag: str) -> Upsert:
    bucket, _, key = image_id.partition("/")
    return Upsert(image_id, code, ImageRecord(bucket=bucket, key=key, etag=etag))


def test_replayed_batch_changes_nothing(tmp_path: Path) -> None:
    index = FeatureIndex(FeatureStore(tmp_path), "phash-test", HammingEngine(8))
    batch = [upsert("b/1", bytes(8), "e1"), upsert("b/2", bytes([1] * 8), "e2")]
    assert len(index.apply(batch, {"t/0": 2})) == 2
    assert index.apply(batch, {"t/0": 2}) == []  # same ids, same eTags: nothing new
    assert len(index) == 2


def test_last_change_per_image_in_a_batch_wins(tmp_path: Path) -> None:
    index = FeatureIndex(FeatureStore(tmp_path), "phash-test", HammingEngine(8))
    index.apply([upsert("b/1", bytes(8), "e1"), Delete("b/1")], {"t/0": 2})
    assert len(index) == 0 and index.record("b/1") is None
    index.apply([Delete("b/2"), upsert("b/2", bytes(8), "e2")], {"t/0": 4})
    assert index.vector_of("b/2") == bytes(8)


def test_reopened_store_has_vectors_records_and_offsets(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    index = FeatureIndex(store, "phash-test", HammingEngine(8))
    index.apply([upsert("b/1", bytes(8), "e1"), upsert("b/2", bytes([3] * 8), "e2")], {"t/0": 7})
    index.apply([Delete("b/1")], {"t/0": 8, "t/1": 3})
    store.close()

    reopened = FeatureStore(tmp_path)
    again = FeatureIndex(reopened, "phash-test", HammingEngine(8))
    assert again.load() == 1
    assert again.vector_of("b/2") == bytes([3] * 8)
    assert again.record("b/2") is not None and again.record("b/2").etag == "e2"  # type: ignore[union-attr]
    assert reopened.offsets() == {"t/0": 8, "t/1": 3}


def test_a_rejected_version_drops_the_older_one_and_is_remembered_until_replaced(
    tmp_path: Path,
) -> None:
    store = FeatureStore(tmp_path)
    index = FeatureIndex(store, "phash-test", HammingEngine(8))
    index.apply([upsert("b/1", bytes(8), "e1")], {"t/0": 1})
    index.apply([Reject("b/1", "e2", "undecodable")], {"t/0": 2})  # overwritten with garbage
    assert index.vector_of("b/1") is None and index.record("b/1") is None
    assert dict(store.rejections("phash-test")) == {"b/1": "e2"}
    assert index.apply([Reject("b/1", "e2", "undecodable")], {"t/0": 3}) == []
    assert store.seq("phash-test") == 2  # the replayed rejection changed nothing

    index.apply([upsert("b/1", bytes([7] * 8), "e3")], {"t/0": 4})  # a good upload again
    assert index.vector_of("b/1") == bytes([7] * 8)
    assert dict(store.rejections("phash-test")) == {}
    index.apply([Reject("b/1", "e4", "too big"), Delete("b/1")], {"t/0": 6})
    assert dict(store.rejections("phash-test")) == {} and len(index) == 0


def test_the_store_applies_and_returns_only_the_changes_that_take_effect(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    a, b = upsert("b/a", bytes(8), "e1"), upsert("b/b", bytes(8), "e1")
    assert store.apply("h", [a, b, Delete("b/never")], {"t/0": 3}) == Applied(2, [a, b])
    assert store.apply("h", [a, b], {"t/0": 5}) == Applied(2, [])  # a replay
    assert store.offsets() == {"t/0": 5}  # offsets move on all the same
    new_vector, new_etag = upsert("b/a", bytes([1] * 8), "e1"), upsert("b/b", bytes(8), "e2")
    assert store.apply("h", [new_vector, new_etag], {}).changes == [new_vector, new_etag]
    reject = Reject("b/a", None, "undecodable")
    assert store.apply("h", [reject], {}) == Applied(5, [reject])
    assert store.apply("h", [reject], {}).changes == []  # a replayed rejection
    assert store.apply("h", [Delete("b/a")], {}).changes == [Delete("b/a")]  # forgets it
    assert store.apply("h", [Delete("b/a")], {}).changes == []
    assert store.changed_since("h", 0) == {"b/a", "b/b"}
    assert store.seq("h") == 6


def test_search_hits_come_with_their_records(tmp_path: Path) -> None:
    index = FeatureIndex(FeatureStore(tmp_path), "phash-test", HammingEngine(8))
    index.apply([upsert("b/1", bytes(8), "e1"), upsert("b/2", bytes([1] * 8), "e2")], {})
    hits = index.search([bytes(8)], 5)
    assert [(n.image_id, n.distance) for n in hits] == [("b/1", 0.0), ("b/2", 8.0)]
    assert [n.record.etag if n.record else None for n in hits] == ["e1", "e2"]

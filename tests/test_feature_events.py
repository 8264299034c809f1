"""What the indexer does with a batch of feature events, broker-free: a real store and index
on disk, fakes for the dead-letter sink and the alert topic (the module's boundaries)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from structlog.testing import capture_logs

from consumers.features.catalog import PHASH
from consumers.indexer.feature_events import FeatureEventApplier
from consumers.kafka.runner import Record
from index_store.engines.hamming import HammingEngine
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.settings import Settings
from schemas.similarity import SimilarityResult

SETTINGS = Settings(_env_file=None)
TP = TopicPartition(SETTINGS.features_topic("phash"), 2)


def record(offset: int, value: bytes) -> Record:
    return ConsumerRecord(TP.topic, TP.partition, offset, 0, 0, None, value, None, 0, 0, ())


def upsert(key: str, code: bytes, etag: str = "e1", **changes: object) -> bytes:
    fields: dict[str, object] = {
        "op": FeatureOp.UPSERT,
        "image_id": f"images/{key}",
        "bucket": "images",
        "key": key,
        "feature": "phash",
        "feature_version": PHASH.version,
        "etag": etag,
        "size": 100,
        "vector_kind": VectorKind.BITS,
        "dim": PHASH.dim,
        "vector": code,
    }
    fields.update(changes)
    return FeatureEvent.model_validate(fields).to_bytes()


def code(fill: int) -> bytes:
    return bytes([fill]) * PHASH.vector_bytes


class Sink:
    def __init__(self) -> None:
        self.letters: list[tuple[int, str]] = []

    async def send(self, rec: Record, reason: str) -> None:
        self.letters.append((rec.offset, reason))


class Alerts:
    def __init__(self) -> None:
        self.results: list[SimilarityResult] = []

    async def publish(
        self, results: list[SimilarityResult], traces: Mapping[str, str | None] | None = None
    ) -> None:
        self.results.extend(results)


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts]:
    store = FeatureStore(tmp_path)
    index = FeatureIndex(store, PHASH.index_name, HammingEngine(PHASH.vector_bytes))
    sink, alerts = Sink(), Alerts()
    applier = FeatureEventApplier(SETTINGS, {"phash": PHASH}, {"phash": index}, sink, alerts)
    return applier, store, index, sink, alerts


async def test_upserts_are_indexed_with_their_offset_and_alert_their_copies(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, store, index, _, alerts = parts
    await applier.apply(
        TP, [record(0, upsert("a.jpg", code(0))), record(1, upsert("b.jpg", code(0)))]
    )
    assert len(index) == 2
    assert store.offsets() == {f"{TP.topic}/2": 2}
    # One batch is applied, then alerted: each lists the other (distance 0).
    assert [(r.image_id, [h.image_id for h in r.near_duplicates]) for r in alerts.results] == [
        ("images/a.jpg", ["images/b.jpg"]),
        ("images/b.jpg", ["images/a.jpg"]),
    ]


async def test_an_unrelated_image_is_not_listed_in_an_alert(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, _, _, _, alerts = parts
    await applier.apply(TP, [record(0, upsert("a.jpg", code(0x00)))])
    await applier.apply(TP, [record(1, upsert("far.jpg", code(0xFF)))])  # every bit differs
    assert alerts.results[-1].image_id == "images/far.jpg"
    assert alerts.results[-1].near_duplicates == []


async def test_a_replayed_batch_changes_nothing_and_alerts_nothing(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, _, index, _, alerts = parts
    batch = [record(0, upsert("a.jpg", code(1)))]
    await applier.apply(TP, batch)
    await applier.apply(TP, batch)
    assert len(index) == 1 and len(alerts.results) == 1


async def test_a_bulk_reextraction_is_indexed_without_alerts_and_a_new_upload_alerts(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, _, index, _, alerts = parts
    await applier.apply(
        TP,
        [
            record(0, upsert("a.jpg", code(0), bulk=True)),
            record(1, upsert("b.jpg", code(0), bulk=True)),
        ],
    )
    assert len(index) == 2 and alerts.results == []
    await applier.apply(TP, [record(2, upsert("c.jpg", code(0)))])
    assert [(r.image_id, len(r.near_duplicates)) for r in alerts.results] == [("images/c.jpg", 2)]


async def test_events_the_index_cannot_take_are_dead_lettered_and_the_rest_applied(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, store, index, sink, _ = parts
    batch = [
        record(0, b"not json"),
        record(1, upsert("short.jpg", bytes(8), dim=64)),  # a 64-bit hash: another dimension
        record(2, upsert("colour.jpg", code(2), feature="colour")),  # on the wrong topic
        record(3, upsert("good.jpg", code(3))),
        record(4, upsert("other.jpg", code(4), feature_version="phash-v0")),  # another index's
    ]
    await applier.apply(TP, batch)
    assert [offset for offset, _ in sink.letters] == [0, 1, 2]
    assert "dim" in sink.letters[1][1]
    assert index.vector_of("images/good.jpg") == code(3)
    assert index.vector_of("images/other.jpg") is None
    assert store.offsets() == {f"{TP.topic}/2": 5}
    assert applier.rejected == 3


async def test_delete_and_reject_remove_the_image(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, store, index, _, _ = parts
    await applier.apply(
        TP, [record(0, upsert("a.jpg", code(5))), record(1, upsert("b.jpg", code(6)))]
    )
    delete = FeatureEvent(
        op=FeatureOp.DELETE,
        image_id="images/a.jpg",
        bucket="images",
        key="a.jpg",
        feature="phash",
        feature_version=PHASH.version,
    )
    reject = delete.model_copy(
        update={"op": FeatureOp.REJECT, "image_id": "images/b.jpg", "key": "b.jpg", "etag": "e2"}
    )
    await applier.apply(TP, [record(2, delete.to_bytes()), record(3, reject.to_bytes())])
    assert len(index) == 0
    assert dict(store.rejections(PHASH.index_name)) == {"images/b.jpg": "e2"}


async def test_events_of_another_version_are_dropped_with_a_loud_warning(
    parts: tuple[FeatureEventApplier, FeatureStore, FeatureIndex, Sink, Alerts],
) -> None:
    applier, _, index, sink, _ = parts
    other = {"feature_version": "phash-some-other-model-v9"}
    with capture_logs() as logs:
        await applier.apply(
            TP,
            [
                record(0, upsert("a.jpg", code(1), **other)),
                record(1, upsert("b.jpg", code(2), **other)),
            ],
        )
    warnings = [e for e in logs if e["event"] == "ingest.other_version_dropped"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"  # once, not per event
    assert len(index) == 0 and not sink.letters

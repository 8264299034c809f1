"""When an image's joined alert goes out: once every feature has it, or partial at the deadline
and then complete when the late features arrive (unit: the query engine and the producer are
fakes at the joiner's boundary; tests/test_image_alerts.py runs the real thing)."""

from __future__ import annotations

import asyncio
from typing import cast

from aiokafka import AIOKafkaProducer

from consumers.indexer.image_alerts import ImageAlertJoiner
from consumers.indexer.query import QueryEngine
from index_store.lmdb_store import ImageRecord, Upsert
from schemas.search import SearchReply, SearchRequest
from schemas.settings import Settings
from schemas.similarity import ImageAlert

DEADLINE_S = 0.05
FEATURES = ["phash", "copy", "keypoints"]


class FakeEngine:
    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def answer(self, request: SearchRequest) -> SearchReply:
        self.asked.append(request.image_id)
        return SearchReply(ok=True, feature="all")


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[ImageAlert] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append(ImageAlert.from_bytes(value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def joiner() -> tuple[ImageAlertJoiner, FakeEngine, FakeProducer]:
    engine, producer = FakeEngine(), FakeProducer()
    settings = Settings(image_alert_deadline_s=DEADLINE_S)
    joined = ImageAlertJoiner(
        settings, FEATURES, cast(QueryEngine, engine), cast(AIOKafkaProducer, producer)
    )
    return joined, engine, producer


def upload(image_id: str, etag: str = "e1") -> list[Upsert]:
    bucket, _, key = image_id.partition("/")
    return [Upsert(image_id, b"v", ImageRecord(bucket=bucket, key=key, etag=etag))]


async def test_an_image_every_feature_indexed_gets_one_complete_alert() -> None:
    joined, engine, producer = joiner()
    for feature in FEATURES:
        await joined.indexed(feature, upload("b/a.jpg"))
    await asyncio.sleep(2 * DEADLINE_S)
    await joined.flush_overdue()
    assert [(a.image_id, a.partial, a.features) for a in producer.sent] == [
        ("b/a.jpg", False, sorted(FEATURES))
    ]
    assert engine.asked == ["b/a.jpg"]


async def test_a_late_feature_turns_a_partial_alert_into_a_complete_one_not_a_second_partial() -> (
    None
):
    joined, _, producer = joiner()
    await joined.indexed("phash", upload("b/a.jpg"))
    await joined.indexed("copy", upload("b/a.jpg"))
    await asyncio.sleep(2 * DEADLINE_S)
    await joined.flush_overdue()
    await joined.indexed("keypoints", upload("b/a.jpg"))
    await asyncio.sleep(2 * DEADLINE_S)
    await joined.flush_overdue()  # nothing more is overdue
    assert [(a.partial, a.features) for a in producer.sent] == [
        (True, ["copy", "phash"]),
        (False, sorted(FEATURES)),
    ]


async def test_a_partially_alerted_image_stops_waiting_for_a_feature_that_never_comes() -> None:
    joined, _, producer = joiner()
    await joined.indexed("phash", upload("b/a.jpg"))
    await asyncio.sleep(2 * DEADLINE_S)
    await joined.flush_overdue()
    await asyncio.sleep(11 * DEADLINE_S)  # past FORGET_AFTER deadlines
    await joined.flush_overdue()
    await joined.indexed("copy", upload("b/a.jpg"))  # a straggler after that: no new wait
    await asyncio.sleep(2 * DEADLINE_S)
    await joined.flush_overdue()
    assert [(a.partial, a.features) for a in producer.sent] == [(True, ["phash"])]


async def test_a_version_reported_again_after_its_complete_alert_is_not_alerted_again() -> None:
    joined, engine, producer = joiner()
    for feature in FEATURES:
        await joined.indexed(feature, upload("b/a.jpg"))
    await joined.indexed("phash", upload("b/a.jpg"))  # redelivered
    await asyncio.sleep(2 * DEADLINE_S)
    await joined.flush_overdue()
    assert [a.partial for a in producer.sent] == [False]
    assert engine.asked == ["b/a.jpg"]


async def test_an_overwrite_starts_a_new_version_and_only_it_is_alerted() -> None:
    joined, _, producer = joiner()
    await joined.indexed("phash", upload("b/a.jpg", etag="old"))
    for feature in FEATURES:
        await joined.indexed(feature, upload("b/a.jpg", etag="new"))
    assert [(a.etag, a.partial) for a in producer.sent] == [("new", False)]

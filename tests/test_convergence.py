"""The indexes end up equal to the bucket after faults, against the real broker and S3:
a restarted stack (a new, empty broker log under an index with stored offsets), a broker
restarted under running consumers, a poison feature event, a reply_to aimed at a data topic,
and an event that no longer says what S3 holds."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from consumers.features import phash
from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from producers.search_client import SearchClient, SearchTimeout
from producers.uploads import upload_bytes
from schemas.dead_letter import DeadLetter
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.kafka import make_producer
from schemas.minio_events import build_notification, notification_key
from schemas.search import SearchReply, SearchRequest
from schemas.settings import Settings
from tests.kafka_helpers import eventually, find_on_topic
from tests.silent_s3 import silent_s3

pytestmark = pytest.mark.integration

# Two cheap features and copy verification's keypoints (its engine restores and catches up
# unlike the others: a vote index, packed keypoints only in the store) keep these stacks light;
# every feature index is checked.
FEATURES = ("phash", "colour", "keypoints")
LIGHT = {"LOOKALIKE_FEATURES": ",".join(FEATURES), "LOOKALIKE_EXTRACTOR_POOLS": ",".join(FEATURES)}


async def reply(search: SearchClient, image_id: str, feature: str) -> SearchReply | None:
    try:
        return await search.search(SearchRequest(feature=feature, image_id=image_id), timeout=2)
    except SearchTimeout:
        return None


async def unsearchable(settings: Settings, image_ids: list[str]) -> list[str]:
    """The (feature, image id) pairs that a search by id does not find."""
    async with SearchClient(settings) as search:
        missing = []
        for image_id in image_ids:
            for feature in FEATURES:
                answer = await reply(search, image_id, feature)
                if answer is None or not answer.ok:
                    missing.append(f"{feature}:{image_id}")
        return missing


def upload_many(s3: Minio, settings: Settings, prefix: str, count: int, seed: int) -> list[str]:
    ids = []
    for i, data in enumerate(distinct_jpegs(count, size=(96, 72), seed=seed)):
        key = f"{prefix}/{i:03d}.jpg"
        upload_bytes(s3, settings.bucket, key, data)
        ids.append(f"{settings.bucket}/{key}")
    return ids


async def all_indexed(settings: Settings, image_ids: list[str], timeout: float = 90) -> None:
    await eventually(lambda: unsearchable(settings, image_ids), lambda left: not left, timeout)


def log_events(path: Path, name: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [e for e in events if e.get("event") == name]


def test_uploads_after_a_stack_restart_are_all_indexed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`make demo`, then `make up`: the second stack's broker is empty, the indexer's store
    holds offsets of the first one. Every upload after the restart must become searchable."""
    data_dir = tmp_path_factory.mktemp("restart")
    first = Stack(data_dir, env=LIGHT)
    first.start()
    try:
        settings = first.settings
        before = upload_many(s3_client(settings), settings, "before", 12, seed=1)
        asyncio.run(all_indexed(settings, before))
    finally:
        first.stop()

    second = Stack(data_dir, env=LIGHT)
    second.start()
    try:
        settings = second.settings
        after = upload_many(s3_client(settings), settings, "after", 30, seed=2)
        asyncio.run(all_indexed(settings, before + after))
        assert second.indexer is not None
        new_log = log_events(second.indexer.log_path, "ingest.new_log")
        assert any("cluster" in str(e["why"]) for e in new_log), "it should say why"
    finally:
        second.stop()


@pytest.fixture(scope="module")
def light_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("light"), env=LIGHT)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_a_broker_restart_under_running_consumers_loses_no_upload(
    light_stack: Stack,
) -> None:
    settings = light_stack.settings
    s3 = s3_client(settings)
    before = upload_many(s3, settings, f"broker-{uuid.uuid4().hex[:6]}", 10, seed=3)
    await all_indexed(settings, before)
    async with SearchClient(settings) as long_lived:  # an application's client, open throughout
        light_stack.restart_broker()  # memory lost: empty topics, a new cluster id
        after = upload_many(s3, settings, f"broker-after-{uuid.uuid4().hex[:6]}", 30, seed=4)
        await all_indexed(settings, before + after)
        answer = await eventually(
            lambda: reply(long_lived, after[0], "phash"), lambda r: r is not None and r.ok
        )
        assert answer is not None and answer.indexed >= len(before + after)


async def publish(settings: Settings, topic: str, value: bytes, key: bytes) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def test_a_poison_feature_event_is_dead_lettered_and_search_goes_on(
    light_stack: Stack,
) -> None:
    settings = light_stack.settings
    key = f"poison-{uuid.uuid4().hex[:6]}/cat.jpg"
    image_id = f"{settings.bucket}/{key}"
    # Schema-valid, the serving version, but a 64-bit hash where the index holds 576 bits.
    poison = FeatureEvent(
        op=FeatureOp.UPSERT,
        image_id=image_id,
        bucket=settings.bucket,
        key=key,
        feature="phash",
        feature_version=phash.VERSION,
        etag="0" * 32,
        size=8,
        vector_kind=VectorKind.BITS,
        dim=64,
        vector=b"\x01" * 8,
    )
    topic = settings.features_topic("phash")
    await publish(settings, topic, poison.to_bytes(), image_id.encode())

    letter = await find_on_topic(
        settings,
        settings.dead_letter_topic,
        lambda r: r.key == image_id.encode() and DeadLetter.from_bytes(r.value).stage == "indexer",
    )
    assert "dim" in DeadLetter.from_bytes(letter.value).reason
    # The indexer lives on: the same key's real upload (same partition, after the poison)
    # is indexed, and searches are answered.
    upload_bytes(s3_client(settings), settings.bucket, key, distinct_jpegs(1, seed=5)[0])
    await all_indexed(settings, [image_id])
    assert light_stack.indexer is not None and light_stack.indexer.alive()


async def test_a_reply_to_naming_a_data_topic_is_dead_lettered_not_answered(
    light_stack: Stack,
) -> None:
    settings = light_stack.settings
    correlation_id = uuid.uuid4().hex
    target = settings.features_topic("phash")
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.search_requests_topic,
            SearchRequest(feature="phash", image_id="images/none.jpg").to_bytes(),
            headers=[("correlation_id", correlation_id.encode()), ("reply_to", target.encode())],
        )
    finally:
        await producer.stop()
    letter = await find_on_topic(
        settings,
        settings.dead_letter_topic,
        lambda r: (
            "reply_to" in DeadLetter.from_bytes(r.value).reason
            and target in DeadLetter.from_bytes(r.value).reason
        ),
    )
    assert DeadLetter.from_bytes(letter.value).stage == "search"
    with pytest.raises(AssertionError):  # nothing was written into the feature topic
        await find_on_topic(
            settings,
            target,
            lambda r: (b"correlation_id", correlation_id.encode()) in list(r.headers),
            timeout=3,
        )


async def test_a_removed_event_for_an_object_that_exists_indexes_it(light_stack: Stack) -> None:
    """Events say "this key changed"; the extractor indexes what S3 holds when it looks.
    (A late "removed" event for an object that was uploaded again must not drop it.)"""
    settings = light_stack.settings
    key = f"level-{uuid.uuid4().hex[:6]}/back.jpg"
    with silent_s3(light_stack) as quiet:  # the object exists, no event announced it
        upload_bytes(quiet, settings.bucket, key, distinct_jpegs(1, seed=6)[0])
    value = build_notification("s3:ObjectRemoved:Delete", settings.bucket, key)
    await publish(
        settings, settings.image_events_topic, value, notification_key(settings.bucket, key)
    )
    await all_indexed(settings, [f"{settings.bucket}/{key}"], timeout=20)

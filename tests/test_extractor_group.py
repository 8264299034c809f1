"""Two extractor processes in one consumer group split the work: every image indexed once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.features import FeatureEvent, FeatureOp
from schemas.kafka import make_consumer
from schemas.search import SearchRequest
from tests.kafka_helpers import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_extractor_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        Path(tmp_path_factory.mktemp("group")), extractors=2, env={"LOOKALIKE_FEATURES": "phash"}
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def last_assignment(log_path: Path) -> list[int] | None:
    """Partitions in the extractor's latest 'extractor.assigned' log line, if any."""
    found = None
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and '"extractor.assigned"' in line:
            found = json.loads(line)["partitions"]
    return found


async def feature_upserts(stack: Stack) -> Counter[str]:
    settings = stack.settings
    topic = settings.features_topic("phash")
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        counts: Counter[str] = Counter()

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    event = FeatureEvent.from_bytes(r.value)
                    if event.op is FeatureOp.UPSERT:
                        counts[event.image_id] += 1
        return counts
    finally:
        await consumer.stop()


async def test_two_extractors_split_the_work_and_index_each_image_once(
    two_extractor_stack: Stack,
) -> None:
    stack = two_extractor_stack
    settings = stack.settings
    s3 = s3_client(settings)

    async def assignments() -> list[list[int] | None]:
        return [last_assignment(p.log_path) for p in stack.extractors]

    # Both members own partitions before the uploads start (the group has settled).
    owned = await eventually(assignments, lambda a: all(a), timeout=60)
    assert sorted(p for part in owned if part for p in part) == list(range(settings.partitions))
    ids = []
    for i, data in enumerate(distinct_jpegs(40, size=(320, 240), seed=5)):
        upload_bytes(s3, settings.bucket, f"group/{i:03d}.jpg", data)
        ids.append(f"{settings.bucket}/group/{i:03d}.jpg")
    async with SearchClient(settings) as search:
        for image_id in ids:
            await eventually(
                partial(search.search, SearchRequest(feature="phash", image_id=image_id, k=1)),
                lambda r: r.ok,
                timeout=60,
            )
        total = (await search.search(SearchRequest(feature="phash", image_id=ids[0], k=1))).indexed
    assert total == len(ids)
    upserts = await feature_upserts(stack)
    assert set(upserts) == set(ids)
    assert max(upserts.values()) == 1  # no image extracted twice
    assert all(p.alive() for p in stack.extractors)
    # Both members took part: each one's log shows committed batches.
    logs = [p.log_path.read_text() for p in stack.extractors]
    assert all('"event": "extractor.checkpoint"' in log for log in logs)

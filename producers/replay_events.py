"""`lookalike replay --from-time T` / `--from-offset N`: run extraction again for what the
image-events topic received since a moment, through the same extractor groups, without a
bucket scan (e.g. after a bad extractor deploy).

The events are published again to the image-events topic with their keys (so each lands in
its object's partition, after that object's earlier events) and headers, up to where the
topic ended when the replay started. Extractors describe an object as S3 holds it when they
handle its event, and indexers apply the same result once, so replaying more than needed is
harmless; replaying a removed object's event removes it again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import tracing
from schemas.kafka import end_of_log, make_consumer, make_producer
from schemas.settings import Settings

log = structlog.get_logger(__name__)

REPLAY_HEADER = "lookalike-replayed-from"


async def replay_image_events(
    settings: Settings,
    since: datetime | None = None,
    from_offset: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Publish again every image event at or after `since` (or at `from_offset` and after, in
    every partition); returns how many. `progress(done, total)` as it goes."""
    topic = settings.image_events_topic
    consumer = make_consumer(settings, group_id=None, max_poll_records=1_000)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            raise RuntimeError(f"topic {topic} does not exist")
        ends = await _true_ends(settings, tps, await consumer.end_offsets(tps))
        consumer.assign(tps)
        starts = await _starts(consumer, tps, since, from_offset)
        total = sum(max(0, ends[tp] - starts[tp]) for tp in tps)
        since_ms = int(since.timestamp() * 1000) if since else None
        done = published = 0
        for tp in tps:
            consumer.seek(tp, starts[tp])
        remaining = {tp for tp in tps if starts[tp] < ends[tp]}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1_000)
            if not batch:
                break  # the log ended before its reported end (nothing more to read)
            sends = []
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        remaining.discard(tp)
                        break
                    done += 1
                    if since_ms is not None and record.timestamp < since_ms:
                        continue
                    parent = tracing.from_headers(record.headers)
                    headers = [
                        (REPLAY_HEADER, f"{tp.partition}/{record.offset}".encode()),
                        *tracing.headers_for(tracing.child_of(parent)),
                    ]
                    sends.append(
                        await producer.send(topic, record.value, key=record.key, headers=headers)
                    )
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            for delivery in sends:
                await delivery
            published += len(sends)
            if progress is not None:
                progress(done, total)
        log.info("replay.published", topic=topic, events=published, since=str(since))
        return published
    finally:
        await consumer.stop()
        await producer.stop()


async def _true_ends(
    settings: Settings, tps: list[TopicPartition], reported: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Where each partition ends now (some brokers report the start of the last batch)."""
    probe = make_consumer(settings, group_id=None)
    await probe.start()
    try:
        return {tp: await end_of_log(probe, tp, reported[tp]) for tp in tps}
    finally:
        await probe.stop()


async def _starts(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    since: datetime | None,
    from_offset: int | None,
) -> dict[TopicPartition, int]:
    """Where each partition's replay starts: the first offset at or after `since` (the
    partition's start when the broker cannot say; records are filtered by time anyway), or
    `from_offset` (not before the partition's start)."""
    beginning = await consumer.beginning_offsets(tps)
    if since is None:
        return {tp: max(beginning[tp], from_offset or 0) for tp in tps}
    try:
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
    except Exception as exc:  # a broker without timestamp lookups: read from the start
        log.info("replay.no_time_index", error=repr(exc))
        return dict(beginning)
    ends = await consumer.end_offsets(tps)  # nothing at or after `since`: start at the end
    return {tp: found[tp].offset if found.get(tp) else ends[tp] for tp in tps}

"""How every process talks to Kafka: the one client factory, configured from Settings.

Shared by producers and consumers alike (the gateway, the search client, extractors,
indexers, the CLI), so that message size limits, acknowledgements, key placement and fetch
behaviour are decided here once:

- producers wait for every in-sync replica (`acks=all`) and place keyed messages the way
  MinIO's Kafka target does (`minio_partitioner`): one object's events, and its feature
  events, share a partition whoever publishes them;
- messages are at most `MAX_MESSAGE_BYTES` (query images are shrunk below it by the CLI);
- consumers commit by hand and start from the earliest offset when they have none.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from schemas.metrics import MESSAGES_OUT
from schemas.minio_events import minio_partitioner
from schemas.settings import Settings

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a request (query image) or reply (inventory) at most
MAX_FETCH_BYTES = 2 * MAX_MESSAGE_BYTES  # per partition and fetch: always room for one message


def producer_options() -> dict[str, Any]:
    """What every producer is configured with, aiokafka's and FastStream's alike."""
    return {
        "acks": "all",
        "linger_ms": 0,
        "max_request_size": MAX_MESSAGE_BYTES,
        "partitioner": minio_partitioner,
    }


class CountingProducer(AIOKafkaProducer):  # type: ignore[misc]
    """An aiokafka producer that counts what the broker acknowledged, by topic (metrics.py)."""

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        delivery: asyncio.Future[Any] = await super().send(topic, *args, **kwargs)
        delivery.add_done_callback(partial(_count_delivery, topic))
        return delivery


def _count_delivery(topic: str, delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled() and delivery.exception() is None:
        MESSAGES_OUT.labels(topic=topic).inc()


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options = {"bootstrap_servers": settings.kafka_bootstrap, **producer_options(), **overrides}
    return CountingProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": MAX_FETCH_BYTES,
        # A member that died hands its partitions on after this long (Kafka's minimum).
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 2000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def make_admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)


async def cluster_id(admin: AIOKafkaAdminClient) -> str | None:
    """The broker's cluster id (which log offsets refer to); None if it cannot be asked now."""
    try:
        found = (await admin.describe_cluster()).get("cluster_id")
    except (KafkaError, OSError):
        return None
    return str(found) if found else None


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """The topic's partitions, from the broker's metadata; raises if the topic is missing."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic)
    finally:
        await consumer.stop()
    if not partitions:
        raise RuntimeError(f"topic {topic} does not exist; run `lookalike create-topics`")
    return sorted(partitions)


async def end_of_log(consumer: AIOKafkaConsumer, tp: TopicPartition, reported: int) -> int:
    """The offset after the last record of `tp`, at least `reported` (the broker's end
    offset). `consumer` is a probe of its own: it is assigned `tp` and read from just below
    `reported`, because some brokers report the start of the last batch, not its end."""
    consumer.assign([tp])
    consumer.seek(tp, max(0, reported - 1))
    end = reported
    while True:
        batch = await consumer.getmany(tp, timeout_ms=300)
        records = batch.get(tp, [])
        if not records:
            return end
        end = max(end, records[-1].offset + 1)

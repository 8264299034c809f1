"""Kafka clients configured once from Settings, so every consumer behaves the same."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.minio_events import minio_partitioner
from schemas.settings import Settings


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    # acks=all: a send counts as done only once every in-sync replica has it.
    # Keys are placed as MinIO places them (FNV-1a), so an object's events and its feature
    # events land on one partition whoever publishes them (MinIO, the gateway, reconciliation).
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "linger_ms": 0,
        "max_request_size": 4 * 1024 * 1024,
        "partitioner": minio_partitioner,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        # A member that died hands its partitions on after this long (Kafka's minimum).
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 2000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


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

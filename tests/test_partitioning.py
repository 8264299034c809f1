"""One object, one partition, whoever publishes: MinIO (Sarama's FNV-1a hash partitioner),
the S3 gateway, reconciliation and backfill place a key the same way."""

from __future__ import annotations

import uuid

import pytest
from minio import Minio

from lookalike.samples import jpeg, photo
from producers.uploads import upload_bytes
from schemas.kafka import make_producer
from schemas.minio_events import build_notification, notification_key, partition_of
from schemas.settings import Settings
from tests.kafka_helpers import find_on_topic


def fnv1a_32(data: bytes) -> int:
    """The reference definition (FNV-1a, 32 bits), written out to check the product's."""
    h = 2166136261
    for byte in data:
        h ^= byte
        h = (h * 16777619) % 2**32
    return h


def test_fnv1a_matches_the_published_test_vectors() -> None:
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


@pytest.mark.parametrize("key", [b"images/a.jpg", b"a", b"foobar", b"images/\xc3\xa9t\xc3\xa9.png"])
@pytest.mark.parametrize("partitions", [1, 3, 4, 12])
def test_partition_is_sarama_hash_partitioner(key: bytes, partitions: int) -> None:
    # Sarama: int32(fnv1a(key)) % n (Go's remainder keeps the sign), then the sign dropped.
    signed = fnv1a_32(key) - 2**32 if fnv1a_32(key) >= 2**31 else fnv1a_32(key)
    remainder = abs(signed) % partitions * (1 if signed >= 0 else -1)
    assert partition_of(key, partitions) == abs(remainder)


@pytest.mark.integration
async def test_gateway_and_reconciliation_events_for_one_object_share_a_partition(
    settings: Settings, s3: Minio
) -> None:
    key = f"partitioning/{uuid.uuid4().hex}.jpg"
    upload_bytes(s3, settings.bucket, key, jpeg(photo("coffee")))  # the gateway publishes
    by_gateway = await find_on_topic(
        settings,
        settings.image_events_topic,
        lambda r: r.key == notification_key(settings.bucket, key),
    )
    producer = make_producer(settings)  # what reconciliation and backfill publish with
    await producer.start()
    try:
        value = build_notification("s3:ObjectRemoved:Delete", settings.bucket, key)
        sent = await producer.send_and_wait(
            settings.image_events_topic, value, key=notification_key(settings.bucket, key)
        )
    finally:
        await producer.stop()
    expected = partition_of(notification_key(settings.bucket, key), settings.partitions)
    assert by_gateway.partition == sent.partition == expected

"""Reading topics in tests: wait until a message that satisfies a condition shows up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas.kafka import make_consumer
from schemas.settings import Settings

T = TypeVar("T")


async def find_on_topic(
    settings: Settings,
    topic: str,
    match: Callable[[ConsumerRecord[bytes, bytes]], bool],
    timeout: float = 60.0,
) -> ConsumerRecord[bytes, bytes]:
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    if match(record):
                        return record
        raise AssertionError(f"no matching message on {topic} within {timeout}s")
    finally:
        await consumer.stop()


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    timeout: float = 60.0,
    interval: float = 0.1,
) -> T:
    """Poll `probe` until `done(result)`; fail with the last result after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {result!r}")
        await asyncio.sleep(interval)

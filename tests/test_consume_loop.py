"""The consume loop's one error policy, broker-free: a fake consumer hands out batches, a
fake stage fails the way real stages do, a fake sink records dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY

from consumers.kafka.dead_letters import DeadLetterSink
from consumers.kafka.failures import PoisonMessage, is_transient
from consumers.kafka.runner import Batch, ConsumeLoop, Record

TP = TopicPartition("lookalike.image-events", 0)
END_OF_LOG = 10


def record(offset: int, value: bytes) -> Record:
    return ConsumerRecord(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=(),
    )


class FakeConsumer:
    """Hands out the given polls, then sets `stop`."""

    def __init__(self, polls: list[list[Record]], stop: asyncio.Event) -> None:
        self._polls = polls
        self._stop = stop

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Batch:
        if not self._polls:
            self._stop.set()
            return {}
        return {TP: self._polls.pop(0)}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int | None:
        return END_OF_LOG  # as the last fetch response said


class FakeSink:
    def __init__(self) -> None:
        self.letters: list[tuple[int, str]] = []

    async def send(self, rec: Record, reason: str) -> None:
        self.letters.append((rec.offset, reason))


class Stage:
    """Fails on values by their content: b"poison", b"boom" (every time), b"flaky" (twice
    with a connection error, then works)."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.committed: list[int] = []
        self.flaky_failures = 0
        self.calls = 0

    async def process(self, batch: Batch) -> None:
        self.calls += 1
        values = [r.value for rs in batch.values() for r in rs]
        if b"flaky" in values and self.flaky_failures < 2:
            self.flaky_failures += 1
            raise KafkaConnectionError("broker unreachable")
        if b"poison" in values:
            raise PoisonMessage("not an image event")
        if b"boom" in values:
            raise RuntimeError("CUDA out of memory")
        records = [r for rs in batch.values() for r in rs]
        self.done.extend(r.offset for r in records)
        self.committed.append(records[-1].offset + 1)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets[TP])

    async def on_new_log(self, partitions: Sequence[TopicPartition], why: str) -> None:
        raise AssertionError("no log watch in these tests")


async def run(
    polls: list[list[Record]], name: str = "consumer"
) -> tuple[Stage, FakeSink, ConsumeLoop]:
    stop = asyncio.Event()
    stage, sink = Stage(), FakeSink()
    loop = ConsumeLoop(
        cast(AIOKafkaConsumer, FakeConsumer(polls, stop)),
        stage,
        cast(DeadLetterSink, sink),
        max_records=10,
        max_attempts=3,
        backoff_max_s=0.01,
        name=name,
    )
    await asyncio.wait_for(loop.run(stop), 30)
    return stage, sink, loop


async def test_a_batch_that_fails_deterministically_dead_letters_only_its_bad_record() -> None:
    stage, sink, loop = await run([[record(0, b"ok"), record(1, b"boom"), record(2, b"ok")]])
    assert stage.done == [0, 2]
    assert sink.letters == [(1, "RuntimeError('CUDA out of memory')")]
    assert stage.committed[-1] == 3  # the loop went on past it
    assert loop.dead_lettered == 1


async def test_a_transient_failure_is_retried_until_it_works_and_never_dead_lettered() -> None:
    stage, sink, _ = await run([[record(0, b"flaky"), record(1, b"ok")], [record(2, b"ok")]])
    assert stage.done == [0, 1, 2]
    assert sink.letters == []
    assert stage.flaky_failures == 2


async def test_poison_goes_to_the_dead_letter_topic_without_retries() -> None:
    stage, sink, _ = await run([[record(0, b"poison")], [record(1, b"ok")]])
    assert sink.letters == [(0, "not an image event")]
    assert stage.calls == 2  # once for the poison, once for the next batch
    assert stage.done == [1]
    assert stage.committed == [1, 2]


def test_failures_are_told_apart() -> None:
    from minio.error import S3Error

    def s3_error(code: str) -> S3Error:
        return S3Error(cast(Any, None), code, "msg", "res", "req", "host")

    assert is_transient(KafkaConnectionError())
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert is_transient(s3_error("SlowDown"))
    assert not is_transient(s3_error("AccessDenied"))
    assert not is_transient(OSError("image file is truncated"))
    assert not is_transient(ValueError("item has 8 bytes, index holds 72"))


async def test_the_loop_counts_what_it_handled_and_what_is_left_behind_it() -> None:
    def value(name: str, **labels: str) -> float:
        found = REGISTRY.get_sample_value(name, labels)
        return 0.0 if found is None else found

    labels = {"stage": "metrics-test", "topic": TP.topic}
    before = value("lookalike_messages_in_total", **labels)
    await run([[record(0, b"ok"), record(1, b"boom")], [record(2, b"flaky")]], "metrics-test")
    assert value("lookalike_messages_in_total", **labels) == before + 3  # dead letter included
    assert value("lookalike_consumer_lag", **labels, partition="0") == END_OF_LOG - 3
    assert value("lookalike_retries_total", stage="metrics-test", kind="transient") == 2

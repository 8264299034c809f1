"""The one consume-and-commit loop of the extractor and the indexer, with one error policy.

A *stage* says what processing a batch means (`Stage.process`: make its effects durable,
raise if it could not) and how progress is recorded (`Stage.commit`). The loop does the rest,
as one ordered sequence per poll:

  1. poll a batch (records of one or more partitions, each in offset order);
  2. `process` it; on success the stage has made its effects and its offsets durable;
  3. on a failure, by kind (see failures.py):
     - transient: wait (backoff, doubling up to `backoff_max_s`) and process the same batch
       again, for as long as it takes — never skipped, never dead-lettered;
     - poison (`PoisonMessage` from a one-record batch): dead-letter it with the reason;
     - other: try again up to `max_attempts`; then split the batch into single records and
       process each the same way, so that only the record that still fails is dead-lettered;
  4. after a dead letter is acknowledged, `commit` the offset past it: the loop goes on.

No single message can stop a partition or the process. Between polls the loop asks the
`LogWatch` whether the broker's log is still the one the positions refer to (a restarted
memory-only broker, a re-created topic, a replaced cluster): if not, the stage repositions
(`Stage.on_new_log`) instead of waiting at an offset the new log may never reach.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from consumers.kafka.dead_letters import DeadLetterSink
from consumers.kafka.failures import PoisonMessage, is_transient
from consumers.kafka.log_watch import LogWatch
from schemas.metrics import CONSUMER_LAG, MESSAGES_IN, RETRIES

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Batch: TypeAlias = dict[TopicPartition, list[Record]]


class Stopping(Exception):
    """The service is stopping while a batch waits for a retry: leave it uncommitted."""


class Stage(Protocol):
    async def process(self, batch: Batch) -> None:
        """Handle every record of `batch` and make the result and its offsets durable."""
        ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Record that everything before these offsets is done (after a dead letter)."""
        ...

    async def on_new_log(self, partitions: Sequence[TopicPartition], why: str) -> None:
        """The broker's log is not the one our positions refer to: reposition."""
        ...


class ConsumeLoop:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        stage: Stage,
        dead_letters: DeadLetterSink,
        *,
        max_records: int,
        max_attempts: int = 3,
        backoff_max_s: float = 30.0,
        log_watch: LogWatch | None = None,
        poll_ms: int = 200,
        name: str = "consumer",
    ) -> None:
        """`name`: the stage's name in metrics (extractor, indexer)."""
        self.name = name
        self._consumer = consumer
        self._stage = stage
        self._dead_letters = dead_letters
        self._max_records = max_records
        self._max_attempts = max_attempts
        self._backoff_max_s = backoff_max_s
        self._log_watch = log_watch
        self._poll_ms = poll_ms
        self.dead_lettered = 0
        self.retries = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._check_log()
            try:
                batch = await self._consumer.getmany(
                    timeout_ms=self._poll_ms, max_records=self._max_records
                )
            except KafkaError as exc:
                log.warning("consume.poll_failed", error=repr(exc))
                await _sleep_unless(stop, 1.0)
                continue
            if not batch:
                continue
            try:
                await self._deliver(batch, stop)
            except Stopping:
                log.info("consume.stopping_with_uncommitted_batch")
                return

    async def _check_log(self) -> None:
        if self._log_watch is None:
            return
        why = await self._log_watch.changed()
        assigned = sorted(self._consumer.assignment())
        if why is not None and assigned:
            log.warning(
                "consume.new_log",
                why=why,
                partitions=[f"{tp.topic}/{tp.partition}" for tp in assigned],
            )
            await self._stage.on_new_log(assigned, why)

    async def _deliver(self, batch: Batch, stop: asyncio.Event) -> None:
        failure = await self._attempt(batch, stop)
        self._measure(batch)
        if failure is None:
            return
        records = [(tp, r) for tp, rs in batch.items() for r in rs]
        if len(records) == 1:
            await self._give_up(*records[0], failure, stop)
            return
        log.warning("consume.batch_split", records=len(records), error=repr(failure))
        for tp, record in records:  # in offset order within each partition
            one = {tp: [record]}
            failure = await self._attempt(one, stop)
            if failure is not None:
                await self._give_up(tp, record, failure, stop)

    def _measure(self, batch: Batch) -> None:
        """Records handled (processed or dead-lettered) and what is left behind them."""
        for tp, records in batch.items():
            MESSAGES_IN.labels(stage=self.name, topic=tp.topic).inc(len(records))
            end = self._consumer.highwater(tp)
            if end is not None:
                lag = max(0, end - (records[-1].offset + 1))
                CONSUMER_LAG.labels(stage=self.name, topic=tp.topic, partition=tp.partition).set(
                    lag
                )

    async def _attempt(self, batch: Batch, stop: asyncio.Event) -> BaseException | None:
        """Process `batch` until it works (None) or fails deterministically too often."""
        attempts = 0
        wait = 0.5
        while True:
            try:
                await self._stage.process(batch)
                return None
            except PoisonMessage as exc:
                if sum(len(rs) for rs in batch.values()) == 1:
                    return exc
                attempts = self._max_attempts  # split at once: one record in it is poison
                failure: BaseException = exc
            except Exception as exc:
                if is_transient(exc):
                    self.retries += 1
                    RETRIES.labels(stage=self.name, kind="transient").inc()
                    log.warning("consume.transient_failure", error=repr(exc), retry_in_s=wait)
                    if await _sleep_unless(stop, wait):
                        raise Stopping from exc
                    wait = min(wait * 2, self._backoff_max_s)
                    continue
                attempts += 1
                failure = exc
                log.warning(
                    "consume.failed",
                    attempt=attempts,
                    of=self._max_attempts,
                    records=sum(len(rs) for rs in batch.values()),
                    error=repr(exc),
                )
            if attempts >= self._max_attempts:
                return failure
            self.retries += 1
            RETRIES.labels(stage=self.name, kind="failed").inc()
            if await _sleep_unless(stop, 0.1 * 2**attempts):
                raise Stopping from failure

    async def _give_up(
        self, tp: TopicPartition, record: Record, failure: BaseException, stop: asyncio.Event
    ) -> None:
        """Dead-letter one record (waiting out transient trouble) and commit past it."""
        reason = str(failure) if isinstance(failure, PoisonMessage) else repr(failure)
        wait = 0.5
        while True:
            try:
                await self._dead_letters.send(record, reason)
                await self._stage.commit({tp: record.offset + 1})
                self.dead_lettered += 1
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("consume.dead_letter_retry", error=repr(exc), retry_in_s=wait)
                if await _sleep_unless(stop, wait):
                    raise Stopping from exc
                wait = min(wait * 2, self._backoff_max_s)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()

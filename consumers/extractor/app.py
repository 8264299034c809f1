"""The extractor service: a consumer-group member on the image-events topic.

The consume-and-commit loop and its error policy are consumers/kafka/runner.py; this stage
says what processing one poll means, in this order:
  1. handle the batch (different keys concurrently, one key's events in order);
  2. publish feature events and dead letters and wait for the broker's acks;
  3. commit the batch's offsets to the group.
A crash anywhere before 3 replays the batch: at-least-once, and harmless because the
indexer applies feature events idempotently (same image, same eTag -> no change).
If the group was rebalanced meanwhile, the commit is refused and the partition's new owner
handles the batch again: also harmless.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata
from minio import Minio

from consumers.extractor.handler import EventHandler
from consumers.features.contract import FeatureSpec
from consumers.kafka.dead_letters import DeadLetterSink
from consumers.kafka.log_watch import LogWatch
from consumers.kafka.runner import Batch, ConsumeLoop
from schemas import tracing
from schemas.kafka import make_consumer, make_producer
from schemas.metrics import EXTRACTOR_STAGE_SECONDS
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class ExtractorService:
    def __init__(self, settings: Settings, s3: Minio, features: Sequence[FeatureSpec]) -> None:
        self._settings = settings
        self._handler = EventHandler(settings, s3, features)
        self._group = settings.extractor_group_for([spec.name for spec in features])
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterSink | None = None
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        consumer = self._consumer = make_consumer(
            s,
            group_id=self._group,
            max_poll_records=s.extract_batch_max,
            fetch_max_wait_ms=s.event_fetch_max_wait_ms,
        )
        consumer.subscribe([s.image_events_topic], listener=_LogAssignments())
        producer = self._producer = make_producer(s)
        await producer.start()
        await consumer.start()
        watch = LogWatch(s, s.log_check_interval_s)
        await watch.start()
        self._dead_letters = DeadLetterSink(producer, s.dead_letter_topic, stage="extractor")
        loop = ConsumeLoop(
            consumer,
            self,
            self._dead_letters,
            max_records=s.extract_batch_max,
            max_attempts=s.max_delivery_attempts,
            backoff_max_s=s.retry_backoff_max_s,
            log_watch=watch,
            name="extractor",
        )
        log.info("extractor.started", topic=s.image_events_topic, group=self._group)
        try:
            await loop.run(stop)
        finally:
            await watch.stop()
            await consumer.stop()
            await producer.stop()
            log.info("extractor.stopped", processed=self.processed, dead=loop.dead_lettered)

    # --- Stage: what the consume loop calls --------------------------------------------------

    async def process(self, batch: Batch) -> None:
        producer, dead_letters = self._producer, self._dead_letters
        assert producer is not None and dead_letters is not None
        records = [r for rs in batch.values() for r in rs]
        outcomes = await self._handler.handle_batch([(r.key, r.value) for r in records])
        started = time.perf_counter()
        sends = []
        for record, outcome in zip(records, outcomes, strict=True):
            span = tracing.stage(
                "extract",
                tracing.from_headers(record.headers),
                started_ms=record.timestamp,
                attributes={"image_ids": ",".join(sorted({e.image_id for e in outcome.events}))},
            )
            for event in outcome.events:
                topic = self._settings.features_topic(event.feature)
                sends.append(
                    await producer.send(
                        topic,
                        event.to_bytes(),
                        key=event.image_id.encode(),
                        headers=tracing.headers_for(span),
                    )
                )
            for image_id in sorted({event.image_id for event in outcome.events}):
                log.info(
                    "extract.published",
                    image_id=image_id,
                    trace_id=tracing.trace_id(span),
                    events=[f"{e.feature}:{e.op.value}" for e in outcome.events],
                )
            if outcome.dead_letter_reason is not None:
                await dead_letters.send(record, outcome.dead_letter_reason)
        await asyncio.gather(*sends)
        await self.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        EXTRACTOR_STAGE_SECONDS.labels(stage="publish").observe(time.perf_counter() - started)
        self.processed += len(records)
        log.info("extractor.checkpoint", records=len(records), processed=self.processed)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            # Rebalanced while we worked: the partition's new owner handles these again.
            log.warning("extractor.commit_refused", error=repr(exc))

    async def on_new_log(self, partitions: Sequence[TopicPartition], why: str) -> None:
        """Read each partition of the new log from its start. Offsets the group holds in the
        new log cannot be trusted: a batch of the old log that was in flight at the restart
        may have committed its old offset there (past the new log's end). Reading the new
        log again is idempotent, and it holds only what was published since it started."""
        consumer = self._consumer
        assert consumer is not None
        await consumer.seek_to_beginning(*partitions)
        log.warning(
            "extractor.read_from_start", partitions=[tp.partition for tp in partitions], why=why
        )


class _LogAssignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Which partitions this member owns, after every rebalance (scaling is visible in logs)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("extractor.revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("extractor.assigned", partitions=sorted(tp.partition for tp in assigned))

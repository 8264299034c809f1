"""The extractor service: a consumer-group member on the image-events topic.

Each poll is one checkpoint, in this order:
  1. handle the batch (different keys concurrently, one key's events in order),
  2. publish feature events and dead letters and wait for the broker's acks,
  3. commit the batch's offsets.
A crash anywhere before 3 replays the batch: at-least-once, and harmless because the
indexer applies feature events idempotently (same image, same eTag -> no change).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypeAlias

import structlog
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from minio import Minio

from consumers.extractor.handler import EventHandler
from consumers.features.contract import FeatureSpec
from consumers.kafka.clients import make_consumer, make_producer
from consumers.kafka.dead_letters import DeadLetterSink
from schemas.settings import Settings

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


class ExtractorService:
    def __init__(self, settings: Settings, s3: Minio, features: Sequence[FeatureSpec]) -> None:
        self._settings = settings
        self._handler = EventHandler(settings, s3, features)
        self._group = settings.extractor_group_for([spec.name for spec in features])
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        consumer = make_consumer(s, group_id=self._group, max_poll_records=s.extract_batch_max)
        consumer.subscribe([s.image_events_topic], listener=_LogAssignments())
        producer = make_producer(s)
        await producer.start()
        await consumer.start()
        dead_letters = DeadLetterSink(producer, s.dead_letter_topic, stage="extractor")
        log.info("extractor.started", topic=s.image_events_topic, group=self._group)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=s.extract_batch_max)
                if not batches:
                    continue
                try:
                    await self._checkpoint(batches, producer, dead_letters, consumer)
                except Exception:
                    # Transient trouble (S3 or broker unreachable): replay the batch later.
                    log.exception("extractor.batch_failed_will_retry")
                    for tp, records in batches.items():
                        consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(1.0)
        finally:
            await consumer.stop()
            await producer.stop()
            log.info("extractor.stopped", processed=self.processed)

    async def _checkpoint(
        self,
        batches: dict[TopicPartition, list[Record]],
        producer: AIOKafkaProducer,
        dead_letters: DeadLetterSink,
        consumer: AIOKafkaConsumer,
    ) -> None:
        records = [r for rs in batches.values() for r in rs]
        outcomes = await self._handler.handle_batch([(r.key, r.value) for r in records])
        sends = []
        for record, outcome in zip(records, outcomes, strict=True):
            for event in outcome.events:
                topic = self._settings.features_topic(event.feature)
                sends.append(
                    await producer.send(topic, event.to_bytes(), key=event.image_id.encode())
                )
            if outcome.dead_letter_reason is not None:
                await dead_letters.send(record, outcome.dead_letter_reason)
        await asyncio.gather(*sends)
        await consumer.commit(
            {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batches.items()}
        )
        self.processed += len(records)
        log.info("extractor.checkpoint", records=len(records), processed=self.processed)


class _LogAssignments(ConsumerRebalanceListener):  # type: ignore[misc]
    """Which partitions this member owns, after every rebalance (scaling is visible in logs)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("extractor.revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("extractor.assigned", partitions=sorted(tp.partition for tp in assigned))

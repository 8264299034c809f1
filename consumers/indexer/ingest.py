"""Feature events -> index. The indexer owns its offsets: they live in LMDB, committed in the
same transaction as the changes they cover (see index_store.lmdb_store), so the consumer
uses manual partition assignment, not a consumer group: every replica reads every
partition it serves, and a restart resumes exactly where its disk says.

Offsets mean something only in the log they were read from, so the store also records which
log that was (the broker's cluster id). At start, and whenever the consume loop's LogWatch
sees a new log while running, a partition whose stored offset belongs to another log, or is
past the end of this one, is read again from its start (idempotent: the same image at the
same eTag and vector changes nothing), and a reconciliation with the bucket is requested
for whatever the lost log held that the index never saw.

The consume-and-commit loop and its error policy are consumers/kafka/runner.py; this module
says what processing a batch means. A feature event that cannot be applied (not a
FeatureEvent, a vector of the wrong size or kind, not finite) is dead-lettered here, before
the batch's offsets are committed; the rest of the batch is applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.features.contract import FeatureSpec
from consumers.indexer.query import to_hit
from consumers.kafka.dead_letters import DeadLetterSink
from consumers.kafka.log_watch import LogWatch, end_of_log
from consumers.kafka.runner import Batch, ConsumeLoop, Record
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import Change, Delete, FeatureStore, ImageRecord, Reject, Upsert
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.kafka import make_consumer, make_producer
from schemas.message import MessageError
from schemas.settings import Settings
from schemas.similarity import SimilarityResult

log = structlog.get_logger(__name__)


def offset_name(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


class IngestService:
    def __init__(
        self,
        settings: Settings,
        features: Sequence[FeatureSpec],
        indexes: Mapping[str, FeatureIndex],
        store: FeatureStore,
        partitions: Sequence[int] | None = None,
        reconcile_soon: Callable[[str], None] = lambda why: None,
    ) -> None:
        self._settings = settings
        self._specs = {spec.name: spec for spec in features}
        self._indexes = indexes
        self._store = store
        self._partitions = partitions
        self._reconcile_soon = reconcile_soon
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterSink | None = None
        self.loop: ConsumeLoop | None = None
        self.log_watch = LogWatch(settings, settings.log_check_interval_s)
        self.records_read = 0
        self.rejected = 0  # dead-lettered here (bad feature events)
        self.ready = asyncio.Event()
        self.served_partitions: list[int] = []  # known once assigned
        self.partition_count = 0
        self.assigned: list[TopicPartition] = []

    @property
    def dead_letters(self) -> int:
        return self.rejected + (self.loop.dead_lettered if self.loop else 0)

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        consumer = self._consumer = make_consumer(s, group_id=None, max_poll_records=500)
        producer = self._producer = make_producer(s)
        await producer.start()
        await consumer.start()
        await self.log_watch.start()
        self._dead_letters = DeadLetterSink(producer, s.dead_letter_topic, stage="indexer")
        self.loop = ConsumeLoop(
            consumer,
            self,
            self._dead_letters,
            max_records=500,
            max_attempts=s.max_delivery_attempts,
            backoff_max_s=s.retry_backoff_max_s,
            log_watch=self.log_watch,
        )
        try:
            await self._assign(consumer)
            self.ready.set()
            await self.loop.run(stop)
        finally:
            await self.log_watch.stop()
            await consumer.stop()
            await producer.stop()
            log.info("ingest.stopped", records_read=self.records_read)

    async def lag(self) -> dict[str, int]:
        """topic/partition -> records not yet applied (0 when caught up)."""
        consumer = self._consumer
        if consumer is None or not self.assigned:
            return {}
        ends = await consumer.end_offsets(self.assigned)
        stored = self._store.offsets()
        return {
            offset_name(tp): max(0, ends[tp] - stored.get(offset_name(tp), 0))
            for tp in self.assigned
        }

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        s = self._settings
        await consumer.topics()  # load metadata
        tps: list[TopicPartition] = []
        for name in self._specs:
            topic = s.features_topic(name)
            known = consumer.partitions_for_topic(topic) or set()
            if not known:
                raise RuntimeError(f"topic {topic} does not exist; run `lookalike create-topics`")
            wanted = known if self._partitions is None else set(self._partitions) & known
            tps.extend(TopicPartition(topic, p) for p in sorted(wanted))
            self.served_partitions = sorted(wanted)
            self.partition_count = len(known)
        consumer.assign(tps)
        self.assigned = tps
        stored = self._store.offsets()
        stored_log, current_log = self._store.log_id(), self.log_watch.cluster_id
        ours = {offset_name(tp): stored[offset_name(tp)] for tp in tps if offset_name(tp) in stored}
        if ours and current_log is not None and stored_log != current_log:
            why = (
                f"stored offsets belong to the log of cluster {stored_log}, the broker is "
                f"cluster {current_log}"
                if stored_log
                else "stored offsets do not say which log they belong to"
            )
            await self.on_new_log(tps, why)
            return
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        resume: dict[str, int] = {}
        for tp in tps:
            offset = ours.get(offset_name(tp), starts[tp])
            if offset > ends[tp] and offset > await self._end_of_log(tp, ends[tp]):
                log.warning(
                    "ingest.offset_past_end",
                    partition=offset_name(tp),
                    stored=offset,
                    end=ends[tp],
                    action="read the partition again from its start",
                )
                offset = starts[tp]
            resume[offset_name(tp)] = offset
            consumer.seek(tp, offset)
        self._store.save_offsets(resume, log_id=current_log)
        log.info("ingest.assigned", resume_from=resume, cluster_id=current_log)
        if resume != ours:
            self._reconcile_soon("offsets reset or first start")

    async def _end_of_log(self, tp: TopicPartition, reported: int) -> int:
        probe = make_consumer(self._settings, group_id=None)
        await probe.start()
        try:
            return await end_of_log(probe, tp, reported)
        finally:
            await probe.stop()

    # --- Stage: what the consume loop calls --------------------------------------------------

    async def on_new_log(self, partitions: Sequence[TopicPartition], why: str) -> None:
        """Read every partition of the new log from its start; ask for a reconciliation."""
        consumer = self._consumer
        assert consumer is not None
        starts = await consumer.beginning_offsets(list(partitions))
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        offsets = {offset_name(tp): starts[tp] for tp in partitions}
        self._store.save_offsets(offsets, log_id=self.log_watch.cluster_id)
        log.warning(
            "ingest.new_log",
            why=why,
            cluster_id=self.log_watch.cluster_id,
            action="read every partition again from its start, then reconcile with the bucket",
            resume_from=offsets,
        )
        self._reconcile_soon(f"new log: {why}")

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self._store.save_offsets({offset_name(tp): o for tp, o in offsets.items()})

    async def process(self, batch: Batch) -> None:
        for tp, records in batch.items():
            await self._apply(tp, records)

    async def _apply(self, tp: TopicPartition, records: list[Record]) -> None:
        assert self._dead_letters is not None
        feature = tp.topic.removeprefix(self._settings.features_topic_prefix)
        spec, index = self._specs[feature], self._indexes[feature]
        changes: list[Change] = []
        for record in records:
            try:
                event = FeatureEvent.from_bytes(record.value)
            except MessageError as exc:
                await self._reject(record, str(exc))
                continue
            if event.feature_version != spec.version:
                log.info(
                    "ingest.other_version",
                    image_id=event.image_id,
                    version=event.feature_version,
                    serving=spec.version,
                )
                continue
            reason = unusable(event, spec)
            if reason is not None:
                await self._reject(record, reason)
                continue
            changes.append(_to_change(event))
        offsets = {offset_name(tp): records[-1].offset + 1}
        upserts = await asyncio.to_thread(index.apply, changes, offsets)
        self.records_read += len(records)
        if upserts:
            await self._publish_similar(spec, index, upserts)

    async def _reject(self, record: Record, reason: str) -> None:
        assert self._dead_letters is not None
        await self._dead_letters.send(record, reason)
        self.rejected += 1

    async def _publish_similar(
        self, spec: FeatureSpec, index: FeatureIndex, upserts: list[Upsert]
    ) -> None:
        s = self._settings
        producer = self._producer
        assert producer is not None

        def find() -> list[SimilarityResult]:
            return [
                SimilarityResult(
                    image_id=u.image_id,
                    etag=u.record.etag,
                    feature=spec.name,
                    feature_version=spec.version,
                    near_duplicates=[
                        to_hit(n)
                        for n in index.search(
                            [u.vector],
                            s.near_duplicate_k,
                            spec.alert_max_distance,
                            exclude=[u.image_id],
                        )
                    ],
                )
                for u in upserts
            ]

        results = await asyncio.to_thread(find)
        sends = [
            await producer.send(s.similarity_results_topic, r.to_bytes(), key=r.image_id.encode())
            for r in results
        ]
        await asyncio.gather(*sends)


def unusable(event: FeatureEvent, spec: FeatureSpec) -> str | None:
    """Why this index cannot take `event` (it would fail half-way in the index), or None."""
    if event.feature != spec.name:
        return f"a {event.feature!r} event on the {spec.name!r} topic"
    if event.op is not FeatureOp.UPSERT:
        return None
    assert event.vector is not None  # FeatureEvent's validator guarantees it for upserts
    if event.vector_kind is not spec.vector_kind or event.dim != spec.dim:
        return (
            f"{spec.name} {spec.version} holds {spec.vector_kind.value} vectors of dim "
            f"{spec.dim}; the event has {event.vector_kind} of dim {event.dim}"
        )
    if len(event.vector) != spec.vector_bytes:
        return f"vector has {len(event.vector)} bytes, {spec.name} holds {spec.vector_bytes}"
    if spec.vector_kind is VectorKind.FLOAT32:
        if not np.isfinite(np.frombuffer(event.vector, np.float32)).all():
            return "vector has NaN or infinite values"
    return None


def _to_change(event: FeatureEvent) -> Change:
    if event.op is FeatureOp.DELETE:
        return Delete(event.image_id)
    if event.op is FeatureOp.REJECT:
        return Reject(event.image_id, event.etag, event.reason or "rejected by the extractor")
    assert event.vector is not None  # guaranteed by FeatureEvent's validator
    record = ImageRecord(bucket=event.bucket, key=event.key, etag=event.etag, size=event.size)
    return Upsert(event.image_id, event.vector, record)

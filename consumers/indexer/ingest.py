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

The consume-and-commit loop and its error policy are consumers/kafka/runner.py; what a batch
of feature events does to an index is feature_events.py; this module is the Kafka side:
assignment, where to resume, a new log, lag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumers.features.contract import FeatureSpec
from consumers.indexer.feature_events import (
    FeatureEventApplier,
    KafkaAlerts,
    OnIndexed,
    offset_name,
)
from consumers.kafka.dead_letters import DeadLetterSink
from consumers.kafka.log_watch import LogWatch
from consumers.kafka.runner import Batch, ConsumeLoop
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from schemas.kafka import end_of_log, make_consumer, make_producer
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class IngestService:
    def __init__(
        self,
        settings: Settings,
        features: Sequence[FeatureSpec],
        indexes: Mapping[str, FeatureIndex],
        store: FeatureStore,
        partitions: Sequence[int] | None = None,
        reconcile_soon: Callable[[str], None] = lambda why: None,
        on_indexed: OnIndexed | None = None,
    ) -> None:
        self._on_indexed = on_indexed
        self._settings = settings
        self._specs = {spec.name: spec for spec in features}
        self._indexes = indexes
        self._store = store
        self._partitions = partitions
        self._reconcile_soon = reconcile_soon
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._dead_letters: DeadLetterSink | None = None
        self._applier: FeatureEventApplier | None = None
        self.loop: ConsumeLoop | None = None
        self.log_watch = LogWatch(settings, settings.log_check_interval_s)
        self.ready = asyncio.Event()
        self.served_partitions: list[int] = []  # known once assigned
        self.partition_count = 0
        self.assigned: list[TopicPartition] = []

    @property
    def specs(self) -> Mapping[str, FeatureSpec]:
        return self._specs

    @property
    def settings(self) -> Settings:
        return self._settings

    def pause(self, feature: str) -> asyncio.Lock:
        """Held, no feature event of `feature` is applied (the rest of ingest goes on)."""
        assert self._applier is not None, "ingest has not started"
        return self._applier.pauses[feature]

    @property
    def records_read(self) -> int:
        return self._applier.records_read if self._applier else 0

    @property
    def dead_letters(self) -> int:
        rejected = self._applier.rejected if self._applier else 0
        return rejected + (self.loop.dead_lettered if self.loop else 0)

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        consumer = self._consumer = make_consumer(
            s, group_id=None, max_poll_records=500, fetch_max_wait_ms=s.event_fetch_max_wait_ms
        )
        producer = self._producer = make_producer(s)
        await producer.start()
        await consumer.start()
        await self.log_watch.start()
        self._dead_letters = DeadLetterSink(producer, s.dead_letter_topic, stage="indexer")
        self._applier = FeatureEventApplier(
            s,
            self._specs,
            self._indexes,
            self._dead_letters,
            KafkaAlerts(producer, s),
            self._on_indexed,
        )
        self.loop = ConsumeLoop(
            consumer,
            self,
            self._dead_letters,
            max_records=500,
            max_attempts=s.max_delivery_attempts,
            backoff_max_s=s.retry_backoff_max_s,
            log_watch=self.log_watch,
            name="indexer",
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

    async def catch_up(self, report_every_s: float = 2.0) -> None:
        """Return once everything the topics held when this indexer joined is applied, with
        a progress line meanwhile: a new replica (empty store) answers only when caught up,
        never with part of the index while it replays the topics."""
        consumer = self._consumer
        if consumer is None or not self.assigned:
            return
        ends = await consumer.end_offsets(self.assigned)
        started = asyncio.get_running_loop().time()
        first_behind: int | None = None
        while True:
            stored = self._store.offsets()
            behind = sum(max(0, ends[tp] - stored.get(offset_name(tp), 0)) for tp in self.assigned)
            if first_behind is None:
                first_behind = behind
            if behind == 0:
                if first_behind:
                    log.info(
                        "ingest.caught_up",
                        records=first_behind,
                        seconds=round(asyncio.get_running_loop().time() - started, 1),
                    )
                return
            done = first_behind - behind
            log.info(
                "ingest.catching_up",
                records_behind=behind,
                applied=done,
                percent=round(100 * done / max(first_behind, 1), 1),
            )
            await asyncio.sleep(report_every_s)

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
        assert self._applier is not None
        for tp, records in batch.items():
            await self._applier.apply(tp, records)

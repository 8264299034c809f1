"""Feature events -> index. The indexer owns its offsets: they live in LMDB, committed in the
same transaction as the changes they cover (see index_store.lmdb_store), so the consumer
uses manual partition assignment, not a consumer group: every replica reads every
partition it serves, and a restart resumes exactly where its disk says.

If the broker no longer has the stored offsets (the embedded broker keeps topics in memory),
the fetch is out of range, the consumer starts those partitions over from the earliest offset
the broker has, the indexer keeps its state, and a bucket scan (`lookalike backfill`) brings
back anything missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.features.contract import FeatureSpec
from consumers.indexer.query import to_hit
from consumers.kafka.clients import make_consumer, make_producer
from consumers.kafka.dead_letters import DeadLetterSink
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import Change, Delete, ImageRecord, Upsert
from schemas.features import FeatureEvent, FeatureOp
from schemas.message import MessageError
from schemas.settings import Settings
from schemas.similarity import SimilarityResult

log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def offset_name(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


class IngestService:
    def __init__(
        self,
        settings: Settings,
        features: Sequence[FeatureSpec],
        indexes: Mapping[str, FeatureIndex],
        stored_offsets: dict[str, int],
        partitions: Sequence[int] | None = None,
    ) -> None:
        self._settings = settings
        self._specs = {spec.name: spec for spec in features}
        self._indexes = indexes
        self._stored_offsets = stored_offsets
        self._partitions = partitions
        self.records_read = 0
        self.ready = asyncio.Event()
        self.served_partitions: list[int] = []  # known once assigned
        self.partition_count = 0

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        consumer = make_consumer(s, group_id=None, max_poll_records=500)
        producer = make_producer(s)
        await producer.start()
        await consumer.start()
        dead_letters = DeadLetterSink(producer, s.dead_letter_topic, stage="indexer")
        try:
            await self._assign(consumer)
            self.ready.set()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=500)
                for tp, records in batches.items():
                    await self._apply(tp, records, producer, dead_letters)
        finally:
            await consumer.stop()
            await producer.stop()
            log.info("ingest.stopped", records_read=self.records_read)

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
        resume: dict[str, int] = {}
        for tp in tps:
            # Resume exactly where the store says. If the broker no longer has that offset
            # (an empty embedded broker after a restart), the fetch is out of range and the
            # consumer's auto_offset_reset=earliest restarts the partition from its start.
            # (Not decided from end_offsets here: a lagging high watermark would replay.)
            resume[offset_name(tp)] = self._stored_offsets.get(offset_name(tp), 0)
            consumer.seek(tp, resume[offset_name(tp)])
        log.info("ingest.assigned", resume_from=resume)

    async def _apply(
        self,
        tp: TopicPartition,
        records: list[Record],
        producer: AIOKafkaProducer,
        dead_letters: DeadLetterSink,
    ) -> None:
        feature = tp.topic.removeprefix(self._settings.features_topic_prefix)
        spec, index = self._specs[feature], self._indexes[feature]
        changes: list[Change] = []
        for record in records:
            try:
                event = FeatureEvent.from_bytes(record.value)
            except MessageError as exc:
                await dead_letters.send(record, str(exc))
                continue
            if event.feature_version != spec.version:
                log.info(
                    "ingest.other_version",
                    image_id=event.image_id,
                    version=event.feature_version,
                    serving=spec.version,
                )
                continue
            changes.append(_to_change(event))
        offsets = {offset_name(tp): records[-1].offset + 1}
        upserts = await asyncio.to_thread(index.apply, changes, offsets)
        self.records_read += len(records)
        if upserts:
            await self._publish_similar(spec, index, upserts, producer)

    async def _publish_similar(
        self,
        spec: FeatureSpec,
        index: FeatureIndex,
        upserts: list[Upsert],
        producer: AIOKafkaProducer,
    ) -> None:
        s = self._settings

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
                            s.near_duplicate_max_distance,
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


def _to_change(event: FeatureEvent) -> Change:
    if event.op is FeatureOp.DELETE:
        return Delete(event.image_id)
    assert event.vector is not None  # guaranteed by FeatureEvent's validator
    record = ImageRecord(bucket=event.bucket, key=event.key, etag=event.etag, size=event.size)
    return Upsert(event.image_id, event.vector, record)

"""What applying one partition's batch of feature events to its feature index means, with no
Kafka in sight (ingest.py does the consuming; this is what its stage does with a batch):

1. parse each record as a FeatureEvent; skip other feature versions (another index's);
2. dead-letter what this index cannot take (not a FeatureEvent, another vector kind or
   dimension, NaN) before anything is committed — the rest of the batch goes on;
3. apply the changes and the offset after the batch in one store transaction (idempotent:
   a replayed event changes nothing);
4. publish a near-duplicate alert for each image that changed: its nearest other images
   within the feature's own threshold (`FeatureSpec.alert_max_distance`) — except images of a
   bulk re-extraction (`FeatureEvent.bulk`): their uploads were alerted already, and a
   re-extraction of the whole bucket must not search once per image.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition

from consumers.features.contract import FeatureSpec
from consumers.indexer.copy_verification import verifier_for
from consumers.indexer.query import to_hit
from consumers.kafka.runner import Record
from index_store.feature_index import FeatureIndex, Neighbour
from index_store.lmdb_store import Change, Delete, ImageRecord, Reject, Upsert
from index_store.metric import Metric
from schemas import tracing
from schemas.features import FeatureEvent, FeatureOp, VectorKind
from schemas.message import MessageError
from schemas.metrics import UPLOAD_TO_SEARCHABLE_SECONDS
from schemas.settings import Settings
from schemas.similarity import SimilarityResult

log = structlog.get_logger(__name__)

OTHER_VERSION_WARN_S = 60.0


class DeadLetters(Protocol):
    async def send(self, record: Record, reason: str) -> None: ...


OnIndexed = Callable[[str, list[Upsert]], Awaitable[None]]


class Alerts(Protocol):
    async def publish(
        self, results: list[SimilarityResult], traces: Mapping[str, str | None] | None = None
    ) -> None: ...


class KafkaAlerts:
    """Alerts to the similarity-results topic, keyed by image id; waits for the acks."""

    def __init__(self, producer: AIOKafkaProducer, settings: Settings) -> None:
        self._producer = producer
        self._topic = settings.similarity_results_topic

    async def publish(
        self, results: list[SimilarityResult], traces: Mapping[str, str | None] | None = None
    ) -> None:
        """`traces`: the traceparent of each result's image, continued in the alert."""
        traces = traces or {}
        sends = [
            await self._producer.send(
                self._topic,
                r.to_bytes(),
                key=r.image_id.encode(),
                headers=tracing.headers_for(
                    tracing.stage(
                        "alert", traces.get(r.image_id), attributes={"image_id": r.image_id}
                    )
                ),
            )
            for r in results
        ]
        await asyncio.gather(*sends)


def offset_name(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


class FeatureEventApplier:
    def __init__(
        self,
        settings: Settings,
        specs: Mapping[str, FeatureSpec],
        indexes: Mapping[str, FeatureIndex],
        dead_letters: DeadLetters,
        alerts: Alerts,
        on_indexed: OnIndexed | None = None,
    ) -> None:
        """`on_indexed(feature, upserts)`: after the images are searchable (image_alerts.py)."""
        self._on_indexed = on_indexed
        self._settings = settings
        self._specs = specs  # by feature name
        self._indexes = indexes  # by feature name
        self._dead_letters = dead_letters
        self._alerts = alerts
        self._verifier = verifier_for(specs, indexes)  # the keypoints feature's search
        self.records_read = 0
        self.rejected = 0  # dead-lettered here
        self._warned: dict[str, float] = {}  # feature version -> when last warned about
        # Held by a rebuild from the topic while it swaps the feature's store (replay.py).
        self.pauses: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def apply(self, tp: TopicPartition, records: list[Record]) -> None:
        feature = tp.topic.removeprefix(self._settings.features_topic_prefix)
        async with self.pauses[feature]:
            await self._apply(feature, tp, records)

    async def _apply(self, feature: str, tp: TopicPartition, records: list[Record]) -> None:
        spec, index = self._specs[feature], self._indexes[feature]
        changes: list[Change] = []
        traces: dict[str, str | None] = {}
        published_ms: dict[str, int] = {}
        uploaded: dict[str, datetime | None] = {}
        bulk: set[str] = set()  # image ids of a bulk re-extraction: no alerts
        for record in records:
            try:
                event = FeatureEvent.from_bytes(record.value)
            except MessageError as exc:
                await self._reject(record, str(exc))
                continue
            traces[event.image_id] = tracing.from_headers(record.headers)
            published_ms[event.image_id] = record.timestamp
            uploaded[event.image_id] = event.uploaded_at
            if event.bulk:
                bulk.add(event.image_id)
            else:
                bulk.discard(event.image_id)  # a later upload of the same image alerts
            if event.feature_version != spec.version:
                self._warn_other_version(event, spec)
                continue
            reason = unusable(event, spec)
            if reason is not None:
                await self._reject(record, reason)
                continue
            changes.append(to_change(event))
        offsets = {offset_name(tp): records[-1].offset + 1}
        upserts = await asyncio.to_thread(index.apply, changes, offsets)
        self.records_read += len(records)
        searchable_at = datetime.now(UTC)
        upserts = [u for u in upserts if u.image_id not in bulk]
        for upsert in upserts:
            since = uploaded.get(upsert.image_id)
            took = (searchable_at - since).total_seconds() if since else None
            if took is not None:
                UPLOAD_TO_SEARCHABLE_SECONDS.labels(feature=feature).observe(max(took, 0.0))
            traces[upsert.image_id] = tracing.stage(
                f"index {feature}",
                traces.get(upsert.image_id),
                started_ms=published_ms.get(upsert.image_id),
                attributes={"image_id": upsert.image_id, "feature": feature},
            )
            log.info(
                "index.image_applied",
                image_id=upsert.image_id,
                feature=feature,
                trace_id=tracing.trace_id(traces.get(upsert.image_id)),
                upload_to_searchable_s=None if took is None else round(took, 3),
            )
        if upserts and self._settings.publish_alerts:
            results = await asyncio.to_thread(self._near_duplicates, spec, index, upserts)
            await self._alerts.publish(results, traces)
        if upserts and self._on_indexed is not None:
            await self._on_indexed(feature, upserts)

    def _warn_other_version(self, event: FeatureEvent, spec: FeatureSpec) -> None:
        """Loud, once a minute per version: events this index drops are images it lacks."""
        now = time.monotonic()
        if (
            now - self._warned.get(event.feature_version, -OTHER_VERSION_WARN_S)
            < OTHER_VERSION_WARN_S
        ):
            return
        self._warned[event.feature_version] = now
        log.warning(
            "ingest.other_version_dropped",
            image_id=event.image_id,
            version=event.feature_version,
            serving=spec.version,
            hint="an extractor runs another model, weights or preprocessing than this indexer: "
            "its images are not indexed here; configure both alike (LOOKALIKE_CLIP_MODEL, "
            "LOOKALIKE_CLIP_PRETRAINED)",
        )

    async def _reject(self, record: Record, reason: str) -> None:
        await self._dead_letters.send(record, reason)
        self.rejected += 1

    def _near_duplicates(
        self, spec: FeatureSpec, index: FeatureIndex, upserts: list[Upsert]
    ) -> list[SimilarityResult]:
        return [
            SimilarityResult(
                image_id=u.image_id,
                etag=u.record.etag,
                feature=spec.name,
                feature_version=spec.version,
                near_duplicates=[to_hit(n, spec) for n in self._nearest(spec, index, u)],
            )
            for u in upserts
        ]

    def _nearest(self, spec: FeatureSpec, index: FeatureIndex, u: Upsert) -> list[Neighbour]:
        """The image's nearest others within the feature's alert threshold (verified ones for
        the keypoints feature)."""
        k, limit = self._settings.near_duplicate_k, spec.alert_max_distance
        if spec.metric is not Metric.VERIFIED or self._verifier is None:
            return index.search([u.vector], k, limit, exclude=[u.image_id])
        return self._verifier.neighbours([u.vector], k, limit, exclude=[u.image_id])


def unusable(event: FeatureEvent, spec: FeatureSpec) -> str | None:
    """Why this index cannot take `event` (it would fail half-way in the index), or None."""
    if event.feature != spec.name:
        return f"a {event.feature!r} event on the {spec.name!r} topic"
    if event.op is not FeatureOp.UPSERT:
        return None
    assert event.vector is not None  # FeatureEvent's validator guarantees it for upserts
    if event.vector_kind is not spec.vector_kind or event.dim != spec.dim_of(event.vector):
        return (
            f"{spec.name} {spec.version} holds {spec.vector_kind.value} vectors of dim "
            f"{spec.dim}; the event has {event.vector_kind} of dim {event.dim}"
        )
    why = spec.unusable(event.vector)
    if why is not None:
        return why
    if spec.vector_kind is VectorKind.FLOAT32:
        if not np.isfinite(np.frombuffer(event.vector, np.float32)).all():
            return "vector has NaN or infinite values"
    return None


def to_change(event: FeatureEvent) -> Change:
    if event.op is FeatureOp.DELETE:
        return Delete(event.image_id)
    if event.op is FeatureOp.REJECT:
        return Reject(event.image_id, event.etag, event.reason or "rejected by the extractor")
    assert event.vector is not None  # guaranteed by FeatureEvent's validator
    record = ImageRecord(bucket=event.bucket, key=event.key, etag=event.etag, size=event.size)
    return Upsert(event.image_id, event.vector, record)

"""Reconciliation: compare every feature index this indexer holds with the bucket, and
publish image events for the difference, so the normal pipeline repairs it.

The bucket is the truth. For the partitions this indexer serves (an image's partition is
where the extractors publish its feature events: `partition_of(image id)`), per feature:
- *missing*: in the bucket, not in the index -> a created event;
- *stale*: in both, the index at another eTag -> a created event;
- *ghost*: in the index, not in the bucket -> a removed event.
Objects changed in the last `reconcile_grace_s` are left alone: their events are most likely
still on their way (a backlog must not be answered with more of the same work).

Safe against races because the extractor decides from S3 as it is when it handles an event,
not from the event: a removed event for an object that exists indexes the object, a created
event for an object that is gone or changed is a no-op or indexes the current version.

Runs by itself (consumers/indexer/app.py): when the indexer starts, when it finds a new broker
log, when asked over the control topic (`lookalike backfill`, the S3 gateway at its start),
and every `reconcile_interval_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from minio import Minio

from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import FeatureStore
from schemas.control import FeatureDifference, ReconcileReport
from schemas.minio_events import (
    build_notification,
    looks_like_image,
    notification_key,
    partition_of,
    plain_etag,
)
from schemas.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BucketObject:
    etag: str
    size: int
    modified: datetime | None


def list_bucket(s3: Minio, bucket: str) -> Iterator[tuple[str, BucketObject]]:
    """(image id, object) for every image object. Blocking: run in a worker thread."""
    for obj in s3.list_objects(bucket, recursive=True):
        if obj.object_name is None or obj.is_dir or not looks_like_image(obj.object_name, None):
            continue
        etag = plain_etag(obj.etag) or ""
        yield f"{bucket}/{obj.object_name}", BucketObject(etag, obj.size or 0, obj.last_modified)


@dataclass
class Plan:
    create: dict[str, BucketObject]
    remove: set[str]
    features: dict[str, FeatureDifference]
    scanned: int


def plan(
    bucket_name: str,
    bucket: Mapping[str, BucketObject],
    indexed: Mapping[str, Mapping[str, str | None]],
    ours: set[int],
    partitions: int,
    settled_before: datetime,
) -> Plan:
    """What to publish so that every feature index (`indexed`: feature -> id -> eTag) of the
    partitions `ours` equals `bucket` (the objects of bucket `bucket_name`)."""
    prefix = f"{bucket_name}/"
    mine = {
        image_id: obj
        for image_id, obj in bucket.items()
        if partition_of(image_id.encode(), partitions) in ours
    }
    create: dict[str, BucketObject] = {}
    remove: set[str] = set()
    features: dict[str, FeatureDifference] = {}
    for feature, etags in indexed.items():
        missing = stale = ghosts = 0
        for image_id, obj in mine.items():
            if obj.modified is not None and obj.modified > settled_before:
                continue  # its events are most likely on their way
            held = etags.get(image_id, _ABSENT)
            if held is _ABSENT:
                missing += 1
            elif held != obj.etag:
                stale += 1
            else:
                continue
            create[image_id] = obj
        for image_id in etags:
            if image_id.startswith(prefix) and image_id not in bucket:
                ghosts += 1
                remove.add(image_id)
        features[feature] = FeatureDifference(missing=missing, stale=stale, ghosts=ghosts)
    return Plan(create=create, remove=remove, features=features, scanned=len(mine))


_ABSENT = "\0absent"


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        s3: Minio,
        store: FeatureStore,
        indexes: Mapping[str, FeatureIndex],
        producer: AIOKafkaProducer,
    ) -> None:
        self._settings = settings
        self._s3 = s3
        self._store = store
        self._indexes = indexes
        self._producer = producer
        self._one_at_a_time = asyncio.Lock()
        self.partitions: Sequence[int] = []
        self.partition_count = 0
        self.last: ReconcileReport | None = None

    @property
    def busy(self) -> bool:
        return self._one_at_a_time.locked()

    async def run(self, reason: str, grace_s: float | None = None) -> ReconcileReport:
        """One round; `grace_s` overrides LOOKALIKE_RECONCILE_GRACE_S."""
        grace = self._settings.reconcile_grace_s if grace_s is None else grace_s
        async with self._one_at_a_time:
            started = time.perf_counter()
            log.info("reconcile.started", reason=reason, grace_s=grace)
            report = await self._run(reason, grace)
            report = report.model_copy(update={"seconds": time.perf_counter() - started})
            self.last = report
            log.info(
                "reconcile.done",
                reason=reason,
                scanned=report.scanned,
                created=report.created,
                removed=report.removed,
                features={f: d.model_dump() for f, d in report.features.items()},
                seconds=round(report.seconds, 2),
            )
            return report

    async def _run(self, reason: str, grace_s: float) -> ReconcileReport:
        s = self._settings
        settled_before = datetime.now(UTC) - timedelta(seconds=grace_s)
        bucket = await asyncio.to_thread(lambda: dict(list_bucket(self._s3, s.bucket)))
        indexed = await asyncio.to_thread(self._indexed)
        todo = plan(
            s.bucket, bucket, indexed, set(self.partitions), self.partition_count, settled_before
        )
        sends = []
        for image_id, obj in todo.create.items():
            key = image_id.removeprefix(f"{s.bucket}/")
            value = build_notification(
                "s3:ObjectCreated:Put",
                s.bucket,
                key,
                etag=obj.etag,
                size=obj.size,
                source="reconcile",
            )
            sends.append(await self._publish(key, value))
        for image_id in sorted(todo.remove):
            bucket_name, _, key = image_id.partition("/")
            value = build_notification(
                "s3:ObjectRemoved:Delete", bucket_name, key, source="reconcile"
            )
            sends.append(await self._publish(key, value, bucket_name))
        await asyncio.gather(*sends)
        return ReconcileReport(
            ok=True,
            reason=reason,
            partitions=list(self.partitions),
            partition_count=self.partition_count,
            scanned=todo.scanned,
            created=len(todo.create),
            removed=len(todo.remove),
            features=todo.features,
        )

    async def _publish(self, key: str, value: bytes, bucket: str | None = None) -> Any:
        """Queue one image event; returns the future of its acknowledgement."""
        bucket = bucket or self._settings.bucket
        return await self._producer.send(
            self._settings.image_events_topic, value, key=notification_key(bucket, key)
        )

    def _indexed(self) -> dict[str, dict[str, str | None]]:
        """feature -> image id -> eTag the index accounts for: indexed, or rejected (an object
        version that cannot be described is not missing, and is not sent again)."""
        return {
            feature: accounted_for(self._store, index.name)
            for feature, index in self._indexes.items()
        }


def accounted_for(store: FeatureStore, index: str) -> dict[str, str | None]:
    etags = {image_id: rec.etag for image_id, rec in store.records(index)}
    etags.update(store.rejections(index))
    return etags

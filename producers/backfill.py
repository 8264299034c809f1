"""Bucket scan: publish the events the index is missing.

Compares the bucket with what an index store holds (image id -> eTag) and emits a MinIO-format
created event for every image the index lacks or has at another eTag, and a removed event
for every indexed image that is gone. This is how the system converges after events were
lost (broker restarted empty, gateway crashed between write and publish, index on a new disk).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb
import structlog
from aiokafka import AIOKafkaProducer
from minio import Minio

from index_store.lmdb_store import FeatureStore
from schemas.minio_events import build_notification, looks_like_image, notification_key
from schemas.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BucketObject:
    key: str
    etag: str
    size: int


@dataclass
class BackfillReport:
    scanned: int = 0
    created: int = 0
    removed: int = 0
    up_to_date: int = 0


def indexed_etags(index_root: Path, index: str) -> dict[str, str | None]:
    """image_id -> eTag over every index store under `index_root` (all shards and replicas);
    empty if there is none yet."""
    etags: dict[str, str | None] = {}
    for data_file in sorted(index_root.glob("**/data.mdb")):
        store = FeatureStore(data_file.parent, readonly=True)
        try:
            etags.update((image_id, rec.etag) for image_id, rec in store.records(index))
        except lmdb.Error:  # this store never held that index
            pass
        finally:
            store.close()
    return etags


def list_bucket(s3: Minio, bucket: str) -> Iterator[BucketObject]:
    for obj in s3.list_objects(bucket, recursive=True):
        if obj.object_name is None or obj.is_dir:
            continue
        yield BucketObject(obj.object_name, (obj.etag or "").strip('"'), obj.size or 0)


def plan(
    objects: Iterator[BucketObject], bucket: str, indexed: dict[str, str | None], everything: bool
) -> Iterator[tuple[str, BucketObject | None]]:
    """Yields (image_id, object) to create and (image_id, None) to remove."""
    seen: set[str] = set()
    for obj in objects:
        image_id = f"{bucket}/{obj.key}"
        if not looks_like_image(obj.key, None):
            continue
        seen.add(image_id)
        if everything or indexed.get(image_id, "missing") != obj.etag:
            yield image_id, obj
    prefix = f"{bucket}/"
    for image_id in indexed:
        if image_id.startswith(prefix) and image_id not in seen:
            yield image_id, None


async def backfill(
    settings: Settings,
    s3: Minio,
    producer: AIOKafkaProducer,
    indexed: dict[str, str | None],
    *,
    everything: bool = False,
    progress: Callable[[BackfillReport], None] | None = None,
) -> BackfillReport:
    bucket = settings.bucket
    objects = await asyncio.to_thread(lambda: list(list_bucket(s3, bucket)))
    report = BackfillReport(scanned=len(objects))
    sends = []
    for image_id, obj in plan(iter(objects), bucket, indexed, everything):
        key = image_id.removeprefix(f"{bucket}/")
        if obj is None:
            value = build_notification("s3:ObjectRemoved:Delete", bucket, key, source="backfill")
            report.removed += 1
        else:
            value = build_notification(
                "s3:ObjectCreated:Put", bucket, key, etag=obj.etag, size=obj.size, source="backfill"
            )
            report.created += 1
        sends.append(
            await producer.send(
                settings.image_events_topic, value, key=notification_key(bucket, key)
            )
        )
        if progress and (report.created + report.removed) % 500 == 0:
            progress(report)
    await asyncio.gather(*sends)
    report.up_to_date = report.scanned - report.created
    log.info("backfill.done", **report.__dict__)
    return report

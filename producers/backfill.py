"""Bucket scan for `lookalike reextract`: a created event for every image object.

Every extractor group then describes every image again: the way to fill the index of a new
feature version (its events carry the new version, which names a new index; unchanged
versions are no-ops in the indexer). The events name `BULK_SOURCE` as their maker, so the
images are indexed without near-duplicate alerts: their uploads were alerted already.
Finding and repairing *differences* between the bucket and the indexes is reconciliation,
which the indexers run themselves (`lookalike backfill` asks them to run it now); this module
never reads an index.

The producer is passed in (`lookalike/cli.py` builds it with the project's partitioner), so
events land on the partition of their `bucket/object` key whoever publishes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import structlog
from aiokafka import AIOKafkaProducer
from minio import Minio

from schemas.minio_events import (
    BULK_SOURCE,
    build_notification,
    looks_like_image,
    notification_key,
    plain_etag,
)
from schemas.settings import Settings

log = structlog.get_logger(__name__)

PAGE = 500  # objects listed, then published and acknowledged, at a time


@dataclass(frozen=True, slots=True)
class BucketObject:
    key: str
    etag: str
    size: int


@dataclass
class ReextractProgress:
    listed: int = 0  # objects in the bucket seen so far
    images: int = 0  # of those, image objects (each gets a created event)
    published: int = 0  # created events acknowledged by the broker
    listing_done: bool = False


def list_bucket(s3: Minio, bucket: str) -> Iterator[BucketObject]:
    """Every object (not folders), lazily: the client lists a page per request."""
    for obj in s3.list_objects(bucket, recursive=True):
        if obj.object_name is None or obj.is_dir:
            continue
        yield BucketObject(obj.object_name, plain_etag(obj.etag) or "", obj.size or 0)


async def reextract(
    settings: Settings,
    s3: Minio,
    producer: AIOKafkaProducer,
    *,
    progress: Callable[[ReextractProgress], None] | None = None,
) -> ReextractProgress:
    """Publish an `s3:ObjectCreated:Put` event for every image object in the bucket, a page at
    a time (memory stays flat on any bucket size)."""
    bucket = settings.bucket
    objects = list_bucket(s3, bucket)
    state = ReextractProgress()

    def next_page() -> asyncio.Task[list[BucketObject]]:
        return asyncio.create_task(asyncio.to_thread(lambda: list(islice(objects, PAGE))))

    listing = next_page()
    try:
        while True:
            page = await listing
            state.listed += len(page)
            state.listing_done = len(page) < PAGE
            images = [obj for obj in page if looks_like_image(obj.key, None)]
            state.images += len(images)
            if progress:
                progress(state)
            if not state.listing_done:
                listing = next_page()  # the next page is listed while this one is published
            sends = [
                await producer.send(
                    settings.image_events_topic,
                    build_notification(
                        "s3:ObjectCreated:Put",
                        bucket,
                        obj.key,
                        etag=obj.etag,
                        size=obj.size,
                        source=BULK_SOURCE,
                    ),
                    key=notification_key(bucket, obj.key),
                )
                for obj in images
            ]
            await asyncio.gather(*sends)
            state.published += len(sends)
            if progress:
                progress(state)
            if state.listing_done:
                break
    finally:
        listing.cancel()  # publishing failed: stop waiting for a page nobody reads

    log.info("reextract.done", listed=state.listed, images=state.images, published=state.published)
    return state

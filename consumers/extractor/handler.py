"""What the extractor does with one poll's worth of image-events messages.

1. per message, concurrently (one key's messages in order): parse, fetch, decode;
2. per feature, once for the whole batch: describe every decoded image (CLIP batches here);
3. per message, in order: feature events, or a dead-letter reason, or nothing (not work).
Bad input never raises: it becomes a dead-letter reason.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import structlog
from minio import Minio
from PIL import Image

from consumers.extractor.object_fetch import (
    FetchedObject,
    ObjectGone,
    ObjectTooLarge,
    fetch_object,
)
from consumers.features.contract import FeatureSpec
from consumers.features.decode import UndecodableImage, decode_image
from schemas.features import FeatureEvent, FeatureOp
from schemas.metrics import (
    EXTRACTION_BATCH_SECONDS,
    EXTRACTION_SECONDS,
    EXTRACTOR_STAGE_SECONDS,
)
from schemas.minio_events import (
    ChangeKind,
    Ignored,
    ImageChange,
    MalformedEvent,
    parse_notification,
)
from schemas.settings import Settings

log = structlog.get_logger(__name__)


@dataclass
class Outcome:
    events: list[FeatureEvent] = field(default_factory=list)
    dead_letter_reason: str | None = None


@dataclass
class _Decoded:
    change: ImageChange
    obj: FetchedObject
    image: Image.Image | None  # None: the features decode the fetched bytes themselves


@dataclass
class _Rejected:
    """An object version that cannot be described: dead-lettered, and the indexes told."""

    change: ImageChange
    etag: str | None
    reason: str


@dataclass
class _Prepared:
    """One message after step 1: deletions ready, images decoded, or the reason it failed."""

    deletions: list[ImageChange] = field(default_factory=list)
    decoded: list[_Decoded] = field(default_factory=list)
    rejected: list[_Rejected] = field(default_factory=list)
    dead_letter_reason: str | None = None


class EventHandler:
    def __init__(self, settings: Settings, s3: Minio, features: Sequence[FeatureSpec]) -> None:
        self._settings = settings
        self._s3 = s3
        self._features = list(features)
        # A GPU extractor's features decode on the device: no CPU decode here (the bytes are
        # still checked, by the features, and a failure is dead-lettered the same way).
        self._decode_here = not all(f.describe_encoded is not None for f in self._features)
        # S3 reads wait on the network: more of them at once than the default thread pool.
        self._fetches = ThreadPoolExecutor(settings.s3_connections, thread_name_prefix="fetch")

    async def handle_batch(
        self, messages: Sequence[tuple[bytes | None, bytes | None]]
    ) -> list[Outcome]:
        """`messages` are (key, value) pairs in partition order; one Outcome per message."""
        started = time.perf_counter()
        prepared = await self._prepare_all(messages)
        EXTRACTOR_STAGE_SECONDS.labels(stage="fetch").observe(time.perf_counter() - started)
        images = [d for p in prepared for d in p.decoded]
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self._describe, images)
        EXTRACTOR_STAGE_SECONDS.labels(stage="describe").observe(time.perf_counter() - started)
        vector_of = {id(d): i for i, d in enumerate(images)}
        outcomes = []
        for p in prepared:
            outcome = Outcome(dead_letter_reason=p.dead_letter_reason)
            for change in p.deletions:
                outcome.events.extend(self._deletions(change))
            for bad in p.rejected:
                outcome.events.extend(self._rejections(bad))
            for d in p.decoded:
                row = [v[vector_of[id(d)]] for v in vectors]
                reasons = [r for r in row if isinstance(r, str)]
                if reasons:
                    why = f"undecodable image {d.change.image_id}: {reasons[0]}"
                    outcome.dead_letter_reason = why
                    outcome.events.extend(self._rejections(_Rejected(d.change, d.obj.etag, why)))
                else:
                    described = [r for r in row if isinstance(r, bytes)]
                    outcome.events.extend(self._upserts(d, described))
            outcomes.append(outcome)
        return outcomes

    def _describe(self, images: list[_Decoded]) -> list[list[bytes | str]]:
        """Per feature, the vectors of all images (batched: one model call per feature), or
        for features that decode themselves, a reason in place of an image they could not."""
        if not images:
            return [[] for _ in self._features]
        described: list[list[bytes | str]] = []
        for spec in self._features:
            started = time.perf_counter()
            if spec.describe_encoded is not None and not self._decode_here:
                described.append(spec.describe_encoded([d.obj.data for d in images]))
            else:
                decoded = [d.image for d in images if d.image is not None]
                described.append(list(spec.describe_batch(decoded)))
            took = time.perf_counter() - started
            EXTRACTION_BATCH_SECONDS.labels(feature=spec.name).observe(took)
            per_image = EXTRACTION_SECONDS.labels(feature=spec.name)
            for _ in images:
                per_image.observe(took / len(images))
        return described

    async def _prepare_all(
        self, messages: Sequence[tuple[bytes | None, bytes | None]]
    ) -> list[_Prepared]:
        by_key: dict[bytes | None, list[int]] = defaultdict(list)
        for i, (key, _) in enumerate(messages):
            by_key[key].append(i)
        prepared: list[_Prepared] = [_Prepared() for _ in messages]

        async def one_key(indices: list[int]) -> None:
            for i in indices:  # one object's events stay in order
                prepared[i] = await self._prepare(messages[i][1])

        await asyncio.gather(*(one_key(ix) for ix in by_key.values()))
        return prepared

    async def _prepare(self, raw: bytes | None) -> _Prepared:
        try:
            items = parse_notification(raw)
        except MalformedEvent as exc:
            return _Prepared(dead_letter_reason=f"malformed event: {exc}")
        prepared = _Prepared()
        for item in items:
            if isinstance(item, Ignored):
                log.info(
                    "event.ignored", event_name=item.event_name, key=item.key, reason=item.reason
                )
                continue
            result = await self._fetch_and_decode(item)
            if isinstance(result, _Rejected):
                prepared.dead_letter_reason = result.reason
                prepared.rejected.append(result)
            elif result is None:
                prepared.deletions.append(item)
            else:
                prepared.decoded.append(result)
        return prepared

    async def _fetch_and_decode(self, change: ImageChange) -> _Decoded | _Rejected | None:
        """The object as S3 holds it now, decoded; None if it is gone; or why it cannot be.

        An event says "this key changed", not what it holds now: the extractor describes
        the object as it is when the event is handled. So a removed event for an object that
        was uploaded again indexes the new upload, and a created event whose object has been
        overwritten since indexes the newer version (its own event then changes nothing).
        One key's events are handled in order, so the last one leaves the index equal to S3.
        S3 trouble (unreachable, 5xx) raises: the consume loop retries, never drops.
        """
        limit = self._settings.max_image_bytes
        if change.kind is ChangeKind.CREATED and change.size is not None and change.size > limit:
            reason = f"oversize upload: {change.size:,} bytes is over the {limit:,}-byte limit"
            return _Rejected(change, change.etag, reason)
        try:
            obj = await asyncio.get_running_loop().run_in_executor(
                self._fetches,
                partial(fetch_object, self._s3, change.bucket, change.key, max_bytes=limit),
            )
        except ObjectGone as exc:
            if change.kind is ChangeKind.CREATED:
                log.info("event.stale", image_id=change.image_id, why=str(exc))
            return None
        except ObjectTooLarge as exc:
            return _Rejected(change, exc.etag, f"oversize upload: {exc}")
        if change.etag and obj.etag != change.etag:
            log.info(
                "event.newer_object", image_id=change.image_id, announced=change.etag, now=obj.etag
            )
        elif change.kind is ChangeKind.REMOVED:
            log.info("event.object_back", image_id=change.image_id, etag=obj.etag)
        if not self._decode_here:
            return _Decoded(change, obj, None)
        try:
            image = await asyncio.to_thread(
                decode_image, obj.data, max_pixels=self._settings.max_image_pixels
            )
        except UndecodableImage as exc:
            return _Rejected(change, obj.etag, f"undecodable image {change.image_id}: {exc}")
        return _Decoded(change, obj, image)

    def _deletions(self, change: ImageChange) -> list[FeatureEvent]:
        return [
            FeatureEvent(
                op=FeatureOp.DELETE,
                image_id=change.image_id,
                bucket=change.bucket,
                key=change.key,
                feature=spec.name,
                feature_version=spec.version,
            )
            for spec in self._features
        ]

    def _rejections(self, bad: _Rejected) -> list[FeatureEvent]:
        return [
            FeatureEvent(
                op=FeatureOp.REJECT,
                image_id=bad.change.image_id,
                bucket=bad.change.bucket,
                key=bad.change.key,
                feature=spec.name,
                feature_version=spec.version,
                etag=bad.etag,
                reason=bad.reason,
            )
            for spec in self._features
        ]

    def _upserts(self, d: _Decoded, vectors: list[bytes]) -> list[FeatureEvent]:
        return [
            FeatureEvent(
                op=FeatureOp.UPSERT,
                image_id=d.change.image_id,
                bucket=d.change.bucket,
                key=d.change.key,
                feature=spec.name,
                feature_version=spec.version,
                etag=d.obj.etag,
                size=d.obj.size,
                vector_kind=spec.vector_kind,
                dim=spec.dim_of(vector),
                vector=vector,
                uploaded_at=d.change.event_time,
                bulk=d.change.bulk,
            )
            for spec, vector in zip(self._features, vectors, strict=True)
        ]

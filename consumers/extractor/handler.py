"""What the extractor does with one image-events message.

Outcomes: feature events to publish, a reason for the dead-letter topic, or nothing (the
event is not work: a read, a test event, a stale version). Never raises for bad input.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from minio import Minio

from consumers.extractor.describe import describe
from consumers.extractor.object_fetch import (
    ObjectChanged,
    ObjectGone,
    ObjectTooLarge,
    fetch_object,
)
from consumers.features.contract import FeatureSpec
from consumers.features.decode import UndecodableImage
from schemas.features import FeatureEvent, FeatureOp
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


class EventHandler:
    def __init__(self, settings: Settings, s3: Minio, features: Sequence[FeatureSpec]) -> None:
        self._settings = settings
        self._s3 = s3
        self._features = list(features)

    async def handle(self, raw: bytes | None) -> Outcome:
        try:
            items = parse_notification(raw)
        except MalformedEvent as exc:
            return Outcome(dead_letter_reason=f"malformed event: {exc}")
        outcome = Outcome()
        for item in items:
            if isinstance(item, Ignored):
                log.info("event.ignored", event=item.event_name, key=item.key, reason=item.reason)
                continue
            if item.kind is ChangeKind.REMOVED:
                outcome.events.extend(self._deletions(item))
                continue
            reason = await self._describe_into(item, outcome.events)
            if reason is not None:
                outcome.dead_letter_reason = reason
        return outcome

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

    async def _describe_into(self, change: ImageChange, out: list[FeatureEvent]) -> str | None:
        """Append upserts for `change`; return a dead-letter reason instead if it is bad input."""
        limit = self._settings.max_image_bytes
        if change.size is not None and change.size > limit:
            return f"oversize upload: {change.size:,} bytes is over the {limit:,}-byte limit"
        try:
            obj = await asyncio.to_thread(
                fetch_object,
                self._s3,
                change.bucket,
                change.key,
                expected_etag=change.etag,
                max_bytes=limit,
            )
        except (ObjectGone, ObjectChanged) as exc:
            # Not an error: a later event on this key (same partition) says what happened.
            log.info("event.stale", image_id=change.image_id, why=str(exc))
            return None
        except ObjectTooLarge as exc:
            return f"oversize upload: {exc}"
        try:
            vectors = await asyncio.to_thread(
                describe, obj.data, self._features, self._settings.max_image_pixels
            )
        except UndecodableImage as exc:
            return f"undecodable image {change.image_id}: {exc}"
        for spec in self._features:
            out.append(
                FeatureEvent(
                    op=FeatureOp.UPSERT,
                    image_id=change.image_id,
                    bucket=change.bucket,
                    key=change.key,
                    feature=spec.name,
                    feature_version=spec.version,
                    etag=obj.etag,
                    size=obj.size,
                    vector_kind=spec.vector_kind,
                    dim=spec.dim,
                    vector=vectors[spec.name],
                )
            )
        return None

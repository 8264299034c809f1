"""One alert per image version: joined across features on the image-alerts topic.

Feature events of one image arrive at different times (cheap features first, CLIP later, from
different extractor groups). The indexer remembers, per image version (id, eTag), which of its
features have indexed it; when all have, it asks its own query engine for the image's copies and
look-alikes across every feature (a fused query by id, consumers/indexer/fusion.py) and
publishes one `ImageAlert` with the matches and their verdicts. A version still missing
features after `image_alert_deadline_s` is published as `partial`. An overwrite starts a new
version (the old one is forgotten); a removal forgets it.

Within a shard, one replica publishes (`LOOKALIKE_PUBLISH_ALERTS`); a restart may repeat an
alert (at-least-once): key and (id, eTag) let consumers drop repeats.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiokafka import AIOKafkaProducer

from consumers.indexer.query import QueryEngine
from index_store.lmdb_store import Upsert
from schemas.search import SearchRequest, Verdict
from schemas.settings import Settings
from schemas.similarity import ImageAlert

log = structlog.get_logger(__name__)

MATCHES = (Verdict.EXACT, Verdict.COPY, Verdict.SIMILAR)


class ImageAlertJoiner:
    def __init__(
        self,
        settings: Settings,
        features: list[str],
        engine: QueryEngine,
        producer: AIOKafkaProducer,
    ) -> None:
        self._settings = settings
        self._features = set(features)
        self._engine = engine
        self._producer = producer
        # (image id, eTag) -> (features that indexed it, when the first did)
        self._pending: dict[tuple[str, str | None], tuple[set[str], float]] = {}
        self.published = 0

    async def indexed(self, feature: str, upserts: list[Upsert]) -> None:
        """`feature` has indexed these image versions."""
        now = time.monotonic()
        complete = []
        for u in upserts:
            version = (u.image_id, u.record.etag)
            for other in [v for v in self._pending if v[0] == u.image_id and v != version]:
                del self._pending[other]  # overwritten: only the newest version is alerted
            features, since = self._pending.get(version, (set(), now))
            features.add(feature)
            self._pending[version] = (features, since)
            if features >= self._features:
                complete.append(version)
        for version in complete:
            await self._publish(version, partial=False)

    async def flush_overdue(self) -> None:
        """Publish, as partial, the versions some feature has not indexed by the deadline."""
        limit = time.monotonic() - self._settings.image_alert_deadline_s
        for version in [v for v, (_, since) in self._pending.items() if since < limit]:
            await self._publish(version, partial=True)

    async def run_deadlines(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                try:
                    await self.flush_overdue()
                except Exception:
                    log.exception("image_alert.flush_failed")

    async def _publish(self, version: tuple[str, str | None], partial: bool) -> None:
        features, _ = self._pending.pop(version)
        image_id, etag = version
        request = SearchRequest(image_id=image_id, k=self._settings.near_duplicate_k)
        reply = await asyncio.to_thread(self._engine.answer, request)
        if not reply.ok:  # removed meanwhile: nothing to say
            log.info("image_alert.skipped", image_id=image_id, why=reply.error)
            return
        alert = ImageAlert(
            image_id=image_id,
            etag=etag,
            features=sorted(features),
            partial=partial,
            matches=[h for h in reply.hits if h.verdict in MATCHES],
        )
        if self._settings.publish_alerts:
            topic = self._settings.image_alerts_topic
            await self._producer.send_and_wait(topic, alert.to_bytes(), key=image_id.encode())
            self.published += 1
        log.info(
            "image_alert.published" if self._settings.publish_alerts else "image_alert.joined",
            image_id=image_id,
            partial=partial,
            matches=len(alert.matches),
        )

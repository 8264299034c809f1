"""One alert per image version: joined across features on the image-alerts topic.

Feature events of one image arrive at different times (cheap features first, CLIP later, from
different extractor groups). The indexer remembers, per image version (id, eTag), which of its
features have indexed it; when all have, it asks its own query engine for the image's copies and
look-alikes across every feature (a fused query by id, consumers/indexer/fusion.py) and
publishes one `ImageAlert` with the matches and their verdicts. A version still missing
features after `image_alert_deadline_s` is published as `partial`, and again, complete, once
its late features are in (within FORGET_AFTER deadlines; a feature may never come: the
extractor rejected the image). A version whose last alert is out (complete, or given up
on) is not alerted again when a feature reports it again (a redelivery, a replay); the
newest FINISHED_KEPT such versions are remembered. An overwrite starts a new version (the old
one is forgotten).

Within a shard, one replica publishes (`LOOKALIKE_PUBLISH_ALERTS`); a restart may repeat an
alert (at-least-once): key and (id, eTag, partial) let consumers drop repeats.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer

from consumers.indexer.query import QueryEngine
from index_store.lmdb_store import Upsert
from schemas.search import SearchRequest, Verdict
from schemas.settings import Settings
from schemas.similarity import ImageAlert

log = structlog.get_logger(__name__)

MATCHES = (Verdict.EXACT, Verdict.COPY, Verdict.SIMILAR)
FORGET_AFTER = 10  # deadlines after which a partially alerted version stops waiting
FINISHED_KEPT = 100_000  # versions whose last alert is out, remembered (newest)


@dataclass
class Version:
    """An image version on its way to its alert."""

    etag: str | None
    features: set[str]  # those that have indexed it
    since: float  # when the first did (monotonic)
    partial_sent: bool = False  # its partial alert is out: only the complete one may follow


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
        self._pending: dict[str, Version] = {}  # image id -> its newest version
        # image id -> eTag of its version whose last alert is out, oldest first
        self._finished: OrderedDict[str, str | None] = OrderedDict()
        self.published = 0

    async def indexed(self, feature: str, upserts: list[Upsert]) -> None:
        """`feature` has indexed these image versions."""
        now = time.monotonic()
        complete: dict[str, None] = {}  # image ids, in order
        for u in upserts:
            version = self._pending.get(u.image_id)
            if version is None and self._is_finished(u.image_id, u.record.etag):
                continue  # reported again: its alert is out already
            if version is None or version.etag != u.record.etag:
                # new, or overwritten: only the newest version is alerted
                version = self._pending[u.image_id] = Version(u.record.etag, set(), now)
            version.features.add(feature)
            if version.features >= self._features:
                complete[u.image_id] = None
        await self._publish(list(complete), partial=False)

    async def flush_overdue(self) -> None:
        """Publish, as partial, the versions some feature has not indexed by the deadline;
        forget partially alerted ones that waited FORGET_AFTER deadlines for the rest."""
        now, deadline = time.monotonic(), self._settings.image_alert_deadline_s
        for image_id in [
            i
            for i, v in self._pending.items()
            if v.partial_sent and v.since < now - FORGET_AFTER * deadline
        ]:
            version = self._pending.pop(image_id)
            self._finish(image_id, version)
            missing = sorted(self._features - version.features)
            log.info("image_alert.late_features_given_up", image_id=image_id, missing=missing)
        await self._publish(
            [
                i
                for i, v in self._pending.items()
                if not v.partial_sent and v.since < now - deadline
            ],
            partial=True,
        )

    async def run_deadlines(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                try:
                    await self.flush_overdue()
                except Exception:
                    log.exception("image_alert.flush_failed")

    def _finish(self, image_id: str, version: Version) -> None:
        """Remember that `version`'s last alert is out (the newest FINISHED_KEPT)."""
        self._finished.pop(image_id, None)
        self._finished[image_id] = version.etag
        if len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def _is_finished(self, image_id: str, etag: str | None) -> bool:
        return image_id in self._finished and self._finished[image_id] == etag

    async def _publish(self, image_ids: list[str], partial: bool) -> None:
        """One thread call answers every image's query; the alerts go out together."""
        if not image_ids:
            return
        if partial:  # kept: its late features may still complete it
            joined = [(image_id, self._pending[image_id]) for image_id in image_ids]
            for _, version in joined:
                version.partial_sent = True
        else:
            joined = [(image_id, self._pending.pop(image_id)) for image_id in image_ids]
            for image_id, version in joined:
                self._finish(image_id, version)
        k = self._settings.near_duplicate_k
        requests = [SearchRequest(image_id=image_id, k=k) for image_id, _ in joined]
        replies = await asyncio.to_thread(lambda: [self._engine.answer(r) for r in requests])
        alerts: list[ImageAlert] = []
        for (image_id, version), reply in zip(joined, replies, strict=True):
            if partial and self._pending.get(image_id) is not version:
                continue  # completed (or overwritten) while its query ran: that alert says more
            if not reply.ok:  # removed meanwhile: nothing to say
                log.info("image_alert.skipped", image_id=image_id, why=reply.error)
                continue
            alerts.append(
                ImageAlert(
                    image_id=image_id,
                    etag=version.etag,
                    features=sorted(version.features),
                    partial=partial,
                    matches=[h for h in reply.hits if h.verdict in MATCHES],
                )
            )
        if self._settings.publish_alerts:
            topic = self._settings.image_alerts_topic
            sends = [
                await self._producer.send(topic, a.to_bytes(), key=a.image_id.encode())
                for a in alerts
            ]
            await asyncio.gather(*sends)  # every ack, before the batch's offsets move on
            self.published += len(alerts)
        for alert in alerts:
            log.info(
                "image_alert.published" if self._settings.publish_alerts else "image_alert.joined",
                image_id=alert.image_id,
                partial=partial,
                matches=len(alert.matches),
            )

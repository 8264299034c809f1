"""Shared by the benchmarks: distinct 640x480 JPEG photos and a results-topic listener."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
from aiokafka import TopicPartition

from schemas.kafka import make_consumer
from schemas.settings import Settings
from schemas.similarity import ImageAlert, SimilarityResult


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class IndexedListener:
    """Records when each image id's SimilarityResult (published once it is searchable) arrives,
    and its ImageAlert (published once every feature has it, after its fused query)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.seen: dict[str, float] = {}  # image id -> first result (any feature)
        self.seen_by_feature: dict[str, dict[str, float]] = {}
        self.alerts = 0  # image alerts seen
        self.partial = 0  # of which partial
        self._consumer = make_consumer(settings, group_id=None)
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()
        topics = (self._settings.similarity_results_topic, self._settings.image_alerts_topic)
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in self._consumer.partitions_for_topic(topic) or ()
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for records in (await self._consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                for record in records:
                    if record.topic == self._settings.image_alerts_topic:
                        alert = ImageAlert.from_bytes(record.value)
                        self.alerts += 1
                        self.partial += alert.partial
                        continue
                    result = SimilarityResult.from_bytes(record.value)
                    self.seen.setdefault(result.image_id, now)
                    by_id = self.seen_by_feature.setdefault(result.feature, {})
                    by_id.setdefault(result.image_id, now)
                self._arrived.set()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until `done()` holds after some arrival; False if `timeout` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self._consumer.stop()

"""Does a consumer still read the log its positions (or stored offsets) refer to?

An offset means something only in one log. When the broker is replaced (the embedded broker
keeps topics in memory, a cluster is rebuilt) or a topic is re-created, an old position can
point past the end of the new log, and a broker may answer that fetch with nothing instead
of an out-of-range error (Tansu does): the consumer would wait there and skip whatever
arrives below it. The sign checked here every `interval_s`: the broker's cluster id changed
(the embedded stack starts each broker with a new one; a rebuilt Kafka cluster has a new one).

Offsets past a partition's end are checked where offsets are resumed (the indexer's start,
`end_of_log`): Tansu reports the end of a partition as the last *batch's* base offset + 1,
so a reported end is only a lower bound there, and the real end is read off the log.
"""

from __future__ import annotations

import time

import structlog

from schemas.kafka import cluster_id, make_admin
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class LogWatch:
    def __init__(self, settings: Settings, interval_s: float) -> None:
        self._admin = make_admin(settings)
        self._interval_s = interval_s
        self._next_check = 0.0
        self.cluster_id: str | None = None  # the log our positions refer to

    async def start(self) -> None:
        await self._admin.start()
        self.cluster_id = await self.current_cluster_id()

    async def stop(self) -> None:
        await self._admin.close()

    async def current_cluster_id(self) -> str | None:
        """The broker's cluster id now; None if it cannot be asked right now."""
        return await cluster_id(self._admin)

    async def changed(self) -> str | None:
        """Why positions no longer refer to this log, or None (also when it is not yet time
        to check again)."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self._interval_s
        current = await self.current_cluster_id()
        if current is not None and current != self.cluster_id:
            before, self.cluster_id = self.cluster_id, current
            if before is not None:
                return f"the broker's cluster id changed from {before} to {current}"
        return None

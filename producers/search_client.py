"""The waiting side of request-reply: publish a SearchRequest with `correlation_id` and
`reply_to` headers, and resolve the matching future when the reply arrives.

Replies are read by manual assignment (no consumer group) from the end of the reply topic,
so many clients can share one reply topic; each ignores correlation ids it did not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from types import TracebackType
from typing import Self

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.search import SearchReply, SearchRequest
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class SearchTimeout(TimeoutError):
    pass


class SearchClient:
    def __init__(self, settings: Settings, reply_topic: str | None = None) -> None:
        self._settings = settings
        self._reply_topic = reply_topic or settings.search_replies_topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, linger_ms=0, max_request_size=4 << 20
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
        )
        self._pending: dict[str, asyncio.Future[SearchReply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        await self._consumer.topics()
        partitions = self._consumer.partitions_for_topic(self._reply_topic) or set()
        if not partitions:
            raise RuntimeError(f"reply topic {self._reply_topic} does not exist")
        tps = [TopicPartition(self._reply_topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, so no reply can slip past
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read_replies(), name="search-replies")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()
        await self._producer.stop()

    async def search(self, request: SearchRequest, timeout: float | None = None) -> SearchReply:
        return await self.send_raw(request.to_bytes(), timeout)

    async def send_raw(self, value: bytes, timeout: float | None = None) -> SearchReply:
        """Send any bytes as a request (tests use this for malformed requests)."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[SearchReply] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        headers = [
            ("correlation_id", correlation_id.encode()),
            ("reply_to", self._reply_topic.encode()),
        ]
        try:
            await self._producer.send_and_wait(
                self._settings.search_requests_topic, value, headers=headers
            )
            wait = timeout if timeout is not None else self._settings.search_timeout_s
            try:
                return await asyncio.wait_for(future, wait)
            except TimeoutError:
                raise SearchTimeout(f"no reply within {wait}s") from None
        finally:
            self._pending.pop(correlation_id, None)

    async def _read_replies(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    cid = headers.get("correlation_id", b"").decode()
                    future = self._pending.get(cid)
                    if future is None or future.done():
                        continue
                    try:
                        future.set_result(SearchReply.from_bytes(record.value))
                    except ValueError as exc:
                        future.set_exception(exc)

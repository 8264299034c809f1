"""The waiting side of request-reply: publish a SearchRequest with `correlation_id` and
`reply_to` headers, and resolve the matching future when the reply arrives.

Replies are read by manual assignment (no consumer group) from the end of the reply topic,
so many clients can share one reply topic; each ignores correlation ids it did not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, TypeVar, cast

import structlog
from aiokafka import TopicPartition

from schemas.control import (
    ControlReport,
    IndexerStatus,
    InventoryCommand,
    InventoryReport,
    RebuildCommand,
    RebuildReport,
    ReconcileCommand,
    ReconcileReport,
    StatusCommand,
)
from schemas.kafka import cluster_id, make_admin, make_consumer, make_producer
from schemas.search import SearchErrorCode, SearchHit, SearchReply, SearchRequest
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class SearchTimeout(TimeoutError):
    pass


class SearchClient:
    def __init__(self, settings: Settings, reply_topic: str | None = None) -> None:
        self._settings = settings
        self._reply_topic = reply_topic or settings.search_replies_topic
        # No linger: with many requests in flight, aiokafka already sends what queued up
        # meanwhile together, and a lone request leaves at once (measured: a 2 ms linger
        # raised p99, BENCHMARKS.md "Search request throughput").
        self._producer = make_producer(settings, linger_ms=0)
        self._consumer = make_consumer(settings, group_id=None)
        # Which broker log the reply positions refer to (a new cluster id: a new, empty log).
        self._admin = make_admin(settings)
        self._cluster_id: str | None = None
        self._pending: dict[str, asyncio.Queue[bytes]] = {}
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
        try:
            await self._start()
        except BaseException:
            await self._producer.stop()
            await self._consumer.stop()
            raise

    async def _start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        await self._admin.start()
        self._cluster_id = await cluster_id(self._admin)
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
        await self._admin.close()

    async def search(self, request: SearchRequest, timeout: float | None = None) -> SearchReply:
        """Ask every shard, merge their answers into one top-k.

        Waits until the answers cover every feature partition, or `timeout` (default
        LOOKALIKE_SEARCH_DEADLINE_S); then the reply is marked partial. Raises SearchTimeout
        only if no shard answered at all.
        """
        wait = timeout if timeout is not None else self._settings.search_deadline_s
        replies = await self._gather(self._requests, request.to_bytes(), wait, SearchReply)
        owner = next((r for r in replies if r.ok and r.query_vector), None)
        others_lack_it = any(r.error_code is SearchErrorCode.NOT_FOUND for r in replies)
        if request.image_id is not None and owner is not None and others_lack_it:
            # Sharded: only the owner has the image's vector; ask every shard with it.
            by_vector = request.model_copy(
                update={
                    "image_id": None,
                    "vector": owner.query_vector,
                    "exclude": [*request.exclude, request.image_id],
                }
            )
            replies = await self._gather(self._requests, by_vector.to_bytes(), wait, SearchReply)
        return merge_replies(replies, request.k)

    async def send_raw(self, value: bytes, timeout: float | None = None) -> SearchReply:
        """Send any bytes as a request (tests use this for malformed requests)."""
        wait = timeout if timeout is not None else self._settings.search_deadline_s
        return merge_replies(await self._gather(self._requests, value, wait, SearchReply), k=0)

    async def rebuild(self, command: RebuildCommand, timeout: float) -> list[RebuildReport]:
        """Ask every indexer to rebuild; the reports of those that answered in time."""
        return await self._control(command.to_bytes(), timeout, RebuildReport)

    async def reconcile(self, command: ReconcileCommand, timeout: float) -> list[ReconcileReport]:
        """Ask every indexer to compare its indexes with the bucket and repair the difference."""
        return await self._control(command.to_bytes(), timeout, ReconcileReport)

    async def status(self, timeout: float = 2.0, all_replicas: bool = True) -> list[IndexerStatus]:
        """Every indexer's status (with `all_replicas`, waits out `timeout` for replicas)."""
        return await self._control(
            StatusCommand().to_bytes(), timeout, IndexerStatus, until_covered=not all_replicas
        )

    async def inventory(self, feature: str, timeout: float = 10.0) -> list[InventoryReport]:
        """What each indexer holds of one feature: image id -> eTag, by shard."""
        command = InventoryCommand(feature=feature)
        return await self._control(command.to_bytes(), timeout, InventoryReport)

    async def _control(
        self, value: bytes, timeout: float, answer: type[ReportT], until_covered: bool = True
    ) -> list[ReportT]:
        topic = self._settings.control_topic
        return await self._gather(topic, value, timeout, answer, until_covered=until_covered)

    @property
    def _requests(self) -> str:
        return self._settings.search_requests_topic

    async def _gather(
        self,
        topic: str,
        value: bytes,
        wait: float,
        answer: type[AnswerT],
        until_covered: bool = True,
    ) -> list[AnswerT]:
        """Send one request to every indexer; collect answers until they cover every
        partition (with `until_covered`) or `wait` runs out."""
        correlation_id = uuid.uuid4().hex
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending[correlation_id] = inbox
        headers = [
            ("correlation_id", correlation_id.encode()),
            ("reply_to", self._reply_topic.encode()),
        ]
        replies: list[AnswerT] = []
        try:
            await self._producer.send_and_wait(topic, value, headers=headers)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while not (until_covered and _covers_all(replies)):
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    raw = await asyncio.wait_for(inbox.get(), left)
                except TimeoutError:
                    break
                try:
                    replies.append(cast(AnswerT, answer.from_bytes(raw)))
                except ValueError:
                    log.warning("search.bad_reply", expected=answer.__name__)
        finally:
            self._pending.pop(correlation_id, None)
        if not replies:
            raise SearchTimeout(f"no reply within {wait}s")
        return replies

    async def _read_replies(self) -> None:
        next_check = 0.0
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= next_check:
                next_check = loop.time() + self._settings.log_check_interval_s
                await self._follow_new_log()
            batches = await self._consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    headers = dict(record.headers)
                    inbox = self._pending.get(headers.get("correlation_id", b"").decode())
                    if inbox is None:
                        continue
                    inbox.put_nowait(record.value or b"")

    async def _follow_new_log(self) -> None:
        """A restarted broker (new cluster id) has a new, empty reply topic: read it from its
        start, or replies would be awaited at the old log's offsets and never arrive."""
        current = await cluster_id(self._admin)
        if current is None or current == self._cluster_id:
            return
        log.warning("search_client.new_log", cluster_id=current)
        self._cluster_id = current
        await self._consumer.seek_to_beginning(*self._consumer.assignment())


class _Answer(Protocol):
    @property
    def partitions(self) -> list[int]: ...
    @property
    def partition_count(self) -> int: ...


ReportT = TypeVar("ReportT", bound=ControlReport)
AnswerT = TypeVar("AnswerT", bound=SearchReply | ControlReport)


def _covers_all(replies: Sequence[_Answer]) -> bool:
    if not replies:
        return False
    count = max(r.partition_count for r in replies)
    covered = {p for r in replies for p in r.partitions}
    return count == 0 or covered >= set(range(count))


def merge_replies(replies: list[SearchReply], k: int) -> SearchReply:
    """One reply from the shards' replies: hits merged by distance (replicas deduplicated),
    partial when the answers do not cover every partition."""
    count = max(r.partition_count for r in replies)
    covered = sorted({p for r in replies for p in r.partitions})
    partial = count > 0 and len(covered) < count
    answered = [r for r in replies if r.ok]
    if not answered:
        first = replies[0]
        return first.model_copy(update={"partitions": covered, "partial": partial})
    best: dict[str, SearchHit] = {}
    for reply in answered:
        for hit in reply.hits:
            if hit.image_id not in best or hit.distance < best[hit.image_id].distance:
                best[hit.image_id] = hit
    hits = sorted(best.values(), key=lambda h: (h.distance, h.image_id))
    shards = {tuple(r.partitions): r.indexed for r in answered}  # replicas counted once
    return SearchReply(
        ok=True,
        feature=answered[0].feature,
        hits=hits[:k] if k else hits,
        indexed=sum(shards.values()),
        partitions=covered,
        partition_count=count,
        partial=partial,
        took_ms=max(r.took_ms for r in answered),
        query_vector=next((r.query_vector for r in answered if r.query_vector), None),
    )

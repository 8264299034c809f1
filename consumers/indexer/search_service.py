"""Request-reply over Kafka with FastStream: a subscriber on the search-requests topic whose
return value FastStream publishes to the request's `reply_to` topic with its
`correlation_id`. Request logging lives in a middleware, not in the handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from faststream import BaseMiddleware
from faststream.kafka import KafkaBroker, TopicPartition
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage

from consumers.indexer.control import ControlService
from consumers.indexer.query import QueryEngine, error_reply
from schemas.control import ControlReport, RebuildCommand, parse_command
from schemas.dead_letter import DeadLetter
from schemas.kafka import MAX_FETCH_BYTES, producer_options
from schemas.message import MessageError
from schemas.search import SearchErrorCode, SearchRequest
from schemas.settings import Settings

log = structlog.get_logger(__name__)


class RequestLogMiddleware(BaseMiddleware):
    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await call_next(msg)
        finally:
            log.info(
                "search.answered",
                correlation_id=msg.correlation_id,
                reply_to=msg.reply_to or None,
                took_ms=round((time.perf_counter() - started) * 1000, 2),
            )


def build_search_broker(
    settings: Settings,
    engine: QueryEngine,
    request_partitions: list[int],
    control: ControlService,
    control_partitions: list[int],
    replies: AIOKafkaProducer,
) -> KafkaBroker:
    """`replies`: a started producer for search replies (sent straight, many per batch)."""
    broker = KafkaBroker(
        settings.kafka_bootstrap,
        middlewares=[RequestLogMiddleware],
        # FastStream logs through the standard library: its errors show, per-message chatter not.
        logger=logging.getLogger("faststream"),
        log_level=logging.DEBUG,
        **{**producer_options(), "linger_ms": 2},  # a batch's replies in few produce requests
    )

    unanswered: set[asyncio.Task[ControlReport]] = set()

    async def dead_letter(
        message: KafkaMessage | ConsumerRecord[bytes, bytes], reason: str
    ) -> None:
        raw = message if isinstance(message, ConsumerRecord) else message.raw_message
        assert not isinstance(raw, tuple)  # one record
        log.warning("dead_letter", stage="search", reason=reason, topic=raw.topic)
        letter = DeadLetter(
            stage="search",
            reason=reason,
            source_topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key,
            value=raw.value,
        )
        await broker.publish(letter.to_bytes(), settings.dead_letter_topic)

    async def refused_reply_to(message: KafkaMessage) -> bool:
        """Replies go only where replies belong: never into a data topic."""
        if not message.reply_to or message.reply_to.startswith(settings.reply_to_prefix):
            return False
        reason = (
            f"reply_to {message.reply_to!r} is not a reply topic "
            f"(allowed: names starting with {settings.reply_to_prefix!r})"
        )
        message.reply_to = ""  # FastStream publishes the return value to reply_to: not here
        await dead_letter(message, reason)
        return True

    # Every indexer reads every request partition (no consumer group): a restarted indexer
    # serves at once instead of waiting out a group rebalance, and each shard sees each query.
    # Requests are answered a poll at a time: one fetch, one hop to a worker thread for the
    # whole batch, and the replies published together (aiokafka batches concurrent sends).
    @broker.subscriber(
        partitions=[TopicPartition(settings.search_requests_topic, p) for p in request_partitions],
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        auto_offset_reset="latest",
        max_partition_fetch_bytes=MAX_FETCH_BYTES,
        batch=True,
        max_records=settings.search_batch_max,
        batch_timeout_ms=settings.search_poll_ms,
    )
    async def answer(message: KafkaMessage) -> None:
        records = message.raw_message
        assert isinstance(records, tuple)  # a batch subscriber
        message.reply_to = ""  # each request is answered below, to its own reply_to
        requests: list[tuple[SearchRequest, str, str]] = []
        refused: list[Awaitable[None]] = []
        for record in records:
            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
            reply_to, correlation_id = (
                headers.get("reply_to", ""),
                headers.get("correlation_id", ""),
            )
            if reply_to and not reply_to.startswith(settings.reply_to_prefix):
                reason = (
                    f"reply_to {reply_to!r} is not a reply topic "
                    f"(allowed: names starting with {settings.reply_to_prefix!r})"
                )
                refused.append(dead_letter(record, reason))
                continue
            try:
                requests.append((SearchRequest.from_bytes(record.value), reply_to, correlation_id))
            except MessageError as exc:
                if not reply_to:
                    refused.append(dead_letter(record, str(exc)))
                    continue
                bad = error_reply("unknown", SearchErrorCode.BAD_REQUEST, str(exc))
                refused.append(reply(bad.to_bytes(), reply_to, correlation_id))
        replies = await asyncio.to_thread(lambda: [engine.answer(r) for r, _, _ in requests])
        await asyncio.gather(
            *refused,
            *(
                reply(answered.to_bytes(), reply_to, correlation_id)
                for answered, (_, reply_to, correlation_id) in zip(replies, requests, strict=True)
                if reply_to
            ),
        )

    async def reply(value: bytes, reply_to: str, correlation_id: str) -> None:
        """Queued, not waited for: the next poll starts at once. A reply that cannot be
        delivered is logged; its caller's deadline runs out and it asks again."""
        headers = [("correlation_id", correlation_id.encode())]
        delivery = await replies.send(reply_to, value, headers=headers)
        delivery.add_done_callback(_log_undelivered)

    @broker.subscriber(
        partitions=[TopicPartition(settings.control_topic, p) for p in control_partitions],
        fetch_max_wait_ms=max(settings.fetch_max_wait_ms, 100),
        auto_offset_reset="latest",
    )
    async def command(message: KafkaMessage) -> bytes | None:
        if await refused_reply_to(message):
            return None
        try:
            parsed = parse_command(message.body)
        except MessageError as exc:
            await dead_letter(message, str(exc))
            message.reply_to = ""
            return None
        if not message.reply_to:  # nobody waits (the S3 gateway's "reconcile, please")
            task = asyncio.create_task(control.answer(parsed))
            unanswered.add(task)
            task.add_done_callback(unanswered.discard)
            return None
        if isinstance(parsed, RebuildCommand):
            # Long: answered when done, so status commands (progress) are answered meanwhile.
            later = asyncio.create_task(answer_later(parsed, message.reply_to, message))
            unanswered.add(later)
            later.add_done_callback(unanswered.discard)
            message.reply_to = ""
            return None
        return (await control.answer(parsed)).to_bytes()

    async def answer_later(
        parsed: RebuildCommand, reply_to: str, message: KafkaMessage
    ) -> ControlReport:
        report = await control.answer(parsed)
        await broker.publish(
            report.to_bytes(), topic=reply_to, correlation_id=message.correlation_id
        )
        return report

    return broker


def _log_undelivered(delivery: asyncio.Future[Any]) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("search.reply_undelivered", error=repr(delivery.exception()))

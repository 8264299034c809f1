"""The embedded stack's S3 server: nanio (objects as files on disk) behind an ASGI layer that
publishes a MinIO-format notification to the image-events topic after every successful
upload, copy, multipart completion or delete, as MinIO's Kafka target does in production.

Any S3 client can talk to it; events are keyed `bucket/key` like MinIO's, so one object's
events stay in order on one partition. A crash between the write and the publish loses that
event; `lookalike backfill` (a bucket scan) repairs the index, as it would with MinIO.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import structlog
import uvicorn
from aiokafka import AIOKafkaProducer
from nanio.app import build_app
from nanio.auth.credentials import StaticCredentialResolver
from nanio.config import Settings as NanioSettings
from nanio.errors import S3Error as NanioError

from schemas import tracing
from schemas.control import ReconcileCommand
from schemas.kafka import make_producer
from schemas.minio_events import build_notification, notification_key
from schemas.settings import Settings

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Publish = Callable[[bytes, bytes], Awaitable[None]]

_DELETE_KEY = re.compile(rb"<Key>(.*?)</Key>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Mutation:
    event_name: str
    bucket: str
    key: str | None  # None: a multi-object delete, keys come from the request body


def classify(scope: Scope) -> Mutation | None:
    """Which S3 call is this request, if it changes an object?"""
    method = scope["method"]
    bucket, _, key = scope["path"].lstrip("/").partition("/")
    query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)
    if not bucket:
        return None
    if not key:
        return (
            Mutation("s3:ObjectRemoved:Delete", bucket, None)
            if (method == "POST" and "delete" in query)
            else None
        )
    if method == "PUT" and "uploadId" not in query and not (query.keys() & {"tagging", "acl"}):
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        copy = b"x-amz-copy-source" in headers
        return Mutation("s3:ObjectCreated:Copy" if copy else "s3:ObjectCreated:Put", bucket, key)
    if method == "POST" and "uploadId" in query:
        return Mutation("s3:ObjectCreated:CompleteMultipartUpload", bucket, key)
    if method == "DELETE" and "uploadId" not in query:
        return Mutation("s3:ObjectRemoved:Delete", bucket, key)
    return None


class NotifyingS3:
    """ASGI wrapper: run the S3 request, then publish its bucket event if it succeeded."""

    def __init__(self, app: ASGIApp, storage: Any, publish: Publish) -> None:
        self._app = app
        self._storage = storage
        self._publish = publish

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mutation = classify(scope) if scope["type"] == "http" else None
        if mutation is None:
            await self._app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def recording_receive() -> Message:
            message = await receive()
            if mutation.key is None and message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self._app(scope, recording_receive, recording_send)
        # A multi-delete answers 200 even for keys that failed; S3 clients rarely hit that.
        if 200 <= status < 300:
            keys = [mutation.key] if mutation.key else _deleted_keys(bytes(body))
            for key in keys:
                await self._notify(mutation.event_name, mutation.bucket, key)

    async def _notify(self, event_name: str, bucket: str, key: str) -> None:
        if event_name.startswith("s3:ObjectRemoved"):
            value = build_notification(event_name, bucket, key)
        else:
            try:
                info = await asyncio.to_thread(self._storage.head_object, bucket, key)
            except NanioError:
                return  # deleted again already; that delete publishes its own event
            value = build_notification(
                event_name,
                bucket,
                key,
                etag=info.etag,
                size=info.size,
                content_type=info.content_type,
            )
        try:
            await self._publish(notification_key(bucket, key), value)
        except Exception:
            log.exception("gateway.publish_failed", bucket=bucket, key=key)


async def _ask_for_reconciliation(producer: AIOKafkaProducer, settings: Settings) -> None:
    """A gateway that stopped uncleanly may have written objects whose events it never
    published: ask the indexers to compare with the bucket (no reply wanted)."""
    command = ReconcileCommand(
        reason="s3 gateway started (events may have been lost)", grace_s=None
    )
    try:
        await producer.send_and_wait(settings.control_topic, command.to_bytes())
    except Exception:
        log.exception("gateway.reconcile_request_failed")


def _deleted_keys(body: bytes) -> list[str]:
    from html import unescape

    return [unescape(k.decode()) for k in _DELETE_KEY.findall(body)]


async def serve_gateway(settings: Settings, port: int, stop: asyncio.Event) -> None:
    nanio_settings = NanioSettings(
        data_dir=(settings.data_dir / "s3").resolve(),
        host="127.0.0.1",
        port=port,
        access_log=False,
        credentials=StaticCredentialResolver({settings.s3_access_key: settings.s3_secret_key}),
    )
    nanio_settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = build_app(nanio_settings)
    producer = make_producer(settings)
    await producer.start()

    async def publish(key: bytes, value: bytes) -> None:
        # One trace per object event, followed downstream.
        span = tracing.stage("s3.object_event", None, attributes={"image_id": key.decode()})
        await producer.send_and_wait(
            settings.image_events_topic, value, key=key, headers=tracing.headers_for(span)
        )
        log.info("gateway.event_published", image_id=key.decode(), trace_id=tracing.trace_id(span))

    await _ask_for_reconciliation(producer, settings)
    gateway = NotifyingS3(app, app.state.storage, publish)
    config = uvicorn.Config(
        gateway, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    log.info("gateway.serving", port=port, data_dir=str(nanio_settings.data_dir))
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await serving
        await producer.stop()

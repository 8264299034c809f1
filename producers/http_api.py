"""`lookalike http`: the HTTP API and the web page, a Kafka and S3 client like any other.

- `POST /api/search`: multipart `image` file, or form field `text` or `image_id`; `feature`
  (default `all`: fused, with verdicts) and `k` -> JSON hits with per-feature distances, a
  verdict and a thumbnail URL (a presigned S3 GET);
- `GET /api/images/{image_id}/similar`: the same for an indexed image;
- `POST /api/upload`: multipart `image` into the bucket (`uploads/` + its file name);
- `GET /api/alerts`: server-sent events, one `ImageAlert` (JSON) per uploaded image as it is
  published on the image-alerts topic;
- `GET /`: the web page (producers/web/index.html); `GET /docs`: OpenAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import structlog
from aiokafka import TopicPartition
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, StreamingResponse
from minio import Minio

from producers.search_client import SearchClient, SearchTimeout
from producers.uploads import ensure_bucket, upload_bytes
from schemas.kafka import make_consumer
from schemas.search import ALL_FEATURES, SearchReply, SearchRequest
from schemas.settings import Settings
from schemas.similarity import ImageAlert

log = structlog.get_logger(__name__)

PAGE = Path(__file__).parent / "web" / "index.html"
THUMBNAIL_TTL = timedelta(hours=1)


class AlertFeed:
    """Reads the image-alerts topic from its end and hands each alert to every listener."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._listeners: set[asyncio.Queue[str]] = set()

    def listen(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=100)
        self._listeners.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[str]) -> None:
        self._listeners.discard(queue)

    async def run(self) -> None:
        topic = self._settings.image_alerts_topic
        consumer = make_consumer(self._settings, group_id=None, auto_offset_reset="latest")
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        self._publish(ImageAlert.from_bytes(record.value).model_dump_json())
        finally:
            await consumer.stop()

    def _publish(self, alert: str) -> None:
        for queue in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):  # a slow page misses alerts, not us
                queue.put_nowait(alert)


def build_app(settings: Settings, s3: Minio, links: Minio | None = None) -> FastAPI:
    """`links`: the S3 client that presigns thumbnail URLs (an endpoint browsers reach)."""
    links = links or s3
    state: dict[str, Any] = {}
    feed = AlertFeed(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_bucket(s3, settings.bucket)
        async with SearchClient(settings) as client:
            state["client"] = client
            reading = asyncio.create_task(feed.run(), name="alert-feed")
            log.info("http.ready")
            try:
                yield
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading

    app = FastAPI(
        title="lookalike",
        description="Reverse-image, text and near-duplicate search over an S3 bucket.",
        lifespan=lifespan,
    )

    async def answer(request: SearchRequest) -> dict[str, Any]:
        client: SearchClient = state["client"]
        try:
            reply = await client.search(request)
        except SearchTimeout as exc:
            raise HTTPException(504, f"no indexer answered in time: {exc}") from exc
        if not reply.ok:
            status = 404 if reply.error_code and reply.error_code.value == "not_found" else 400
            raise HTTPException(status, reply.error or "search failed")
        return as_json(reply)

    def as_json(reply: SearchReply) -> dict[str, Any]:
        return {
            "feature": reply.feature,
            "partial": reply.partial,
            "indexed": reply.indexed,
            "took_ms": reply.took_ms,
            "hits": [
                {
                    "image_id": h.image_id,
                    "verdict": h.verdict.value if h.verdict else None,
                    "distance": h.distance,
                    "distances": h.distances,
                    "url": links.presigned_get_object(h.bucket, h.key, expires=THUMBNAIL_TTL),
                }
                for h in reply.hits
            ],
        }

    @app.post("/api/search")
    async def search(
        image: Annotated[UploadFile | None, File()] = None,
        text: Annotated[str | None, Form()] = None,
        image_id: Annotated[str | None, Form()] = None,
        feature: Annotated[str, Form()] = ALL_FEATURES,
        k: Annotated[int, Form(ge=1, le=100)] = 12,
    ) -> dict[str, Any]:
        """Search by an image file, a text or an indexed image id."""
        data = await image.read() if image is not None else None
        try:
            request = SearchRequest(
                feature=feature,
                k=k,
                image=data or None,
                text=text or None,
                image_id=image_id or None,
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return await answer(request)

    @app.get("/api/images/{image_id:path}/similar")
    async def similar(image_id: str, feature: str = ALL_FEATURES, k: int = 12) -> dict[str, Any]:
        """The images most like an indexed one (bucket/key)."""
        return await answer(SearchRequest(feature=feature, k=k, image_id=image_id))

    @app.post("/api/upload")
    async def upload(image: Annotated[UploadFile, File()]) -> dict[str, str]:
        """Put an image into the bucket; it is indexed within moments."""
        data = await image.read()
        if len(data) > settings.max_image_bytes:
            raise HTTPException(413, f"over the {settings.max_image_bytes:,}-byte upload limit")
        key = f"uploads/{Path(image.filename or 'image.jpg').name}"
        await asyncio.to_thread(upload_bytes, s3, settings.bucket, key, data)
        return {"image_id": f"{settings.bucket}/{key}"}

    @app.get("/api/alerts")
    async def alerts() -> StreamingResponse:
        """Server-sent events: each uploaded image's joined alert (JSON) as it is published."""
        queue = feed.listen()

        async def events() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        alert = await asyncio.wait_for(queue.get(), 15)
                        yield f"event: alert\ndata: {alert}\n\n"
                    except TimeoutError:
                        yield ": keep-alive\n\n"
            finally:
                feed.leave(queue)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    return app


async def serve_http(
    settings: Settings, s3: Minio, links: Minio, port: int, stop: asyncio.Event
) -> None:
    import uvicorn

    config = uvicorn.Config(
        build_app(settings, s3, links), host=settings.http_host, port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    log.info("http.serving", url=f"http://{settings.http_host}:{port}/")
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await serving

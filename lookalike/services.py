"""Entry points of the long-running services, each run until SIGINT/SIGTERM. Each imports what
it needs when it starts (the S3 gateway and the HTTP service never load a model)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from lookalike.s3 import s3_client
from schemas import metrics, tracing
from schemas.settings import Settings


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())


def observe(settings: Settings, service: str) -> None:
    """Metrics endpoint and span export, as configured (schemas/metrics.py, tracing.py)."""
    metrics.serve(settings)
    tracing.configure(settings, service)


def run_extractor(settings: Settings) -> None:
    from consumers.extractor.app import ExtractorService
    from consumers.features.catalog import build_features

    observe(settings, "extractor")
    service = ExtractorService(settings, s3_client(settings), build_features(settings))
    run_until_signalled(service.run)


def run_indexer_service(settings: Settings) -> None:
    from consumers.features.catalog import build_features
    from consumers.indexer.app import run_indexer

    observe(settings, "indexer")
    features = build_features(settings)
    run_until_signalled(lambda stop: run_indexer(settings, s3_client(settings), features, stop))


def run_gateway(settings: Settings, port: int) -> None:
    from producers.s3_gateway import serve_gateway

    observe(settings, "s3-gateway")
    run_until_signalled(lambda stop: serve_gateway(settings, port, stop))


def run_http(settings: Settings, port: int) -> None:
    from lookalike.s3 import public_s3_client
    from producers.http_api import serve_http

    observe(settings, "http")
    s3, links = s3_client(settings), public_s3_client(settings)
    run_until_signalled(lambda stop: serve_http(settings, s3, links, port, stop))

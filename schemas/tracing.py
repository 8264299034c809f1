"""One image followed through every stage: W3C `traceparent` in Kafka headers.

The S3 gateway starts a trace per object event (MinIO's own notifications carry none: the
extractor starts one then); the extractor passes it on to the feature events it publishes,
the indexer to its alerts, each stage as a child span (`stage`). Every stage logs the trace id
with the image id, so `lookalike trace KEY` can put one image's stages in order from the logs.
With `LOOKALIKE_OTLP_ENDPOINT` set (`configure`), the stages are also exported as
OpenTelemetry spans (OTLP over HTTP), each from the moment its input was published to the
moment it handled it, so a tracing backend shows where an upload waited.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.settings import Settings

HEADER = "traceparent"
_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

Headers = Sequence[tuple[str, bytes]]


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_of(parent: str | None) -> str:
    """A new span in the parent's trace (a new trace if the parent is missing or malformed)."""
    found = _FORMAT.match(parent or "")
    if found is None:
        return new_traceparent()
    return f"00-{found.group(1)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str | None) -> str | None:
    found = _FORMAT.match(traceparent or "")
    return found.group(1) if found else None


def from_headers(headers: Headers | None) -> str | None:
    """The record's traceparent, if it carries one."""
    for name, value in headers or ():
        if name == HEADER:
            return value.decode("ascii", "replace")
    return None


def headers_for(traceparent: str) -> list[tuple[str, bytes]]:
    return [(HEADER, traceparent.encode("ascii"))]


_tracer: Any = None  # an OpenTelemetry tracer once `configure` found an endpoint


def configure(settings: Settings, service: str, provider: Any = None) -> None:
    """Export stage spans when `settings.otlp_endpoint` is set (or to `provider`, in tests)."""
    global _tracer
    if provider is None and not settings.otlp_endpoint:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    if provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(
            resource=Resource.create({"service.name": f"lookalike-{service}"})
        )
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
        )
    _tracer = provider.get_tracer("lookalike")


def stage(
    name: str,
    parent: str | None,
    started_ms: int | None = None,
    attributes: Mapping[str, str] | None = None,
) -> str:
    """A stage of one image's way, as a child of `parent` (a new trace without one); returns
    the traceparent the next stage continues. `started_ms`: when the stage's input was
    published (the record's timestamp), so the span covers waiting and handling."""
    if _tracer is None:
        return child_of(parent)
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    context = propagator.extract({HEADER: parent}) if trace_id(parent) else None
    start_ns = started_ms * 1_000_000 if started_ms else time.time_ns()
    span = _tracer.start_span(
        name, context=context, start_time=min(start_ns, time.time_ns()), attributes=attributes
    )
    span.end()
    carrier: dict[str, str] = {}
    from opentelemetry import trace

    propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(HEADER) or child_of(parent)

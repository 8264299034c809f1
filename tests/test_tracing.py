"""traceparent headers carry one trace across stages; with an exporter, each stage is a span."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas import tracing
from schemas.settings import Settings


def test_a_child_continues_its_parents_trace_and_a_bad_header_starts_a_new_one() -> None:
    root = tracing.new_traceparent()
    child = tracing.child_of(root)
    assert tracing.trace_id(child) == tracing.trace_id(root) and child != root
    assert tracing.trace_id(tracing.child_of("garbage")) not in (None, tracing.trace_id(root))
    headers = tracing.headers_for(child)
    assert tracing.from_headers([("other", b"x"), *headers]) == child
    assert tracing.from_headers(None) is None


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(Settings(_env_file=None), "test", provider=provider)
    try:
        yield exporter
    finally:
        tracing._tracer = None  # back to headers only for the other tests


def test_each_stage_is_exported_as_a_span_of_one_trace(exported: InMemorySpanExporter) -> None:
    published = tracing.stage("s3.object_event", None, attributes={"image_id": "b/k.jpg"})
    extracted = tracing.stage("extract", published, started_ms=1)
    indexed = tracing.stage("index phash", extracted)
    spans = {s.name: s for s in exported.get_finished_spans()}
    assert set(spans) == {"s3.object_event", "extract", "index phash"}
    trace = {s.context.trace_id for s in spans.values()}
    assert len(trace) == 1 and f"{trace.pop():032x}" == tracing.trace_id(indexed)
    assert spans["extract"].parent is not None
    assert spans["extract"].parent.span_id == spans["s3.object_event"].context.span_id
    assert spans["index phash"].parent.span_id == spans["extract"].context.span_id  # type: ignore[union-attr]
    assert spans["s3.object_event"].attributes == {"image_id": "b/k.jpg"}

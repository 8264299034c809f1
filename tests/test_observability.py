"""Every process serves /metrics whose counters move with the work, and one image can be traced
through every stage from the logs (the real stack: broker, S3 gateway, extractor, indexer)."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid

from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack, metrics_url_variable
from lookalike.status_view import gather_status
from lookalike.trace_view import steps_of
from producers.uploads import upload_bytes
from schemas.settings import Settings
from tests.kafka_helpers import eventually
from tests.test_convergence import all_indexed

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def urls(stack: Stack) -> dict[str, str]:
    return stack.infra.metrics_urls()


def by_role(stack: Stack, role: str) -> str:
    return next(url for name, url in urls(stack).items() if name.startswith(role))


async def test_every_process_announces_its_metrics_endpoint(stack: Stack) -> None:
    env_file = (stack.data_dir / "stack.env").read_text()
    for name, url in urls(stack).items():
        assert f"{metrics_url_variable(name)}={url}" in env_file
        samples = await asyncio.to_thread(scrape, url)
        assert any(n.startswith("process_") for n, _ in samples), name  # it answers
    assert {n.split("-")[0] for n in urls(stack)} >= {"s3", "extractor", "indexer"}


async def test_counters_move_when_an_image_is_indexed(
    stack: Stack, s3: Minio, settings: Settings
) -> None:
    indexer, extractor, gateway = (by_role(stack, r) for r in ("indexer", "extractor", "s3"))
    before = {url: await asyncio.to_thread(scrape, url) for url in (indexer, extractor, gateway)}
    key = f"metrics-{uuid.uuid4().hex[:6]}/one.jpg"
    upload_bytes(s3, settings.bucket, key, distinct_jpegs(1, size=(96, 72), seed=41)[0])
    await all_indexed(settings, [f"{settings.bucket}/{key}"])
    after = {url: await asyncio.to_thread(scrape, url) for url in (indexer, extractor, gateway)}

    def grew(url: str, name: str, **labels: str) -> bool:
        return total(after[url], name, **labels) > total(before[url], name, **labels)

    events = settings.image_events_topic
    assert grew(gateway, "lookalike_messages_out_total", topic=events)
    assert grew(extractor, "lookalike_messages_in_total", stage="extractor", topic=events)
    assert grew(extractor, "lookalike_extraction_seconds_count", feature="phash")
    assert grew(indexer, "lookalike_messages_in_total", stage="indexer")
    assert grew(indexer, "lookalike_upload_to_searchable_seconds_count", feature="phash")
    assert grew(indexer, "lookalike_search_seconds_count", feature="phash")  # the checks' searches
    assert total(after[indexer], "lookalike_index_images") >= 1


async def test_a_dead_letter_is_counted_by_stage_and_reason(
    stack: Stack, s3: Minio, settings: Settings
) -> None:
    extractor = by_role(stack, "extractor")

    async def undecodable() -> float:
        samples = await asyncio.to_thread(scrape, extractor)
        return total(
            samples, "lookalike_dead_letters_total", stage="extractor", reason="undecodable image"
        )

    before = await undecodable()
    upload_bytes(s3, settings.bucket, f"metrics-{uuid.uuid4().hex[:6]}/broken.jpg", b"not a jpeg")
    assert await eventually(undecodable, lambda n: n > before, timeout=60) == before + 1


async def test_one_image_is_traced_through_every_stage(
    stack: Stack, s3: Minio, settings: Settings
) -> None:
    key = f"trace-{uuid.uuid4().hex[:6]}/one.jpg"
    image_id = f"{settings.bucket}/{key}"
    upload_bytes(s3, settings.bucket, key, distinct_jpegs(1, size=(96, 72), seed=43)[0])
    await all_indexed(settings, [image_id])
    steps = await eventually(
        lambda: asyncio.to_thread(steps_of, stack.data_dir / "logs", image_id),
        lambda found: (
            {s.event for s in found} >= {"gateway.event_published", "index.image_applied"}
        ),
    )
    events = [s.event for s in steps]
    assert events[0] == "gateway.event_published" and "extract.published" in events
    assert len({s.trace_id for s in steps}) == 1 and steps[0].trace_id  # one trace throughout
    assert {s.detail.split(";")[0] for s in steps if s.event == "index.image_applied"} >= {
        "phash",
        "colour",
    }


async def test_status_shows_lag_that_drops_to_zero(stack: Stack, settings: Settings) -> None:
    async def lag() -> int:
        report = await gather_status(settings)
        return sum(sum(s.lag.values()) for s in report.indexers if s.ok)

    assert await eventually(lag, lambda behind: behind == 0, timeout=60) == 0

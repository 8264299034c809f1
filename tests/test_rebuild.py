"""`lookalike rebuild`: a fresh index is built from the store and swapped in while queries
keep being answered."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from minio import Minio

from lookalike.samples import distinct_jpegs
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.control import RebuildCommand
from schemas.search import SearchRequest
from schemas.settings import Settings
from tests.kafka_helpers import eventually

pytestmark = pytest.mark.integration


async def test_rebuild_while_querying(s3: Minio, settings: Settings, search: SearchClient) -> None:
    prefix = f"rebuild-{uuid.uuid4().hex[:6]}"
    images = distinct_jpegs(12, size=(320, 240), seed=21)
    for i, data in enumerate(images):
        upload_bytes(s3, settings.bucket, f"{prefix}/{i}.jpg", data)
    target = f"{settings.bucket}/{prefix}/5.jpg"
    await eventually(
        lambda: search.search(SearchRequest(feature="phash", image_id=target)), lambda r: r.ok
    )
    query = SearchRequest(feature="phash", image=images[5], k=1)

    answers: list[str] = []
    done = asyncio.Event()

    async def keep_querying() -> None:
        while not done.is_set():
            reply = await search.search(query)
            answers.append(reply.hits[0].image_id if reply.ok and reply.hits else "-")

    querying = asyncio.create_task(keep_querying())
    reports = await search.rebuild(RebuildCommand(feature="phash"), timeout=60)
    await asyncio.sleep(0.2)  # a few queries after the swap too
    done.set()
    await querying

    assert reports and all(r.ok for r in reports)
    assert reports[0].images >= len(images)
    assert len(answers) >= 3 and set(answers) == {target}  # answered throughout, correctly

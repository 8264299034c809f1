"""Indexer shards and replicas: a query reaches every shard, answers merge into one top-k,
and a missing shard gives a partial reply within the deadline instead of a hang."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs, jpeg, photo
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import SearchReply, SearchRequest
from tests.kafka_helpers import eventually

pytestmark = pytest.mark.integration

COUNT = 24


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """2 shards x 2 replicas, pHash only; every image uploaded once before the tests."""
    stack = Stack(
        Path(tmp_path_factory.mktemp("shards")),
        shards=2,
        replicas=2,
        env={"LOOKALIKE_FEATURES": "phash"},
    )
    stack.start()
    s3 = s3_client(stack.settings)
    for i, data in enumerate(distinct_jpegs(COUNT, size=(320, 240), seed=11)):
        upload_bytes(s3, stack.settings.bucket, f"sh/{i:03d}.jpg", data)
    try:
        yield stack
    finally:
        stack.stop()


def ids(reply: SearchReply) -> list[tuple[str, float]]:
    return [(h.image_id, h.distance) for h in reply.hits]


async def test_every_shard_answers_and_results_merge(sharded: Stack) -> None:
    async with SearchClient(sharded.settings) as search:
        query = SearchRequest(
            feature="phash", image=distinct_jpegs(1, size=(320, 240), seed=11)[0], k=COUNT
        )
        reply = await eventually(
            lambda: search.search(query), lambda r: r.ok and r.indexed == COUNT, timeout=60
        )
    assert reply.partitions == list(range(sharded.settings.partitions)) and not reply.partial
    assert len(reply.hits) == COUNT  # every image, from both shards, each once
    assert reply.hits[0].image_id == "images/sh/000.jpg" and reply.hits[0].distance == 0


async def test_two_shards_give_the_same_results_as_one_index(sharded: Stack) -> None:
    """The merged top-k equals an exact ranking over all images (computed here)."""
    from consumers.features import phash
    from consumers.features.decode import decode_image

    images = distinct_jpegs(COUNT, size=(320, 240), seed=11)
    codes = {f"images/sh/{i:03d}.jpg": phash.phash(decode_image(d)) for i, d in enumerate(images)}
    query = jpeg(photo("coffee"))
    straight, mirrored = phash.phash_with_mirror(decode_image(query))
    expected = sorted(
        (min(phash.hamming(c, straight), phash.hamming(c, mirrored)), i) for i, c in codes.items()
    )[:5]
    async with SearchClient(sharded.settings) as search:
        await eventually(
            lambda: search.search(SearchRequest(feature="phash", image=query, k=1)),
            lambda r: r.indexed == COUNT,
            timeout=60,
        )
        reply = await search.search(SearchRequest(feature="phash", image=query, k=5))
    assert ids(reply) == [(i, float(d)) for d, i in expected]


async def test_query_by_id_searches_every_shard(sharded: Stack) -> None:
    async with SearchClient(sharded.settings) as search:
        reply = await eventually(
            lambda: search.search(
                SearchRequest(feature="phash", image_id="images/sh/003.jpg", k=COUNT)
            ),
            lambda r: r.ok and len(r.hits) == COUNT - 1,
            timeout=60,
        )
    assert "images/sh/003.jpg" not in [h.image_id for h in reply.hits]
    assert not reply.partial


async def test_a_stopped_shard_gives_a_partial_reply_within_the_deadline(sharded: Stack) -> None:
    for replica in range(sharded.replicas):
        sharded.indexers[(1, replica)].stop()
    try:
        async with SearchClient(sharded.settings) as search:
            started = time.monotonic()
            reply = await search.search(
                SearchRequest(
                    feature="phash", image=distinct_jpegs(1, size=(320, 240), seed=11)[0], k=COUNT
                ),
                timeout=1.5,
            )
            waited = time.monotonic() - started
        assert reply.ok and reply.partial
        assert reply.partitions == sharded.shard_partitions(0)
        assert 1.4 <= waited < 3.0
        assert 0 < len(reply.hits) < COUNT  # only shard 0's images
    finally:
        for replica in range(sharded.replicas):
            sharded.start_indexer(1, replica, wait=False)
        await sharded.serving()


async def test_one_replica_down_still_gives_complete_replies(sharded: Stack) -> None:
    sharded.indexers[(0, 0)].kill()
    try:
        async with SearchClient(sharded.settings) as search:
            reply = await search.search(
                SearchRequest(feature="phash", image_id="images/sh/001.jpg", k=COUNT)
            )
        assert reply.ok and not reply.partial and len(reply.hits) == COUNT - 1
    finally:
        sharded.start_indexer(0, 0, wait=False)
        await sharded.serving()

"""Replay as an operation, on the real broker and S3: an index rebuilt from its feature topic
while it answers, the shrink guard, re-extraction since a moment, and a new replica that joins
only once it has caught up with the topic."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from lookalike.s3 import s3_client
from lookalike.stack import Stack
from lookalike.trace_view import steps_of
from producers.replay_events import replay_image_events
from producers.search_client import SearchClient, SearchTimeout
from producers.uploads import upload_bytes
from schemas.control import RebuildCommand, RebuildSource
from schemas.search import SearchRequest
from tests.kafka_helpers import eventually
from tests.test_convergence import LIGHT, all_indexed, upload_many

TOPIC_REBUILD = RebuildCommand(feature="phash", source=RebuildSource.TOPIC)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("replay"), replicas=2, env=LIGHT)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def inventory(client: SearchClient) -> list[dict[str, str | None]]:
    """What the phash index holds (image id -> eTag), as the first replica to answer has it."""
    reports = await client.inventory("phash")
    assert reports and all(r.ok for r in reports)
    return [r.etags for r in sorted(reports, key=lambda r: r.indexer)]


async def finished_rebuilding(client: SearchClient) -> None:
    await eventually(
        lambda: client.status(timeout=2.0),
        lambda statuses: len(statuses) == 2 and not any(s.rebuilding for s in statuses),
    )


async def neighbours(client: SearchClient, image_id: str) -> list[tuple[str, float]]:
    reply = await client.search(SearchRequest(feature="phash", image_id=image_id, k=5))
    assert reply.ok, reply.error
    return [(h.image_id, h.distance) for h in reply.hits]


async def test_a_rebuild_from_the_topic_answers_as_before_and_throughout(
    replicated: Stack,
) -> None:
    settings = replicated.settings
    s3 = s3_client(settings)
    ids = upload_many(s3, settings, f"rebuild-{uuid.uuid4().hex[:6]}", 8, seed=31)
    other = upload_many(s3, settings, f"other-{uuid.uuid4().hex[:6]}", 1, seed=32)
    bucket_key = ids[2].split("/", 1)[1]
    upload_bytes(
        s3,
        settings.bucket,
        bucket_key,
        s3.get_object(settings.bucket, other[0].split("/", 1)[1]).read(),
    )  # overwrite
    s3.remove_object(settings.bucket, ids[3].split("/", 1)[1])  # delete
    live = [i for i in ids if i != ids[3]]
    await all_indexed(settings, live)
    async with SearchClient(settings) as client:
        await eventually(lambda: inventory(client), lambda held: all(ids[3] not in h for h in held))
        before_inventory = await inventory(client)
        before = await neighbours(client, ids[0])

        answered: list[bool] = []
        done = asyncio.Event()

        async def keep_asking() -> None:
            while not done.is_set():
                reply = await client.search(SearchRequest(feature="phash", image_id=ids[0]))
                answered.append(reply.ok and bool(reply.hits))

        asking = asyncio.create_task(keep_asking())
        reports = await client.rebuild(TOPIC_REBUILD, timeout=120)  # the first to cover
        await finished_rebuilding(client)  # the other replica too
        done.set()
        await asking

        assert reports and all(r.ok for r in reports), [r.error for r in reports]
        assert all(r.records >= len(ids) + 2 for r in reports)  # uploads, overwrite, delete
        assert answered and all(answered)  # answered throughout
        assert await inventory(client) == before_inventory
        assert await neighbours(client, ids[0]) == before


async def test_replay_from_a_time_extracts_again_only_what_came_since(
    replicated: Stack,
) -> None:
    settings = replicated.settings
    s3 = s3_client(settings)
    earlier = upload_many(s3, settings, f"before-{uuid.uuid4().hex[:6]}", 2, seed=33)
    await all_indexed(settings, earlier)
    await asyncio.sleep(1.5)  # broker and local clocks: a clear gap
    since = datetime.now(UTC)
    later = upload_many(s3, settings, f"since-{uuid.uuid4().hex[:6]}", 3, seed=34)
    await all_indexed(settings, later)

    republished = await replay_image_events(settings, since=since)

    assert republished == len(later)

    def described(image_id: str) -> int:
        steps = steps_of(replicated.data_dir / "logs", image_id)
        return sum(s.event == "extract.published" for s in steps)

    await eventually(
        lambda: asyncio.to_thread(lambda: [described(i) for i in later]),
        lambda counts: all(c == 2 for c in counts),
    )
    assert [described(i) for i in earlier] == [1, 1]


async def test_a_new_replica_catches_up_before_it_answers(replicated: Stack) -> None:
    settings = replicated.settings
    ids = upload_many(s3_client(settings), settings, f"replica-{uuid.uuid4().hex[:6]}", 4, seed=35)
    await all_indexed(settings, ids)
    replica = replicated.indexers[(0, 1)]
    replica.stop()
    shutil.rmtree(settings.data_dir / "index" / "s0-r1")  # a new, empty replica
    written = replica.log_path.stat().st_size
    replicated.start_indexer(0, 1)

    async def events_since_start() -> list[str]:
        with replica.log_path.open(encoding="utf-8") as lines:
            lines.seek(written)  # this start's lines only
            return [json.loads(line).get("event") for line in lines if line[:1] == "{"]

    events = await eventually(events_since_start, lambda seen: "indexer.serving" in seen)
    assert "ingest.caught_up" in events
    assert events.index("ingest.caught_up") < events.index("indexer.serving")
    async with SearchClient(settings) as client:
        sizes = await eventually(
            lambda: client.status(timeout=2.0),
            lambda statuses: len(statuses) == 2 and len({s.images["phash"] for s in statuses}) == 1,
        )
    assert sizes[0].images["phash"] >= len(ids)


async def test_a_topic_shorter_than_the_index_is_refused_unless_allowed(
    replicated: Stack,
) -> None:
    settings = replicated.settings
    ids = upload_many(s3_client(settings), settings, f"shrink-{uuid.uuid4().hex[:6]}", 3, seed=36)
    await all_indexed(settings, ids)
    replicated.restart_broker()  # memory-only: the feature topics are empty now
    async with SearchClient(settings) as client:

        async def answered() -> list[dict[str, str | None]] | None:
            try:  # the indexers notice the new log and subscribe to it again
                return await inventory(client)
            except SearchTimeout:
                return None

        before = await eventually(answered, lambda held: held is not None, timeout=90)
        assert before is not None
        refused = await client.rebuild(TOPIC_REBUILD, timeout=120)
        await finished_rebuilding(client)
        assert refused and not any(r.ok for r in refused)
        assert all("--allow-shrink" in (r.error or "") for r in refused)
        assert await inventory(client) == before  # nothing changed

        allowed = RebuildCommand(feature="phash", source=RebuildSource.TOPIC, allow_shrink=True)
        reports = await client.rebuild(allowed, timeout=120)
        await finished_rebuilding(client)
        assert reports and all(r.ok for r in reports)
        assert all(r.images < len(before[0]) for r in reports)

"""Supervision of the embedded stack: what dies is restarted (with backoff) and reported, what is
stopped on purpose stays stopped; the broker comes back empty with a new cluster id; and the
operator commands built on it (`lookalike status`, `backfill`, `reextract`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from lookalike import cli
from lookalike.embedded import ManagedProcess
from lookalike.process_table import FILE_NAME, ProcessRow, ProcessState, read_table
from lookalike.s3 import s3_client
from lookalike.samples import distinct_jpegs
from lookalike.stack import Stack
from lookalike.supervisor import Backoff, EventKind, ProcessEvent, Supervisor
from producers.search_client import SearchClient, SearchTimeout
from producers.uploads import upload_bytes
from schemas.kafka import make_admin, make_consumer
from schemas.minio_events import ImageChange, parse_notification
from schemas.search import SearchRequest
from schemas.settings import Settings
from tests.kafka_helpers import eventually

# --- The supervisor on its own: real child processes, no broker -------------------------------


def test_backoff_doubles_to_the_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff()
    assert [backoff.delay_after(uptime_s=2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay_after(uptime_s=61.0) == 1  # it ran a minute: a fresh failure
    assert backoff.delay_after(uptime_s=0.5) == 2


class Watched:
    """A supervisor over plain child processes, polling fast, recording what it reports."""

    def __init__(self, tmp_path: Path, *procs: ManagedProcess) -> None:
        self.procs = list(procs)
        self.events: list[ProcessEvent] = []
        self.table_path = tmp_path / FILE_NAME
        self.supervisor = Supervisor(
            lambda: self.procs,
            lambda proc: proc.start(),
            self.table_path,
            lock=threading.RLock(),
            notify=self.events.append,
            backoff=lambda: Backoff(first_s=0.2, max_s=1.0),
            poll_s=0.05,
        )

    def row(self, name: str) -> ProcessRow:
        table = read_table(self.table_path)
        assert table is not None
        return next(r for r in table.processes if r.name == name)

    def kinds(self, name: str) -> list[EventKind]:
        return [e.kind for e in self.events if e.name == name]


def child(tmp_path: Path, name: str, script: str) -> ManagedProcess:
    argv = [sys.executable, "-c", script]
    return ManagedProcess(name, argv, {}, tmp_path / "logs" / f"{name}.log")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    sleeper = child(tmp_path, "sleeper", "import time; time.sleep(600)")
    failing = child(tmp_path, "failing", "import sys; print('boom: bad config'); sys.exit(3)")
    w = Watched(tmp_path, sleeper, failing)
    sleeper.start()
    w.supervisor.start()
    try:
        yield w
    finally:
        w.supervisor.stop()
        for proc in w.procs:
            proc.stop()


def test_a_crashed_process_is_restarted_and_the_table_says_so(watched: Watched) -> None:
    sleeper = watched.procs[0]
    first_pid = sleeper.pid
    sleeper.crash()
    wait_for(lambda: watched.kinds("sleeper") == [EventKind.DIED, EventKind.RESTARTED])
    assert sleeper.alive() and sleeper.pid != first_pid
    died = watched.events[0]
    assert died.reason == "killed by SIGKILL" and died.pid == first_pid
    wait_for(lambda: watched.row("sleeper").restarts == 1)
    row = watched.row("sleeper")
    assert row.state is ProcessState.RUNNING
    assert row.pid == sleeper.pid and row.last_exit == "killed by SIGKILL"


def test_a_killed_process_is_left_alone(watched: Watched) -> None:
    sleeper = watched.procs[0]
    sleeper.kill()
    time.sleep(0.6)  # three backoffs' worth of polls
    assert not sleeper.alive() and not sleeper.wanted
    assert watched.events == []
    assert watched.row("sleeper").state is ProcessState.STOPPED
    assert watched.row("sleeper").restarts == 0
    assert watched.row("failing").state is ProcessState.STOPPED  # never started: not wanted


def test_a_process_that_keeps_failing_is_restarted_with_growing_backoff(watched: Watched) -> None:
    failing = watched.procs[1]
    failing.start()
    wait_for(lambda: watched.kinds("failing").count(EventKind.DIED) >= 3)
    failing.stop()
    died = [e for e in watched.events if e.name == "failing" and e.kind is EventKind.DIED]
    assert [e.delay_s for e in died[:3]] == [0.2, 0.4, 0.8]
    assert died[0].reason == "exit code 3"
    assert "boom: bad config" in died[0].log_tail  # says why, from its log


def test_lookalike_up_prints_which_process_died_why_and_its_return(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log_path = tmp_path / "logs" / "indexer.log"
    tail = ("Traceback (most recent call last):", "ValueError: item has 8 bytes, index holds 72")
    died = ProcessEvent(EventKind.DIED, "indexer", "exit code 1", log_path, 41, 0, 2.0, tail)
    cli._print_process_event(died)
    cli._print_process_event(ProcessEvent(EventKind.RESTARTED, "indexer", "", log_path, 42, 1))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"!! indexer (pid 41) died: exit code 1; log {log_path}"
    assert out[2] == "   | ValueError: item has 8 bytes, index holds 72"
    assert out[3] == "   restarting it in 2s"
    assert out[4] == "ok indexer restarted (pid 42, restart 1)"


# --- A real embedded stack (phash only, to keep it light) ------------------------------------


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"LOOKALIKE_FEATURES": "phash", "LOOKALIKE_EXTRACTOR_POOLS": "phash"}
    stack = Stack(tmp_path_factory.mktemp("supervised"), env=env)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def table_row(stack: Stack, name: str) -> ProcessRow | None:
    table = read_table(stack.data_dir / FILE_NAME)
    return next((r for r in table.processes if r.name == name), None) if table else None


async def row_now(stack: Stack, name: str) -> ProcessRow | None:
    return table_row(stack, name)


def restarted(times: int) -> Callable[[ProcessRow | None], bool]:
    return lambda row: row is not None and row.restarts == times


async def upload_and_find(stack: Stack, prefix: str, count: int = 3) -> None:
    """Uploads go through the gateway, extractor and indexer: all three must be working."""
    settings = stack.settings
    s3 = s3_client(settings)
    ids = []
    for i, data in enumerate(distinct_jpegs(count, size=(160, 120), seed=len(prefix) + count)):
        upload_bytes(s3, settings.bucket, f"{prefix}/{i}.jpg", data)
        ids.append(f"{settings.bucket}/{prefix}/{i}.jpg")
    async with SearchClient(settings) as search:
        for image_id in ids:
            await eventually(partial(found, search, image_id), bool, timeout=60)


async def found(search: SearchClient, image_id: str) -> bool:
    """False while not indexed, or while no indexer answers (one is restarting)."""
    try:
        return (
            await search.search(SearchRequest(feature="phash", image_id=image_id, k=1), timeout=2.0)
        ).ok
    except SearchTimeout:
        return False


@pytest.mark.integration
async def test_crashed_extractor_and_indexer_come_back_by_themselves(small_stack: Stack) -> None:
    stack = small_stack
    extractor, indexer = stack.extractors[0], stack.indexer
    assert indexer is not None
    before = {}
    for proc in (extractor, indexer):
        row = table_row(stack, proc.name)
        before[proc.name] = (proc.pid, row.restarts if row else 0)
    await asyncio.to_thread(extractor.crash)
    await asyncio.to_thread(indexer.crash)
    assert extractor.wanted and indexer.wanted

    await stack.serving(timeout=60)  # waits out the restart instead of failing on the corpse
    for proc in (extractor, indexer):
        pid, restarts = before[proc.name]
        row = await eventually(
            partial(row_now, stack, proc.name), restarted(restarts + 1), timeout=10
        )
        assert row is not None and row.state is ProcessState.RUNNING
        assert row.last_exit == "killed by SIGKILL"
        assert proc.alive() and proc.pid != pid and row.pid == proc.pid
    await upload_and_find(stack, f"after-crash-{uuid.uuid4().hex[:6]}")


@pytest.mark.integration
async def test_a_killed_process_is_not_restarted(small_stack: Stack) -> None:
    stack = small_stack
    extra = await asyncio.to_thread(stack.start_extractor, "phash")
    assert extra.name == "extractor-phash-1" and extra.alive()
    await asyncio.to_thread(extra.kill)
    await asyncio.sleep(2.0)  # longer than a poll plus the first backoff (1 s)
    assert not extra.alive()
    row = table_row(stack, extra.name)
    assert row is not None and row.state is ProcessState.STOPPED
    assert row.restarts == 0 and row.pid is None


def lookalike(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lookalike", *args],
        env={**stack.infra.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.integration
async def test_status_shows_processes_indexers_and_extractor_lag(small_stack: Stack) -> None:
    stack = small_stack
    await stack.serving(timeout=60)
    # The supervisor writes the table `status` reads every 0.5 s: a process that has just
    # (re)started shows once the next write lands, so the view is asked again until then.
    deadline = time.monotonic() + 15
    while True:
        done = await asyncio.to_thread(lookalike, stack, "status")
        out = done.stdout
        lines = out.splitlines()
        unlike = [
            proc.name
            for proc in stack.processes()
            if not any(
                proc.name in line and ("running" if proc.alive() else "stopped") in line
                for line in lines
            )
        ]
        if not unlike or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not unlike, out
    assert f"cluster id {stack.infra.cluster_id}" in out
    indexers = out.split("indexers")[1]
    assert "0,1,2,3" in indexers and "phash " in indexers  # its partitions and index size
    assert "lookalike-extractor.phash" in out  # the pool's consumer group and its lag


@pytest.mark.integration
async def test_backfill_asks_the_indexers_and_reextract_publishes_every_image(
    small_stack: Stack,
) -> None:
    stack = small_stack
    settings = stack.settings
    await upload_and_find(stack, f"reextract-{uuid.uuid4().hex[:6]}", count=2)
    images = sum(1 for _ in s3_client(settings).list_objects(settings.bucket, recursive=True))

    done = await asyncio.to_thread(lookalike, stack, "backfill", "--timeout", "30")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"scanned {images}: " in done.stdout  # one shard, every image in the bucket
    assert "0,1,2,3" in done.stdout

    done = await asyncio.to_thread(lookalike, stack, "reextract")
    assert done.returncode == 0, done.stderr
    assert f"{images} created events" in done.stdout
    published = await reextract_events(settings, images)
    assert sorted(published) == sorted(
        f"{settings.bucket}/{o.object_name}"
        for o in s3_client(settings).list_objects(settings.bucket, recursive=True)
    )


async def reextract_events(settings: Settings, expected: int, timeout: float = 10.0) -> list[str]:
    """Keys of the created events `lookalike reextract` put on the image-events topic (read
    from the start: Tansu's end offsets count batches, not records)."""
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    keys: list[str] = []
    try:
        topic = settings.image_events_topic
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        polls_after = 0  # one more poll once all arrived: nothing more should follow
        while polls_after < 2 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    if r.key is None or r.value is None:
                        continue
                    if all(
                        c.bulk for c in parse_notification(r.value) if isinstance(c, ImageChange)
                    ):
                        keys.append(r.key.decode())
            polls_after += len(keys) >= expected
    finally:
        await consumer.stop()
    return keys


@pytest.mark.integration
async def test_broker_restart_is_a_new_log_with_topics(small_stack: Stack) -> None:
    """Last in this module: everything after it runs on a new, empty broker."""
    stack = small_stack
    settings = stack.settings
    old = stack.infra.cluster_id
    new = await asyncio.to_thread(stack.restart_broker)
    assert new != old and new == stack.infra.cluster_id
    assert await broker_cluster_id(settings) == new
    assert await topic_exists(settings, settings.image_events_topic)

    # A crash of the broker is a restart by the supervisor: again a new id, topics again.
    broker = stack.broker
    assert broker is not None
    await asyncio.to_thread(broker.crash)
    row = await eventually(
        partial(row_now, stack, "broker"),
        lambda r: r is not None and r.restarts == 1 and r.state is ProcessState.RUNNING,
        timeout=15,
    )
    assert row is not None and row.last_exit == "killed by SIGKILL"
    third = stack.infra.cluster_id
    assert third not in (old, new)
    assert await broker_cluster_id(settings) == third
    assert await topic_exists(settings, settings.features_topic("phash"))
    await upload_and_find(stack, f"after-broker-{uuid.uuid4().hex[:6]}")


async def broker_cluster_id(settings: Settings) -> str:
    admin = make_admin(settings)
    await admin.start()
    try:
        return str((await admin.describe_cluster())["cluster_id"])
    finally:
        await admin.close()


async def topic_exists(settings: Settings, topic: str) -> bool:
    admin = make_admin(settings)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()

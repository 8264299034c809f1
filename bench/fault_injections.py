"""The faults of the fault benchmark, one coroutine per row.

Each is called mid-workload and returns when its fault has ended (a kill ends at once: what
follows, the supervisor's restart included, is recovery). It may return a check, awaited
after the comparison, that adds notes (dead letters seen, restarts observed).
Blocking calls (process control, S3) run on threads.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.fault_poison import (
    DeadLetterWatch,
    malformed_notification,
    poison_feature_events,
    poison_images,
    serving_versions,
)
from bench.fault_workload import ImageMaker, MixedWorkload, S3Ops
from lookalike.embedded import ManagedProcess
from lookalike.stack import Stack
from producers.search_client import SearchClient
from schemas.kafka import make_producer
from schemas.search import SearchRequest
from schemas.settings import Settings

Check = Callable[[], Awaitable[None]]


@dataclass
class FaultContext:
    stack: Stack
    settings: Settings
    ops: S3Ops
    images: ImageMaker
    workload: MixedWorkload
    prefix: str  # this row's keys start with it
    quick: bool
    rng: random.Random
    unindexable: set[str]  # poison image ids: in the bucket, never indexable (shared by rows)
    notes: list[str] = field(default_factory=list)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


Fault = Callable[[FaultContext], Awaitable[Check | None]]


def _restart_check(ctx: FaultContext, proc: ManagedProcess, old_pid: int | None) -> Check:
    async def check() -> None:
        back = proc.alive() and proc.pid != old_pid
        ctx.notes.append(
            f"{proc.name} pid {old_pid} -> {proc.pid if back else 'not restarted'}"
            + (f" ({proc.exit_reason()})" if not proc.alive() else "")
        )

    return check


async def _crash(ctx: FaultContext, proc: ManagedProcess | None) -> Check:
    if proc is None:
        raise RuntimeError("no such process in this stack")
    old = proc.pid
    await asyncio.to_thread(proc.crash)
    return _restart_check(ctx, proc, old)


async def kill_extractor(ctx: FaultContext) -> Check:
    """kill -9 of the first live extractor (the phash+colour+copy group's)."""
    return await _crash(ctx, next((p for p in ctx.stack.extractors if p.alive()), None))


async def kill_indexer(ctx: FaultContext) -> Check:
    return await _crash(ctx, ctx.stack.indexer)


async def kill_s3_gateway(ctx: FaultContext) -> Check:
    return await _crash(ctx, ctx.stack.infra.s3_gateway)


async def broker_restart(ctx: FaultContext) -> None:
    """The broker stops and starts again empty (memory storage), with a new cluster id."""
    await asyncio.to_thread(ctx.stack.restart_broker)


async def s3_down(ctx: FaultContext) -> None:
    """The S3 gateway stopped on purpose (SIGTERM, not restarted) for 30 s, then started."""
    infra = ctx.stack.infra
    gateway = infra.s3_gateway
    assert gateway is not None
    await asyncio.to_thread(gateway.stop)
    await asyncio.sleep(30.0)
    await asyncio.to_thread(infra.start_s3_gateway)


async def rebalance(ctx: FaultContext) -> None:
    """Per extractor group: one extractor added; once it has joined the group (its log says
    it was assigned partitions), one of the group's original extractors stopped."""
    stack = ctx.stack
    originals = {pool: _group_members(stack, pool) for pool in stack.extractor_pools()}
    added = []
    for pool in originals:
        name = f"extractor-{pool.replace(',', '+')}-{ctx.prefix.strip('/')}"
        log_path = stack.data_dir / "logs" / f"{name}.log"
        logged = log_path.stat().st_size if log_path.exists() else 0  # a re-run appends
        added.append((await asyncio.to_thread(stack.start_extractor, pool, name), logged))
    started = time.monotonic()
    joined = await asyncio.gather(*(_assigned(p, skip, timeout=90.0) for p, skip in added))
    for (proc, _), at in zip(added, joined, strict=True):
        ctx.notes.append(
            f"added {proc.name}: in the group after {at - started:.1f}s"
            if at is not None
            else f"added {proc.name}: not in the group after 90s"
        )
    for members in originals.values():
        if members:
            await asyncio.to_thread(members[0].stop)
            ctx.notes.append(f"then stopped {members[0].name}")


async def _assigned(proc: ManagedProcess, skip: int, timeout: float) -> float | None:
    """When the extractor's log (past its first `skip` bytes) first says it was assigned
    partitions; None if not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_log_says_assigned, proc.log_path, skip):
            return time.monotonic()
        await asyncio.sleep(0.5)
    return None


def _log_says_assigned(path: Path, skip: int) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(skip)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        if '"extractor.assigned"' not in line:
            continue
        try:
            if json.loads(line).get("partitions"):
                return True
        except ValueError:
            continue
    return False


def _group_members(stack: Stack, pool: str) -> list[ManagedProcess]:
    prefix = f"extractor-{pool.replace(',', '+')}-"
    return [p for p in stack.extractors if p.name.startswith(prefix) and p.alive()]


async def malformed_burst(ctx: FaultContext) -> Check:
    """500 malformed notifications straight onto the image-events topic."""
    settings = ctx.settings
    topic = settings.image_events_topic
    watch = DeadLetterWatch(settings)
    await watch.start()
    producer = make_producer(settings)
    await producer.start()
    wanted: set[tuple[str, str]] = set()
    try:
        sends = []
        for i in range(500):
            key, value = malformed_notification(i, settings.bucket)
            wanted.add((topic, key.decode()))
            sends.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    async def check() -> None:
        got = await watch.wait_for(wanted, timeout=20.0)
        ctx.notes.append(
            f"{got}/500 dead-lettered ({watch.letters} dead letters in all: "
            "each extractor group sends its own)"
        )
        await watch.stop()

    return check


async def poison_image_uploads(ctx: FaultContext) -> Check:
    """Undecodable bytes with .jpg names and truncated JPEGs; half of them are overwritten
    with a good picture 2 s later (the good version must be indexed)."""
    count = 12 if ctx.quick else 30
    watch = DeadLetterWatch(ctx.settings)
    await watch.start()
    topic = ctx.settings.image_events_topic
    poisoned: list[str] = []
    for i, (kind, data) in enumerate(poison_images(ctx.images.next, count, ctx.rng)):
        key = ctx.key(f"poison-{i:03d}-{kind}.jpg")
        ctx.unindexable.add(ctx.ops.image_id(key))  # before the upload: never compared
        if await ctx.ops.put(key, data, "poison") is not None:
            poisoned.append(key)
    await asyncio.sleep(2.0)
    healed = poisoned[::2]
    for key in healed:
        if await ctx.ops.put(key, ctx.images.next(), "overwrite") is not None:
            ctx.unindexable.discard(ctx.ops.image_id(key))

    async def check() -> None:
        # A healed key's poison may never be read: the extractor fetches what S3 holds now.
        left = [k for k in poisoned if k not in healed]
        wanted = {(topic, ctx.ops.image_id(k)) for k in left}
        got = await watch.wait_for(wanted, timeout=20.0, stage="extractor")
        ctx.notes.append(
            f"{len(poisoned)} poison uploads; {len(healed)} overwritten with a good image 2 s "
            f"later (compared as usual); {len(left)} left in the bucket (not compared), "
            f"{got} of them dead-lettered by an extractor"
        )
        await watch.stop()

    return check


async def poison_feature_burst(ctx: FaultContext) -> Check:
    """Per feature topic: schema-valid upserts at the serving version with wrong-size vectors,
    half for images in the bucket (a made-up eTag: stale if applied), half for ids that are
    not (ghosts if applied)."""
    settings = ctx.settings
    per_feature = 10 if ctx.quick else 40
    versions = await serving_versions(settings)
    live = ctx.workload.live_keys()[: per_feature // 2]
    ids = [ctx.ops.image_id(k) for k in live]
    ids += [
        ctx.ops.image_id(ctx.key(f"no-such-{i:03d}.jpg")) for i in range(per_feature - len(ids))
    ]
    watch = DeadLetterWatch(settings)
    await watch.start()
    producer = make_producer(settings)
    await producer.start()
    wanted: set[tuple[str, str]] = set()
    try:
        for feature, version in versions.items():
            topic = settings.features_topic(feature)
            for event in poison_feature_events(feature, version, ids, ctx.rng):
                wanted.add((topic, event.image_id))
                await producer.send_and_wait(topic, event.to_bytes(), key=event.image_id.encode())
    finally:
        await producer.stop()
    missing = sorted(set(settings.feature_names) - set(versions))
    if missing:
        ctx.notes.append(f"no serving version seen for {missing}: not poisoned")

    async def check() -> None:
        got = await watch.wait_for(wanted, timeout=20.0, stage="indexer")
        answered = await _searches_answered(settings, live[:3], list(versions))
        ctx.notes.append(
            f"{len(wanted)} poison feature events ({len(versions)} features), {got} "
            f"dead-lettered by the indexer; searches by id afterwards: {answered}"
        )
        await watch.stop()

    return check


async def _searches_answered(settings: Settings, ids: list[str], features: list[str]) -> str:
    ok = total = 0
    async with SearchClient(settings) as client:
        for feature in features:
            for image_id in ids:
                total += 1
                try:
                    reply = await client.search(
                        SearchRequest(image_id=f"{settings.bucket}/{image_id}", feature=feature),
                        timeout=5.0,
                    )
                except TimeoutError:
                    continue
                ok += bool(reply.ok or reply.error_code is not None)
    return f"{ok}/{total} answered"


async def overwrite_burst(ctx: FaultContext) -> None:
    """Each of a few images uploaded, then overwritten 10 times within one second (PUTs sent
    100 ms apart, none waiting for the one before)."""
    keys = [ctx.key(f"hot-{i:02d}.jpg") for i in range(3 if ctx.quick else 10)]
    await asyncio.gather(*(ctx.ops.put(k, ctx.images.next()) for k in keys))
    await asyncio.sleep(0.5)
    started = time.monotonic()

    async def put(key: str) -> float:
        await ctx.ops.put(key, ctx.images.next(), "overwrite")
        return time.monotonic() - started

    async def burst(key: str) -> list[float]:
        puts = []
        for n in range(10):
            await asyncio.sleep(max(0.0, started + n * 0.1 - time.monotonic()))
            puts.append(asyncio.create_task(put(key)))
        return list(await asyncio.gather(*puts))

    acked = await asyncio.gather(*(burst(k) for k in keys))
    ctx.notes.append(
        f"{len(keys)} images x 10 overwrites sent 100 ms apart; the last acknowledged "
        f"{max(max(a) for a in acked):.2f}s after the first was sent"
    )


async def delete_race(ctx: FaultContext) -> None:
    """Deletes racing uploads: delete as soon as the PUT returns; PUT and DELETE sent at the
    same moment; PUT, DELETE, PUT back to back (the second upload must stay)."""
    n = 4 if ctx.quick else 15
    ops = ctx.ops

    async def after(key: str) -> None:
        if await ops.put(key, ctx.images.next()) is not None:
            await ops.delete(key)

    async def together(key: str) -> None:
        await asyncio.gather(ops.put(key, ctx.images.next()), ops.delete(key))

    async def back_again(key: str) -> None:
        await ops.put(key, ctx.images.next())
        await ops.delete(key)
        await ops.put(key, ctx.images.next())

    await asyncio.gather(
        *(after(ctx.key(f"race-after-{i:02d}.jpg")) for i in range(n)),
        *(together(ctx.key(f"race-together-{i:02d}.jpg")) for i in range(n)),
        *(back_again(ctx.key(f"race-back-{i:02d}.jpg")) for i in range(n)),
    )
    ctx.notes.append(f"{n} keys of each race: delete-after-put, put||delete, put-delete-put")


# Row name -> (fault, what the table's notes say about how it was injected).
FAULTS: dict[str, tuple[Fault, str]] = {
    "kill-extractor": (kill_extractor, "SIGKILL of one extractor; the supervisor restarts it"),
    "kill-indexer": (kill_indexer, "SIGKILL of the indexer; the supervisor restarts it"),
    "kill-s3-gateway": (kill_s3_gateway, "SIGKILL of the S3 gateway; the supervisor restarts it"),
    "broker-restart": (broker_restart, "Stack.restart_broker(): memory lost, new cluster id"),
    "s3-down-30s": (s3_down, "S3 gateway stopped on purpose (SIGTERM) for 30 s, then started"),
    "rebalance": (rebalance, "an extractor added to each group; once in, an original stopped"),
    "malformed-burst": (malformed_burst, "500 malformed notifications on the image-events topic"),
    "poison-images": (poison_image_uploads, "undecodable .jpg files and truncated JPEGs"),
    "poison-features": (poison_feature_burst, "wrong-size vectors at the serving version"),
    "overwrite-burst": (overwrite_burst, "the same image overwritten 10 times in a second"),
    "delete-race": (delete_race, "deletes racing their uploads"),
}

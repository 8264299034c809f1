"""Fault benchmark (issue 9): do the indexes end up equal to the bucket, whatever breaks?

One embedded stack; per row, a steady mix of uploads, overwrites and deletes on the row's own
key prefix, one fault injected mid-run, then every feature index compared with the whole
bucket, about once a second, until they are equal or the wait limit passes. No manual
command: the indexers' own reconciliation (every LOOKALIKE_RECONCILE_INTERVAL_S, at start,
on a new log) is all the help the system gets.

    .venv/bin/python -m bench.faults --quick                       # under 5 minutes, 2 cores
    .venv/bin/python -m bench.faults                               # thousands of operations
    .venv/bin/python -m bench.faults --quick --rows broker-restart,kill-indexer --data-dir /tmp/f

Progress goes to stderr, the table to stdout. Columns: ops = S3 operations acknowledged
during the row (workload and fault); lost / ghosts / stale = the worst feature index when the
polling stopped; converge_s = seconds from the later of the fault's end and the workload's
last operation until every index equalled the bucket (`>N`: not within the wait limit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.fault_compare import Comparer, Comparison, searchable_by_id
from bench.fault_injections import FAULTS, FaultContext
from bench.fault_workload import ImageMaker, MixedWorkload, S3Ops, fail_fast_client
from lookalike.s3 import s3_client
from lookalike.stack import Stack
from schemas.settings import Settings


@dataclass(frozen=True)
class Plan:
    rate: float  # workload operations per second
    pre_s: float  # workload before the fault
    post_s: float  # workload after the fault ended
    wait_s: float  # longest wait for the indexes to equal the bucket
    reconcile_interval_s: float
    extractors: int
    clip_model: str


@dataclass
class RowResult:
    name: str
    ops: int = 0
    failed: int = 0
    fault_s: float = 0.0
    comparison: Comparison | None = None
    converge_s: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def cells(self, wait_s: float) -> list[str]:
        if self.error is not None or self.comparison is None:
            return [self.name, str(self.ops), "?", "?", "?", "error"]
        c = self.comparison
        converge = f">{wait_s:g}" if self.converge_s is None else f"{self.converge_s:.1f}"
        return [self.name, str(self.ops), *(str(c.worst(w)) for w in WHAT), converge]


WHAT = ("lost", "ghosts", "stale")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Harness:
    def __init__(self, stack: Stack, plan: Plan, quick: bool) -> None:
        self.stack = stack
        self.plan = plan
        self.quick = quick
        self.settings = stack.settings
        self.ops = S3Ops(fail_fast_client(self.settings), self.settings.bucket)
        self.images = ImageMaker(seed=1)
        self.unindexable: set[str] = set()
        self.done: set[str] = set()  # rows run so far
        self.comparer = Comparer(self.settings, s3_client(self.settings), self.unindexable)

    async def warm_up(self) -> None:
        """One image through every extractor group and index (models load, groups join)."""
        started = time.monotonic()
        await self.ops.put("warmup/0.jpg", self.images.next())
        result, took = await self.comparer.wait_until_equal(started, 120.0, "warm-up")
        if took is None:
            raise RuntimeError(f"the warm-up image was not indexed: {result.summary()}")
        progress(f"warm-up image indexed everywhere after {took:.1f}s")

    async def run_row(self, seq: int, name: str) -> RowResult:
        fault, _ = FAULTS[name]
        plan = self.plan
        row = RowResult(name)
        ok0, failed0 = self.ops.counts.ok, self.ops.counts.failed
        prefix = f"{name}/" if name not in self.done else f"{name}.{seq}/"  # a repeated row
        self.done.add(name)
        workload = MixedWorkload(self.ops, self.images, prefix, plan.rate, seed=seq)
        ctx = FaultContext(
            stack=self.stack,
            settings=self.settings,
            ops=self.ops,
            images=self.images,
            workload=workload,
            prefix=prefix,
            quick=self.quick,
            rng=random.Random(seq),
            unindexable=self.unindexable,
            notes=row.notes,
        )
        task = asyncio.create_task(workload.run())
        check = None
        try:
            await asyncio.sleep(plan.pre_s)
            progress(f"[{name}] fault after {workload.issued} operations")
            fault_start = time.monotonic()
            check = await fault(ctx)
            fault_end = time.monotonic()
            row.fault_s = fault_end - fault_start
            progress(f"[{name}] fault over after {row.fault_s:.1f}s")
            await asyncio.sleep(plan.post_s)
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"
            progress(f"[{name}] fault failed:\n{traceback.format_exc()}")
            fault_end = time.monotonic()
        finally:
            workload.stop()
            await task
        row.ops = self.ops.counts.ok - ok0
        row.failed = self.ops.counts.failed - failed0
        progress(
            f"[{name}] workload stopped: {row.ops} operations acknowledged, {row.failed} failed"
        )
        since = max(fault_end, workload.ended_at)
        row.comparison, row.converge_s = await self.comparer.wait_until_equal(
            since, plan.wait_s, name
        )
        if check is not None:
            try:
                await check()
            except Exception as exc:
                row.notes.append(f"check failed: {exc!r}")
        if row.comparison.equal:
            await self.spot_check(row, f"{self.settings.bucket}/{prefix}")
        if row.failed:
            row.notes.append(f"{row.failed} S3 operations failed (the bucket decides what counts)")
        if not row.comparison.equal:
            row.notes.append(f"at the end: {row.comparison.summary()}")
        shown = "never" if row.converge_s is None else f"{row.converge_s:.1f}s"
        progress(f"[{name}] converged: {shown}; {row.comparison.bucket_images} images in bucket")
        return row

    async def spot_check(self, row: RowResult, prefix: str) -> None:
        """A few of the row's images searched by id in every index."""
        assert row.comparison is not None
        mine = [
            i for i in row.comparison.bucket if i.startswith(prefix) and i not in self.unindexable
        ]
        sample = random.Random(0).sample(mine, min(4, len(mine)))
        if sample:
            found, asked = await searchable_by_id(self.settings, sample)
            row.notes.append(f"search by id: {found}/{asked} found")


def print_report(
    rows: list[RowResult], plan: Plan, settings: Settings, quick: bool, argv: list[str]
) -> None:
    cpu = os.cpu_count()
    print(
        f"\nFault benchmark on {platform.node()} ({platform.machine()}, {cpu} cores, "
        f"Python {platform.python_version()}): `python -m bench.faults {' '.join(argv)}`"
    )
    print(
        f"workload {plan.rate:g} ops/s (60% uploads, 1 in 20 of them a JSON file; 25% "
        "overwrites, 15% deletes; 96x96 JPEGs), "
        f"{plan.pre_s:g}s before each fault and {plan.post_s:g}s after; "
        f"LOOKALIKE_RECONCILE_INTERVAL_S={settings.reconcile_interval_s:g}, "
        f"LOOKALIKE_RECONCILE_GRACE_S={settings.reconcile_grace_s:g}; "
        f"CLIP {plan.clip_model} (random weights); {plan.extractors} extractor(s) per group; "
        f"wait limit {plan.wait_s:g}s{' (quick)' if quick else ''}\n"
    )
    print("| fault | ops | lost | ghosts | stale | converge_s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row.cells(plan.wait_s)) + " |")
    print(
        "\nlost / ghosts / stale: the worst of the feature indexes (max over "
        f"{', '.join(settings.feature_names)}), over the whole bucket, when polling stopped. "
        "converge_s: from the later of the fault's end and the workload's last operation."
    )
    for row in rows:
        how = FAULTS[row.name][1]
        extra = "; ".join([*row.notes, *([row.error] if row.error else [])])
        print(f"- {row.name}: {how}" + (f". {extra}" if extra else ""))


def plan_from(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        rate=args.rate or 8.0,
        pre_s=args.pre if args.pre is not None else (3.0 if quick else 30.0),
        post_s=args.post if args.post is not None else (3.0 if quick else 30.0),
        wait_s=args.wait or (60.0 if quick else 120.0),
        reconcile_interval_s=args.reconcile_interval,
        extractors=args.extractors,
        clip_model=args.clip_model,
    )


async def run_all(stack: Stack, plan: Plan, quick: bool, rows: list[str]) -> list[RowResult]:
    harness = Harness(stack, plan, quick)
    try:
        await harness.warm_up()
        results = []
        for seq, name in enumerate(rows):
            results.append(await harness.run_row(seq, name))
        return results
    finally:
        harness.ops.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a run under 5 minutes")
    parser.add_argument(
        "--rows", default=",".join(FAULTS), help="comma-separated rows to run (a row may repeat)"
    )
    parser.add_argument("--rate", type=float, help="operations per second")
    parser.add_argument("--pre", type=float, help="seconds of workload before the fault")
    parser.add_argument("--post", type=float, help="seconds of workload after the fault")
    parser.add_argument("--wait", type=float, help="longest wait for convergence, seconds")
    parser.add_argument("--reconcile-interval", type=float, default=10.0)
    parser.add_argument("--reconcile-grace", type=float, help="default: the system's own")
    parser.add_argument("--extractors", type=int, default=1, help="per extractor group")
    parser.add_argument("--clip-model", default="ViT-S-32")
    parser.add_argument("--data-dir", type=Path, help="keep the stack's data and logs here")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in FAULTS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(FAULTS)}")
    plan = plan_from(args)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="lookalike-faults-"))
    env = {
        "LOOKALIKE_CLIP_MODEL": plan.clip_model,
        "LOOKALIKE_RECONCILE_INTERVAL_S": f"{plan.reconcile_interval_s:g}",
    }
    if args.reconcile_grace is not None:
        env["LOOKALIKE_RECONCILE_GRACE_S"] = f"{args.reconcile_grace:g}"
    stack = Stack(data_dir, extractors=plan.extractors, env=env)
    progress(f"starting the embedded stack in {data_dir} ({env}) ...")
    started = time.monotonic()
    stack.start()
    progress(f"stack serving after {time.monotonic() - started:.1f}s")
    try:
        results = asyncio.run(run_all(stack, plan, args.quick, rows))
    finally:
        stack.stop()
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            progress(f"logs kept in {data_dir / 'logs'}")
    print_report(results, plan, stack.settings, args.quick, sys.argv[1:])
    progress(f"total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()

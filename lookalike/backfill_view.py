"""What `lookalike backfill` and `lookalike reextract` show while they work, and after.

`backfill` asks every indexer to reconcile its indexes with the bucket now (the same
reconciliation they run by themselves) and waits for each shard's report, with a spinner,
the elapsed time and the shards answered so far. `reextract` publishes a created event for
every image object, with a progress bar (objects listed, events published).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Self

from aiokafka import TopicPartition
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from lookalike.s3 import s3_client
from producers.backfill import ReextractProgress, reextract
from producers.search_client import SearchClient
from schemas.control import ReconcileCommand, ReconcileReport
from schemas.kafka import make_consumer, make_producer
from schemas.message import MessageError
from schemas.settings import Settings

BACKFILL_REASON = "lookalike backfill"


class ReportWatch:
    """Counts reconcile reports for `reason` as they reach the reply topic, to show progress
    while `SearchClient.reconcile` (which collects the same reports) is still waiting."""

    def __init__(self, settings: Settings, reason: str) -> None:
        self._topic = settings.search_replies_topic
        self._reason = reason
        self._consumer = make_consumer(settings, group_id=None)
        self._since_ms = 0
        self._reader: asyncio.Task[None] | None = None
        self.indexers: set[str] = set()
        self.partitions: set[int] = set()
        self.partition_count = 0

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        await self._consumer.topics()
        tps = [
            TopicPartition(self._topic, p)
            for p in sorted(self._consumer.partitions_for_topic(self._topic) or ())
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._since_ms = int(time.time() * 1000) - 1000  # broker and local clocks may differ
        self._reader = asyncio.create_task(self._read(), name="reconcile-progress")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            for records in (await self._consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.timestamp < self._since_ms:
                        continue
                    try:
                        report = ReconcileReport.from_bytes(record.value)
                    except MessageError:
                        continue
                    if report.reason == self._reason:
                        self.indexers.add(report.indexer)
                        self.partitions.update(report.partitions)
                        self.partition_count = max(self.partition_count, report.partition_count)

    def describe(self) -> str:
        shards = f"{len(self.indexers)} indexer{'s' if len(self.indexers) != 1 else ''} answered"
        if self.partition_count:
            shards += f", partitions {len(self.partitions)}/{self.partition_count} covered"
        return shards


async def backfill(settings: Settings, timeout: float, console: Console) -> list[ReconcileReport]:
    """Ask every indexer to reconcile now; each shard's report (raises SearchTimeout if none
    answered within `timeout`)."""
    command = ReconcileCommand(reason=BACKFILL_REASON)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("reconciling: waiting for the indexers")
        async with SearchClient(settings) as client, ReportWatch(settings, command.reason) as watch:
            job = asyncio.create_task(client.reconcile(command, timeout=timeout))
            while not job.done():
                await asyncio.wait({job}, timeout=0.2)
                progress.update(task, description=f"reconciling: {watch.describe()}")
            return job.result()


def reconcile_table(reports: list[ReconcileReport]) -> Table:
    features = sorted({name for r in reports for name in r.features})
    table = Table(title="reconciliation with the bucket, by shard", title_justify="left")
    table.add_column("partitions")
    table.add_column("indexer")
    for column in ("scanned", "created", "removed"):
        table.add_column(column, justify="right")
    for name in features:
        table.add_column(f"{name}\nmissing/stale/ghosts", justify="right")
    table.add_column("seconds", justify="right")
    for r in sorted(reports, key=lambda r: (r.partitions, r.indexer)):
        cells = [
            ",".join(map(str, r.partitions)) or "-",
            r.indexer if r.ok else f"{r.indexer} [red]failed: {r.error}[/]",
            f"{r.scanned:,}",
            f"{r.created:,}",
            f"{r.removed:,}",
        ]
        for name in features:
            d = r.features.get(name)
            cells.append("-" if d is None else f"{d.missing}/{d.stale}/{d.ghosts}")
        cells.append(f"{r.seconds:.2f}")
        table.add_row(*cells)
    return table


def summary(reports: list[ReconcileReport]) -> str:
    """One line; replicas of a shard count once (they saw the same objects)."""
    shards = {tuple(r.partitions): r for r in reports if r.ok}.values()
    scanned = sum(r.scanned for r in shards)
    created = sum(r.created for r in shards)
    removed = sum(r.removed for r in shards)
    failed = sum(not r.ok for r in reports)
    line = f"scanned {scanned:,}: {created:,} created, {removed:,} removed"
    return line + (f"; {failed} indexer(s) failed" if failed else "")


async def reextract_with_progress(settings: Settings, console: Console) -> ReextractProgress:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    producer = make_producer(settings)
    await producer.start()
    try:
        with Progress(*columns, console=console) as progress:
            listed = progress.add_task("objects listed", total=None)
            published = progress.add_task("events published", total=None)

            def show(state: ReextractProgress) -> None:
                done = state.listed if state.listing_done else None
                progress.update(listed, completed=state.listed, total=done)
                total = state.images if state.listing_done else None
                progress.update(published, completed=state.published, total=total)

            return await reextract(settings, s3_client(settings), producer, progress=show)
    finally:
        await producer.stop()

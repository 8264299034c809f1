"""`lookalike rebuild`: ask every indexer to rebuild a feature index and show its progress.

A rebuild from the topic is answered when it is done; meanwhile the indexers' `status`
replies say how many feature events each has replayed (`IndexerStatus.rebuilding`), which
this shows as a live line.
"""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from producers.search_client import SearchClient
from schemas.control import RebuildCommand, RebuildReport, RebuildSource
from schemas.settings import Settings

POLL_S = 2.0


async def rebuild_with_progress(
    settings: Settings, command: RebuildCommand, timeout: float, console: Console
) -> list[RebuildReport]:
    label = f"rebuilding {command.feature} from the {command.source.value}"
    async with SearchClient(settings) as client:
        rebuilding = asyncio.create_task(client.rebuild(command, timeout=timeout))
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console
        ) as bar:
            line = bar.add_task(label, total=None)
            while not rebuilding.done():
                await asyncio.wait([rebuilding], timeout=POLL_S)
                if rebuilding.done() or command.source is not RebuildSource.TOPIC:
                    continue
                statuses = await client.status(timeout=1.0)
                replayed = sum(s.rebuilding.get(command.feature, 0) for s in statuses)
                bar.update(line, description=f"{label}: {replayed:,} feature events replayed")
        return await rebuilding


def print_reports(reports: list[RebuildReport], console: Console) -> bool:
    for r in reports:
        where = ",".join(map(str, r.partitions)) or "-"
        if r.ok:
            read = f"{r.records:,} events read, " if r.source is RebuildSource.TOPIC else ""
            console.print(f"  partitions {where}: {read}{r.images:,} images in {r.seconds:.2f}s")
        else:
            console.print(f"  partitions {where}: [red]failed[/]: {r.error}")
    return bool(reports) and all(r.ok for r in reports)

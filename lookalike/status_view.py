"""`lookalike status`: one screen with every process, every indexer and every extractor group.

Three sources, each allowed to be missing: the process table the embedded stack's supervisor
writes (`DATA_DIR/processes.json`), the indexers' answers to a `status` command on the control
topic, and the broker (cluster id, extractor groups' committed offsets against the end of the
image-events topic).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lookalike.kafka_state import BrokerState, broker_state
from lookalike.pools import extractor_groups
from lookalike.process_table import FILE_NAME, ProcessState, ProcessTable, read_table
from producers.search_client import SearchClient, SearchTimeout
from schemas.control import IndexerStatus
from schemas.settings import Settings

BROKER_TIMEOUT_S = 5.0


@dataclass
class StatusReport:
    table_path: Path
    table: ProcessTable | None = None
    broker: BrokerState | None = None
    broker_error: str | None = None
    indexers: list[IndexerStatus] = field(default_factory=list)
    indexer_error: str | None = None

    @property
    def healthy(self) -> bool:
        """The broker answered, an indexer answered and no known process is down."""
        down = self.table is not None and any(
            p.state is not ProcessState.RUNNING for p in self.table.processes
        )
        return self.broker is not None and bool(self.indexers) and not down


async def gather_status(settings: Settings, timeout: float = 2.0) -> StatusReport:
    """Everything `lookalike status` shows; `timeout` is how long indexers get to answer."""
    report = StatusReport(settings.data_dir / FILE_NAME)
    report.table = read_table(report.table_path)
    groups = extractor_groups(settings)
    try:
        report.broker = await asyncio.wait_for(broker_state(settings, groups), BROKER_TIMEOUT_S)
    except Exception as exc:  # unreachable, timed out, or a topic missing: say so, go on
        report.broker_error = _describe_error(exc)
        return report  # without a broker no indexer can answer either
    try:
        async with SearchClient(settings) as client:
            report.indexers = await client.status(timeout=timeout)
    except SearchTimeout:
        report.indexer_error = f"no indexer answered within {timeout:g}s"
    except Exception as exc:
        report.indexer_error = _describe_error(exc)
    return report


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {BROKER_TIMEOUT_S:g}s"
    return str(exc) or type(exc).__name__


def render_status(report: StatusReport, settings: Settings, console: Console) -> None:
    now = datetime.now(UTC)
    cluster = report.broker.cluster_id if report.broker else ""
    if report.broker is not None:
        console.print(f"[bold]broker[/] {settings.kafka_bootstrap}  cluster id {cluster}")
    else:
        console.print(
            f"[bold red]broker {settings.kafka_bootstrap} unreachable:[/] {report.broker_error}"
        )
    console.print(_processes(report, now))
    names = _names_by_pid(report.table)
    if report.indexers:
        console.print(_indexers(report.indexers, names, cluster))
    elif report.broker is not None:
        console.print(f"[bold red]indexers:[/] {report.indexer_error}")
    if report.broker is not None and report.broker.groups:
        console.print(_groups(report.broker))


def _processes(report: StatusReport, now: datetime) -> Table | str:
    table = report.table
    if table is None:
        return f"no process table at {report.table_path} (no embedded stack ran here)"
    title = "processes"
    if not table.is_live(now):
        title += f" [red](the stack is not running; table written {_ago(table.updated, now)})[/]"
    out = Table(title=title, title_justify="left")
    for column in ("name", "state", "pid", "restarts", "last exit", "since"):
        out.add_column(column, justify="right" if column in ("pid", "restarts") else "left")
    colours = {ProcessState.RUNNING: "green", ProcessState.RESTARTING: "yellow"}
    for row in table.processes:
        colour = colours.get(row.state, "red")
        out.add_row(
            row.name,
            f"[{colour}]{row.state.value}[/]",
            str(row.pid or "-"),
            str(row.restarts),
            row.last_exit or "-",
            _ago(row.since, now),
        )
    return out


def _indexers(statuses: list[IndexerStatus], names: dict[int, str], cluster: str) -> Table:
    out = Table(title="indexers", title_justify="left")
    for column in ("indexer", "partitions", "images", "lag", "read", "dead", "log"):
        out.add_column(column, justify="left" if column in ("indexer", "images") else "right")
    out.add_column("last reconcile", justify="right")
    for s in sorted(statuses, key=lambda s: (s.partitions, s.indexer)):
        pid = s.indexer.rpartition(":")[2]
        who = names.get(int(pid), s.indexer) if pid.isdigit() else s.indexer
        images = "  ".join(
            f"{feature} {count:,}"
            + (f" (recall {s.recall[feature]:.2f})" if feature in s.recall else "")
            for feature, count in sorted(s.images.items())
        )
        same_log = not s.cluster_id or s.cluster_id == cluster
        log_note = "[green]current[/]" if same_log else f"[yellow]{s.cluster_id[:8]}… (old)[/]"
        out.add_row(
            who if s.ok else f"{who} [red]{s.error or 'error'}[/]",
            ",".join(map(str, s.partitions)) or "-",
            images or "-",
            f"{sum(s.lag.values()):,}",
            f"{s.records_read:,}",
            str(s.dead_letters),
            log_note,
            _reconcile_note(s),
        )
    return out


def _reconcile_note(status: IndexerStatus) -> str:
    last = status.last_reconcile
    if last is None:
        return "-"
    if not last.ok:
        return f"[red]failed: {last.error}[/]"
    return f"+{last.created} -{last.removed} in {last.seconds:.1f}s"


def _groups(broker: BrokerState) -> Table:
    topics = sorted({g.topic for g in broker.groups if g.topic})
    title = f"extractor groups: lag on {', '.join(topics)}" if topics else "extractor groups"
    out = Table(title=title, title_justify="left")
    for column in ("group", "state", "members", "lag by partition", "lag"):
        out.add_column(column, justify="right" if column in ("members", "lag") else "left")
    for g in broker.groups:
        by_partition = " ".join(f"{p}:{n}" for p, n in sorted(g.lag.items()))
        members = "-" if g.members is None else str(g.members)
        out.add_row(g.group, g.state or "-", members, by_partition, f"{g.total:,}")
    return out


def _names_by_pid(table: ProcessTable | None) -> dict[int, str]:
    if table is None:
        return {}
    return {row.pid: row.name for row in table.processes if row.pid is not None}


def _ago(when: datetime, now: datetime) -> str:
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s ago"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m ago"

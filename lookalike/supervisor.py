"""Restart what dies: a thread that watches the embedded stack's child processes.

Every `POLL_S` it looks at the stack's current processes; one that is *wanted* (started, not
stopped or killed on purpose) but not alive has died: it logs `process.died` (exit code or
signal, the last lines of its log), waits out a per-process exponential backoff and starts it
again through the stack (`process.restarted`). It also writes the process table
(`DATA_DIR/processes.json`) for `lookalike status`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import structlog

from lookalike.embedded import ManagedProcess
from lookalike.process_table import ProcessRow, ProcessState, ProcessTable, write_table

log = structlog.get_logger(__name__)

POLL_S = 0.5
LOG_TAIL_LINES = 5


@dataclass
class Backoff:
    """1 s, 2 s, 4 s ... capped; back to the first delay once a run lasted `stable_after_s`."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_after_s: float = 60.0
    next_s: float = field(init=False)

    def __post_init__(self) -> None:
        self.next_s = self.first_s

    def delay_after(self, uptime_s: float) -> float:
        """The wait before restarting a process that died after running `uptime_s`."""
        if uptime_s >= self.stable_after_s:
            self.next_s = self.first_s
        delay = self.next_s
        self.next_s = min(delay * 2, self.max_s)
        return delay


class EventKind(StrEnum):
    DIED = "died"
    RESTARTED = "restarted"
    RESTART_FAILED = "restart_failed"


@dataclass(frozen=True)
class ProcessEvent:
    """What the supervisor tells its listener (`lookalike up` prints it)."""

    kind: EventKind
    name: str
    reason: str  # how it ended, or why the restart failed
    log_path: Path
    pid: int | None = None
    restarts: int = 0
    delay_s: float = 0.0  # DIED / RESTART_FAILED: wait before the next start
    log_tail: tuple[str, ...] = ()


@dataclass
class _Record:
    """The supervisor's memory of one process name."""

    proc: ManagedProcess
    backoff: Backoff
    restarts: int = 0
    last_exit: str | None = None
    restart_at: float | None = None  # pending restart (monotonic), while RESTARTING
    state: ProcessState = ProcessState.STOPPED
    since: datetime = field(default_factory=lambda: datetime.now(UTC))

    def enter(self, state: ProcessState) -> None:
        if state is not self.state:
            self.state = state
            self.since = datetime.now(UTC)


class Supervisor:
    """`processes` lists what to watch (called every poll, so replaced processes are seen);
    `restart` starts a dead process again and returns once it is ready (raises if it cannot);
    `lock` is held for each poll, so the stack can change its processes without a race."""

    def __init__(
        self,
        processes: Callable[[], list[ManagedProcess]],
        restart: Callable[[ManagedProcess], None],
        table_path: Path,
        *,
        lock: AbstractContextManager[object],
        cluster_id: Callable[[], str] = lambda: "",
        notify: Callable[[ProcessEvent], None] | None = None,
        backoff: Callable[[], Backoff] = Backoff,
        poll_s: float = POLL_S,
    ) -> None:
        self._processes = processes
        self._restart = restart
        self._table_path = table_path
        self._lock = lock
        self._cluster_id = cluster_id
        self._notify = notify
        self._new_backoff = backoff
        self._poll_s = poll_s
        self._records: dict[str, _Record] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self.write_table()  # there is a table as soon as the stack is up
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        log.info("supervisor.started", poll_s=self._poll_s, table=str(self._table_path))

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll()
            except Exception:  # the watcher must outlive anything one poll runs into
                log.exception("supervisor.poll_failed")
            self._stopping.wait(self._poll_s)

    def poll(self) -> None:
        """One look at every process: note deaths, restart those whose backoff ran out."""
        with self._lock:
            for proc in self._processes():
                if self._stopping.is_set():
                    break
                self._check(proc)
            self.write_table()

    def _check(self, proc: ManagedProcess) -> None:
        record = self._record(proc)
        # alive() before wanted: stop() and kill() clear `wanted` before the process ends.
        if proc.alive() or not proc.wanted:
            record.restart_at = None
            return
        now = time.monotonic()
        if record.restart_at is None:
            self._died(record, now)
        elif now >= record.restart_at:
            self._restart_now(record)

    def _record(self, proc: ManagedProcess) -> _Record:
        record = self._records.get(proc.name)
        if record is None:
            record = self._records[proc.name] = _Record(proc, self._new_backoff())
        elif record.proc is not proc:  # replaced by the stack (a new object, same name)
            record.proc, record.restart_at = proc, None
        return record

    def _died(self, record: _Record, now: float) -> None:
        proc = record.proc
        record.last_exit = proc.exit_reason() or "not running"
        delay = record.backoff.delay_after(now - proc.started_at)
        record.restart_at = now + delay
        tail = tuple(proc.log_tail(LOG_TAIL_LINES))
        log.warning(
            "process.died",
            name=proc.name,
            pid=proc.pid,
            reason=record.last_exit,
            log_path=str(proc.log_path),
            log_tail=list(tail),
            restart_in_s=delay,
        )
        self._tell(EventKind.DIED, record, record.last_exit, delay_s=delay, log_tail=tail)

    def _restart_now(self, record: _Record) -> None:
        proc = record.proc
        with proc.lock:
            if proc.alive() or not proc.wanted:  # stopped on purpose or started meanwhile
                record.restart_at = None
                return
            try:
                self._restart(proc)
            except Exception as exc:
                delay = record.backoff.delay_after(0.0)
                record.restart_at = time.monotonic() + delay
                log.warning(
                    "process.restart_failed", name=proc.name, error=str(exc), retry_in_s=delay
                )
                self._tell(EventKind.RESTART_FAILED, record, str(exc), delay_s=delay)
                return
        record.restarts += 1
        record.restart_at = None
        log.info("process.restarted", name=proc.name, pid=proc.pid, restarts=record.restarts)
        self._tell(EventKind.RESTARTED, record, record.last_exit or "")

    def _tell(
        self,
        kind: EventKind,
        record: _Record,
        reason: str,
        delay_s: float = 0.0,
        log_tail: tuple[str, ...] = (),
    ) -> None:
        if self._notify is None:
            return
        proc = record.proc
        event = ProcessEvent(
            kind, proc.name, reason, proc.log_path, proc.pid, record.restarts, delay_s, log_tail
        )
        try:
            self._notify(event)
        except Exception:
            log.exception("supervisor.notify_failed", event=kind.value)

    def rows(self) -> Iterator[ProcessRow]:
        for proc in self._processes():
            record = self._record(proc)
            alive = proc.alive()  # before `wanted`, as in _check
            if alive:
                record.enter(ProcessState.RUNNING)
            else:
                record.enter(ProcessState.RESTARTING if proc.wanted else ProcessState.STOPPED)
            yield ProcessRow(
                name=proc.name,
                pid=proc.pid if alive else None,
                state=record.state,
                restarts=record.restarts,
                last_exit=record.last_exit,
                since=record.since,
                log_path=str(proc.log_path),
            )

    def write_table(self) -> None:
        """The process table as it is now (the stack also calls it once everything stopped)."""
        with self._lock:
            table = ProcessTable(
                updated=datetime.now(UTC),
                supervisor_pid=os.getpid(),
                cluster_id=self._cluster_id(),
                processes=list(self.rows()),
            )
        try:
            write_table(self._table_path, table)
        except OSError as exc:
            log.warning("supervisor.table_not_written", path=str(self._table_path), error=str(exc))

"""`DATA_DIR/processes.json`: the embedded stack's process table, written by its supervisor
and read by `lookalike status` in another terminal."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ValidationError

FILE_NAME = "processes.json"
FRESH_S = 10.0  # a live supervisor rewrites the table every poll; older means it is gone


class ProcessState(StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"  # died while wanted; the supervisor starts it again after a backoff
    STOPPED = "stopped"  # stopped or killed on purpose, or the stack is down


class ProcessRow(BaseModel):
    name: str
    pid: int | None
    state: ProcessState
    restarts: int = 0
    last_exit: str | None = None  # "killed by SIGKILL", "exit code 1"
    since: datetime  # when it entered this state
    log_path: str = ""


class ProcessTable(BaseModel):
    updated: datetime
    supervisor_pid: int
    cluster_id: str = ""  # the broker's current cluster id
    processes: list[ProcessRow]

    def is_live(self, now: datetime | None = None) -> bool:
        """Whether the stack that wrote it still runs (its supervisor keeps it fresh)."""
        age = ((now or datetime.now(UTC)) - self.updated).total_seconds()
        return age < FRESH_S and _pid_alive(self.supervisor_pid)


def write_table(path: Path, table: ProcessTable) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(table.model_dump_json(indent=2))
    tmp.replace(path)


def read_table(path: Path) -> ProcessTable | None:
    """None if there is no table (the stack never ran here) or it cannot be read."""
    try:
        return ProcessTable.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""`lookalike trace KEY`: one image's way through the stages, from the processes' logs.

Every stage logs the image id with the trace id it carries in Kafka headers
(schemas/tracing.py): the S3 gateway when it publishes the object's event, the extractor when
it publishes the feature events, each indexer when the image becomes searchable in a feature
index (with upload -> searchable seconds). This reads the embedded stack's JSON log files
(`DATA_DIR/logs/*.log`) and prints those lines in time order, newest trace last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Log events that mark a stage of an image (the rest of the log is context).
STAGES = {
    "gateway.event_published": "published by the S3 gateway",
    "extract.published": "described by an extractor",
    "index.image_applied": "searchable in an index",
    "dead_letter": "dead-lettered",
}


@dataclass(frozen=True, slots=True)
class Step:
    at: datetime
    process: str
    event: str
    trace_id: str | None
    detail: str


def steps_of(log_dir: Path, image_id: str) -> list[Step]:
    """The image's stage lines from every log file in `log_dir`, oldest first."""
    needle = json.dumps(image_id)  # as it appears inside a JSON line
    steps: list[Step] = []
    for path in sorted(log_dir.glob("*.log")):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if needle not in line:
                    continue
                try:
                    entry: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                if entry.get("image_id") != image_id or entry.get("event") not in STAGES:
                    continue
                steps.append(
                    Step(
                        at=datetime.fromisoformat(str(entry["timestamp"])),
                        process=path.stem,
                        event=str(entry["event"]),
                        trace_id=entry.get("trace_id"),
                        detail=_detail(entry),
                    )
                )
    return sorted(steps, key=lambda s: s.at)


def _detail(entry: dict[str, Any]) -> str:
    parts = []
    if entry.get("feature"):
        parts.append(str(entry["feature"]))
    if entry.get("events"):
        parts.append(", ".join(map(str, entry["events"])))
    if entry.get("upload_to_searchable_s") is not None:
        parts.append(f"{entry['upload_to_searchable_s']:.3f}s after upload")
    if entry.get("reason"):
        parts.append(str(entry["reason"]))
    return "; ".join(parts)


def render_trace(image_id: str, steps: list[Step], console: Console) -> None:
    if not steps:
        console.print(f"No stage of {image_id} in the logs (is it the bucket/key as uploaded?)")
        return
    table = Table(title=f"trace of {image_id}", title_justify="left")
    for column in ("+ms", "process", "stage", "trace", "detail"):
        table.add_column(column, justify="right" if column == "+ms" else "left")
    first = steps[0].at
    for step in steps:
        table.add_row(
            f"{(step.at - first).total_seconds() * 1000:,.0f}",
            step.process,
            STAGES[step.event],
            (step.trace_id or "-")[:12],
            step.detail,
        )
    console.print(table)

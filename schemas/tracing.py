"""One image followed through every stage: W3C `traceparent` in Kafka headers.

The S3 gateway starts a trace per object event (MinIO's own notifications carry none: the
extractor starts one then); the extractor passes it on to the feature events it publishes,
and the indexer to its alerts, each as a child span. Every stage logs the trace id with the
image id, so `lookalike trace KEY` can put one image's stages in order from the logs.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

HEADER = "traceparent"
_FORMAT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

Headers = Sequence[tuple[str, bytes]]


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_of(parent: str | None) -> str:
    """A new span in the parent's trace (a new trace if the parent is missing or malformed)."""
    found = _FORMAT.match(parent or "")
    if found is None:
        return new_traceparent()
    return f"00-{found.group(1)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str | None) -> str | None:
    found = _FORMAT.match(traceparent or "")
    return found.group(1) if found else None


def from_headers(headers: Headers | None) -> str | None:
    """The record's traceparent, if it carries one."""
    for name, value in headers or ():
        if name == HEADER:
            return value.decode("ascii", "replace")
    return None


def headers_for(traceparent: str) -> list[tuple[str, bytes]]:
    return [(HEADER, traceparent.encode("ascii"))]

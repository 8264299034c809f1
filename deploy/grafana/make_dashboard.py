"""Writes deploy/grafana/dashboards/lookalike.json: the panels an on-call person needs first.

Run `python deploy/grafana/make_dashboard.py` after changing a panel; the JSON is committed
(Grafana provisions it from deploy/grafana/provisioning/dashboards). Every metric it names is
defined in schemas/metrics.py (tests/test_dashboards.py checks that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "lookalike.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

# (title, unit, [(legend, PromQL)], threshold or None)
PANELS: list[tuple[str, str, list[tuple[str, str]], float | None]] = [
    (
        "Consumer lag (records behind)",
        "short",
        [("{{stage}} {{topic}}", "sum by (stage, topic) (lookalike_consumer_lag)")],
        None,
    ),
    (
        "Upload -> searchable (p50, p95)",
        "s",
        [
            (
                "p95 {{feature}}",
                "histogram_quantile(0.95, sum by (le, feature) "
                "(rate(lookalike_upload_to_searchable_seconds_bucket[5m])))",
            ),
            (
                "p50 {{feature}}",
                "histogram_quantile(0.5, sum by (le, feature) "
                "(rate(lookalike_upload_to_searchable_seconds_bucket[5m])))",
            ),
        ],
        1.0,
    ),
    (
        "Dead letters (last hour)",
        "short",
        [
            (
                "{{stage}}: {{reason}}",
                "sum by (stage, reason) (increase(lookalike_dead_letters_total[1h]))",
            )
        ],
        None,
    ),
    (
        "Messages in / out per second",
        "ops",
        [
            (
                "in {{stage}} {{topic}}",
                "sum by (stage, topic) (rate(lookalike_messages_in_total[1m]))",
            ),
            ("out {{topic}}", "sum by (topic) (rate(lookalike_messages_out_total[1m]))"),
        ],
        None,
    ),
    (
        "Retries per second",
        "ops",
        [("{{stage}} {{kind}}", "sum by (stage, kind) (rate(lookalike_retries_total[5m]))")],
        None,
    ),
    (
        "Extraction time per image (p95)",
        "s",
        [
            (
                "{{feature}}",
                "histogram_quantile(0.95, sum by (le, feature) "
                "(rate(lookalike_extraction_seconds_bucket[5m])))",
            )
        ],
        None,
    ),
    (
        "Search latency (p99) and errors",
        "s",
        [
            (
                "p99 {{feature}}",
                "histogram_quantile(0.99, sum by (le, feature) "
                "(rate(lookalike_search_seconds_bucket[5m])))",
            ),
            (
                "errors/s {{feature}} {{code}}",
                "sum by (feature, code) (rate(lookalike_search_errors_total[5m]))",
            ),
        ],
        None,
    ),
    (
        "Index size and tombstones",
        "short",
        [
            ("images {{index}}", "sum by (index) (lookalike_index_images)"),
            ("tombstones {{index}}", "sum by (index) (lookalike_index_tombstones)"),
        ],
        None,
    ),
    (
        "Recall@10 measured on held-out images",
        "percentunit",
        [("{{index}}", "min by (index) (lookalike_recall_at_10)")],
        0.95,
    ),
]


def panel(i: int, title: str, unit: str, targets: list[tuple[str, str]], line: float | None) -> Any:
    thresholds: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if line is not None:
        thresholds.append({"color": "red", "value": line})
    return {
        "id": i + 1,
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": thresholds},
                "custom": {"thresholdsStyle": {"mode": "line" if line is not None else "off"}},
            },
            "overrides": [],
        },
        "targets": [
            {"refId": chr(65 + j), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for j, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "lookalike",
        "title": "lookalike",
        "tags": ["lookalike", "kafka"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {OUT}")

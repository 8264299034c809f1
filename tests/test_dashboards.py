"""The dashboard and the scrape configuration name only what the processes export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import schemas.metrics  # noqa: F401  (registers the metrics)

DEPLOY = Path(__file__).parent.parent / "deploy"


def exported_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    # Series of labelled metrics appear once a label is used: add the suffixes they get.
    for family in REGISTRY.collect():
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "lookalike.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    named = {m for e in exprs for m in re.findall(r"\blookalike_[a-z0-9_]+", e)}
    assert named and named <= exported_names()
    assert len(dashboard["panels"]) >= 8


def test_compose_scrapes_the_port_every_process_serves_metrics_on() -> None:
    compose = (DEPLOY.parent / "docker-compose.yml").read_text()
    scrape = (DEPLOY / "prometheus.yml").read_text()
    port = re.search(r'LOOKALIKE_METRICS_PORT: "(\d+)"', compose)
    assert port is not None and f"port: {port.group(1)}" in scrape
    for service in ("extractor", "extractor-clip", "indexer"):
        assert f"\n  {service}:\n" in compose and service in scrape
    assert "\n  prometheus:\n" in compose and "\n  grafana:\n" in compose

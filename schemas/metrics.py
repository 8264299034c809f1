"""What every long-running process measures, defined once, and the one endpoint it is read from.

Each process serves Prometheus's text format on `LOOKALIKE_METRICS_PORT` (`serve`); the
embedded stack gives every process its own port and lists them in `.lookalike/stack.env`
(`LOOKALIKE_METRICS_URL_<PROCESS>`), compose in deploy/prometheus.yml. The metrics move in the
few places every message passes through, not in handlers: the consume loop
(consumers/kafka/runner.py: in, retries, lag), the dead-letter sink (dead letters), the producer
the client factory makes (schemas/kafka.py: out), the extractor's batch description
(extraction time), the indexer's batch application (upload -> searchable), the query engine
where every search is answered (latency, errors), and gauges read from the indexes when
scraped (size, tombstones) or set where recall is measured.
"""

from __future__ import annotations

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from schemas.settings import Settings

log = structlog.get_logger(__name__)

# Seconds, from a millisecond (a cached search) to minutes (a backlog behind CLIP on a CPU).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

MESSAGES_IN = Counter("lookalike_messages_in", "Records consumed and processed", ["stage", "topic"])
MESSAGES_OUT = Counter("lookalike_messages_out", "Records produced (acknowledged)", ["topic"])
DEAD_LETTERS = Counter(
    "lookalike_dead_letters", "Records sent to the dead-letter topic", ["stage", "reason"]
)
RETRIES = Counter("lookalike_retries", "Batches processed again after a failure", ["stage", "kind"])
CONSUMER_LAG = Gauge(
    "lookalike_consumer_lag",
    "Records between a consumer's position and the end of its partition",
    ["stage", "topic", "partition"],
)
EXTRACTION_SECONDS = Histogram(
    "lookalike_extraction_seconds",
    "Time to describe one image with one feature (a batch's time over its images)",
    ["feature"],
    buckets=LATENCY_BUCKETS,
)
EXTRACTION_BATCH_SECONDS = Histogram(
    "lookalike_extraction_batch_seconds",
    "Time to describe one batch of images with one feature",
    ["feature"],
    buckets=LATENCY_BUCKETS,
)
EXTRACTOR_STAGE_SECONDS = Histogram(
    "lookalike_extractor_stage_seconds",
    "Time an extractor spends on one batch in a stage: fetch (S3 reads and CPU decoding), "
    "describe (every feature), publish (feature events acknowledged, offsets committed)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
UPLOAD_TO_SEARCHABLE_SECONDS = Histogram(
    "lookalike_upload_to_searchable_seconds",
    "From the object's S3 event time to the index commit that makes it searchable",
    ["feature"],
    buckets=LATENCY_BUCKETS,
)
SEARCH_SECONDS = Histogram(
    "lookalike_search_seconds",
    "Search requests answered, by feature",
    ["feature"],
    buckets=LATENCY_BUCKETS,
)
SEARCH_ERRORS = Counter(
    "lookalike_search_errors", "Search requests answered with an error", ["feature", "code"]
)
INDEX_IMAGES = Gauge("lookalike_index_images", "Images an index holds", ["index"])
INDEX_TOMBSTONES = Gauge(
    "lookalike_index_tombstones", "Dead slots an index's engine holds until compaction", ["index"]
)
RECALL_AT_10 = Gauge(
    "lookalike_recall_at_10",
    "recall@10 measured on held-out images (index_store/recall.py)",
    ["index"],
)


def serve(settings: Settings) -> int | None:
    """Serve this process's metrics on `settings.metrics_port` (0: any free port); the port,
    or None when metrics are off."""
    if settings.metrics_port is None:
        return None
    server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    port = int(server.server_port)
    log.info("metrics.serving", url=f"http://{settings.metrics_host}:{port}/metrics")
    return port

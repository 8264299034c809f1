"""The one configuration model. Every field is overridable as LOOKALIKE_<FIELD_NAME>."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # `lookalike up` writes .lookalike/stack.env so other terminals find the running stack;
    # real environment variables always win over it.
    model_config = SettingsConfigDict(
        env_prefix="LOOKALIKE_", env_file=".lookalike/stack.env", extra="ignore"
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    partitions: int = Field(4, ge=1, description="Partitions for every topic we create.")
    # Tansu only answers a fetch when fetch_max_wait_ms runs out; real Kafka answers as soon
    # as data arrives, so a small value costs little there and buys latency here.
    fetch_max_wait_ms: int = Field(5, ge=0)
    # The event streams (image events into extractors, feature events into indexers) are
    # polled less eagerly: with Tansu every idle poll is a round of event-loop work, and in an
    # indexer that work takes the interpreter from the searches it answers in worker threads
    # (BENCHMARKS.md, "Copy detection through the stack"). Every other consumer (searches and
    # their replies among them) keeps fetch_max_wait_ms.
    event_fetch_max_wait_ms: int = Field(50, ge=0)
    image_events_topic: str = "lookalike.image-events"
    features_topic_prefix: str = "lookalike.features."
    search_requests_topic: str = "lookalike.search.requests"
    search_replies_topic: str = "lookalike.search.replies"
    similarity_results_topic: str = "lookalike.similarity-results"
    image_alerts_topic: str = "lookalike.image-alerts"
    image_alert_deadline_s: float = Field(
        30.0, gt=0, description="publish an image's alert partial if a feature is this late"
    )
    publish_alerts: bool = Field(
        True, description="this indexer publishes alerts (one replica per shard does)"
    )
    dead_letter_topic: str = "lookalike.dead-letter"
    control_topic: str = "lookalike.control"
    extractor_group: str = "lookalike-extractor"
    reply_to_prefix: str = Field(
        "lookalike.search.replies",
        description="indexers answer only to reply_to topics that start with this; the rest "
        "are dead-lettered (a request must never make an indexer write into a data topic)",
    )

    # --- Faults: retries, dead letters, convergence -----------------------------------------
    max_delivery_attempts: int = Field(
        3, ge=1, description="tries of a message that fails deterministically, then dead letter"
    )
    retry_backoff_max_s: float = Field(
        10.0, gt=0, description="longest wait between retries of a transient failure"
    )
    log_check_interval_s: float = Field(
        2.0, gt=0, description="how often consumers check they still read the log they think"
    )
    reconcile_interval_s: float = Field(
        300.0, ge=0, description="indexers compare their indexes with the bucket this often; 0=off"
    )
    reconcile_grace_s: float = Field(
        30.0,
        ge=0,
        description="objects changed this recently are not reconciled yet (their "
        "events are most likely on their way)",
    )
    reconcile_at_start: bool = Field(
        True, description="indexers reconcile with the bucket when they start or see a new log"
    )

    # --- Object store (S3 / MinIO) ------------------------------------------------------
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "lookalike"
    s3_secret_key: str = "lookalike-secret"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_connections: int = Field(
        32,
        ge=1,
        description="S3 requests one process makes at once: its pooled connections, and an "
        "extractor's fetch threads",
    )
    s3_public_endpoint: str | None = Field(
        None,
        description="host:port browsers reach S3 at, for thumbnail links (default: s3_endpoint)",
    )
    bucket: str = "images"

    # --- Limits -------------------------------------------------------------------------
    max_image_bytes: int = Field(50 * 1024 * 1024, description="Larger uploads are dead-lettered.")
    max_image_pixels: int = Field(80_000_000, description="Decompression-bomb guard.")
    # Kafka's default message.max.bytes is ~1 MB; the CLI shrinks bigger query images.
    max_query_image_bytes: int = 900_000

    # --- Search ---------------------------------------------------------------------------
    alert_max_distance: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="per-feature near-duplicate alert thresholds, each in its feature's own "
        'metric, e.g. {"colour": 0.1} (JSON); features not named keep their measured '
        "default (FeatureSpec.alert_max_distance, BENCHMARKS.md)",
    )
    near_duplicate_k: int = 5

    @field_validator("alert_max_distance", mode="before")
    @classmethod
    def _alert_max_distance_json(cls, value: object) -> object:
        # The environment is decoded as JSON already; a string given directly (e.g. the
        # embedded stack passing its environment on as keyword arguments) is too.
        return json.loads(value) if isinstance(value, str) else value

    # --- Extraction -------------------------------------------------------------------------
    features: str = Field(
        "phash,colour,copy,clip",
        description="comma-separated features to extract and index (add 'keypoints' for copy "
        "verification: README, Features)",
    )
    # Split extraction by cost: fast features are never queued behind the model.
    extractor_pools: str = Field(
        "phash,colour,copy;keypoints;clip",
        # (a pool with no enabled feature is left out: keypoints is extracted when enabled)
        description="embedded stack: one extractor group per ';' part",
    )
    extract_batch_max: int = 32
    clip_model: str = "ViT-B-32"
    clip_pretrained: str | None = Field(
        None, description="open_clip pretrained tag or local checkpoint path; None = random."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    clip_cpu_runtime: Literal["openvino", "torch"] = Field(
        "openvino",
        description="CLIP's image tower on a CPU: an int8 OpenVINO graph (calibrated on the "
        "first images described, saved under data_dir/models), or torch int8",
    )

    # --- Sharding -----------------------------------------------------------------------------
    shard_partitions: str | None = Field(
        None, description="feature partitions this indexer serves, e.g. '0,1'; all if unset"
    )
    search_deadline_s: float = Field(
        2.0, description="how long a search waits for every shard before a partial reply"
    )

    # --- Local state ------------------------------------------------------------------------
    data_dir: Path = Path(".lookalike")
    index_path: Path | None = Field(None, description="indexer state; default DATA_DIR/index")
    checkpoint_interval_s: float = Field(30.0, description="how often indexes are snapshotted")
    vector_engine: Literal["exact", "hnsw", "faiss-hnsw", "faiss-hnsw-sq8"] = Field(
        "faiss-hnsw-sq8",
        description="engine for cosine vectors (CLIP); SQ8 is re-ranked exactly from LMDB",
    )
    vector_reduce_dim: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="faiss engines: the graph holds PCA projections of this many dimensions "
        "(0 = full; 'auto' = the fewest keeping vector_keep_variance of the variance of the "
        "vectors it is trained on, or full when that is most of them); candidates are "
        "re-ranked with the exact vectors",
    )
    search_batch_max: int = Field(
        256, ge=1, description="search requests an indexer reads and answers per poll"
    )
    # FastStream's batch subscriber waits this long for requests, and when none came sleeps as
    # long again before it looks: a request that lands in that sleep waits it out. Its default
    # (200 ms) took the mean round trip of queries asked now and then from 19 to ~50 ms, p99
    # ~206 ms (bench/query_roundtrip.py --pause-ms 300); back-to-back queries come within one
    # wait.
    search_poll_ms: int = Field(
        20, ge=1, description="how long an idle indexer waits for search requests per poll"
    )
    fusion_rule: Literal["calibrated", "rrf"] = Field(
        "calibrated",
        description="how feature='all' ranks: distances over each feature's threshold, or "
        "reciprocal rank fusion (BENCHMARKS.md, 'Fused search')",
    )
    recall_target: float = Field(
        0.95, gt=0, le=1, description="recall@10 each approximate index keeps (measured)"
    )
    recall_hold_out_every: int = Field(
        200,
        ge=0,
        description="one image in this many is kept out of each graph engine (served by an "
        "exact scan beside it) so recall is measured on queries the graph has not seen; 0 = off",
    )
    recall_check_interval_s: float = Field(
        60.0, ge=0, description="how often indexers measure recall@10 on a few queries; 0 = off"
    )
    vector_train_size: int = Field(
        10_000,
        ge=1,
        description="faiss engines are served exactly until this many vectors are in, then "
        "their quantiser and projection are fitted on them",
    )
    vector_keep_variance: float = Field(
        0.95, gt=0, le=1, description="share of variance an 'auto' projection keeps"
    )
    log_format: Literal["json", "console"] = "json"
    metrics_port: int | None = Field(
        None, ge=0, description="serve /metrics on this port (0 = any free one); unset = off"
    )
    metrics_host: str = Field("127.0.0.1", description="address /metrics listens on")
    http_host: str = Field("127.0.0.1", description="address `lookalike http` listens on")
    otlp_endpoint: str | None = Field(
        None,
        description="export stage spans with OpenTelemetry (OTLP/HTTP), e.g. "
        "http://otel-collector:4318/v1/traces; unset = traceparent headers and logs only",
    )
    log_level: str = "info"

    @property
    def feature_names(self) -> list[str]:
        return [name.strip() for name in self.features.split(",") if name.strip()]

    def extractor_group_for(self, features: list[str]) -> str:
        return f"{self.extractor_group}.{'+'.join(features)}"

    def features_topic(self, feature: str) -> str:
        return f"{self.features_topic_prefix}{feature}"

    @property
    def index_dir(self) -> Path:
        return self.index_path or self.data_dir / "index"

    @property
    def shard_partition_list(self) -> list[int] | None:
        if not self.shard_partitions:
            return None
        return sorted({int(p) for p in self.shard_partitions.split(",") if p.strip()})

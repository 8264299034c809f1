"""The whole embedded system on one machine: broker, S3 gateway, extractors, indexer.

`lookalike up`, `lookalike demo` and the integration tests all start it through `Stack`.
Once started, a supervisor thread (`lookalike/supervisor.py`) restarts any process that dies.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from lookalike.embedded import Infrastructure, ManagedProcess, free_port
from lookalike.pools import extractor_pools
from lookalike.process_table import FILE_NAME as PROCESS_TABLE
from lookalike.s3 import s3_client
from lookalike.supervisor import ProcessEvent, Supervisor
from lookalike.topics import create_topics
from producers.search_client import SearchClient, SearchTimeout
from producers.uploads import ensure_bucket
from schemas.search import SearchRequest
from schemas.settings import Settings

log = structlog.get_logger(__name__)

ENV_FILE = "stack.env"
T = TypeVar("T")


class Stack:
    def __init__(
        self,
        data_dir: Path,
        *,
        extractors: int = 1,
        shards: int = 1,
        replicas: int = 1,
        env: dict[str, str] | None = None,
        http: bool = True,
        on_process_event: Callable[[ProcessEvent], None] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.infra = Infrastructure(self.data_dir, extra_env=env or {})
        self.extractor_count = extractors
        self.shards = shards
        self.replicas = replicas
        self.extractors: list[ManagedProcess] = []
        self.indexers: dict[tuple[int, int], ManagedProcess] = {}  # (shard, replica) -> process
        self.http: ManagedProcess | None = None
        self.http_port = free_port()
        self.serve_http = http  # False: no web page and HTTP API (benchmarks)
        # Held while the supervisor polls and while the stack changes its processes.
        self._lock = threading.RLock()
        self.supervisor = Supervisor(
            self.processes,
            self._restart,
            self.data_dir / PROCESS_TABLE,
            lock=self._lock,
            cluster_id=lambda: self.infra.cluster_id,
            notify=on_process_event,
        )

    @property
    def indexer(self) -> ManagedProcess | None:
        """The first indexer (the only one in an unsharded stack)."""
        return next(iter(self.indexers.values()), None)

    @property
    def broker(self) -> ManagedProcess | None:
        return self.infra.broker

    @property
    def s3_gateway(self) -> ManagedProcess | None:
        return self.infra.s3_gateway

    @property
    def settings(self) -> Settings:
        """What the stack's processes see: their LOOKALIKE_* environment, no env file."""
        given: dict[str, Any] = {
            name.removeprefix("LOOKALIKE_").lower(): value
            for name, value in self.infra.env.items()
            if name.startswith("LOOKALIKE_")
        }
        return Settings(_env_file=None, **given)

    def processes(self) -> list[ManagedProcess]:
        """Every process of the stack now, broker first (what the supervisor watches)."""
        with self._lock:
            infra = [p for p in (self.infra.broker, self.infra.s3_gateway) if p is not None]
            http = [self.http] if self.http is not None else []
            return [*infra, *self.extractors, *self.indexers.values(), *http]

    def start(self) -> None:
        """Start every process and wait until search answers; then supervise them. If any part
        fails to start, what did start is stopped again before the error is raised."""
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.supervisor.start()

    def _start_all(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._start_broker()
            self.infra.start_s3_gateway()
            ensure_bucket(s3_client(self.settings), self.settings.bucket)
            self.write_env_file()
            for pool in self.extractor_pools():
                for _ in range(self.extractor_count):
                    self.start_extractor(pool)
            for shard in range(self.shards):
                for replica in range(self.replicas):
                    self.start_indexer(shard, replica, wait=False)
        if self.serve_http:
            self.start_http()
        self.write_env_file()  # now with every process's /metrics URL and the web page's
        # Fails fast if a process dies while starting; CLIP models load slowly on busy machines.
        self.wait_until_serving(timeout=120.0)

    def start_http(self) -> ManagedProcess:
        """The HTTP API and web page (`LOOKALIKE_HTTP_URL` in stack.env)."""
        with self._lock:
            if self.http is None:
                self.http = self.infra.lookalike_process("http", f"--port={self.http_port}")
                self.http.port = self.http_port
            self.http.start()
            return self.http

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def extractor_pools(self) -> list[str]:
        return extractor_pools(self.settings)

    def start_extractor(self, features: str, name: str | None = None) -> ManagedProcess:
        """Another member of the pool's consumer group (a rebalance follows)."""
        with self._lock:
            if name is None:
                taken = {p.name for p in self.extractors}
                stem = f"extractor-{features.replace(',', '+')}"
                name = next(
                    f"{stem}-{i}" for i in range(len(taken) + 1) if f"{stem}-{i}" not in taken
                )
            proc = self.infra.lookalike_process("extractor", f"--features={features}", name=name)
            proc.start()
            self.extractors.append(proc)
            return proc

    def shard_partitions(self, shard: int) -> list[int]:
        return [p for p in range(self.settings.partitions) if p % self.shards == shard]

    def start_indexer(self, shard: int = 0, replica: int = 0, wait: bool = True) -> ManagedProcess:
        """Shard s serves partitions p with p % shards == s; replicas keep their own state.
        Replaces (and stops, if it still runs) the process that served this slot."""
        env: dict[str, str] = {}
        name = "indexer"
        if self.shards > 1 or self.replicas > 1:
            name = f"indexer-s{shard}-r{replica}"
            env = {
                "LOOKALIKE_SHARD_PARTITIONS": ",".join(map(str, self.shard_partitions(shard))),
                "LOOKALIKE_INDEX_PATH": str(self.data_dir / "index" / f"s{shard}-r{replica}"),
                # One replica per shard publishes alerts: one alert per image.
                "LOOKALIKE_PUBLISH_ALERTS": "true" if replica == 0 else "false",
            }
        with self._lock:
            old = self.indexers.get((shard, replica))
            if old is not None:
                old.stop()
            proc = self.infra.lookalike_process("indexer", name=name, env=env)
            proc.start()
            self.indexers[(shard, replica)] = proc
        if wait:
            self.wait_until_serving()
        return proc

    def restart_broker(self) -> str:
        """Kill the broker (its memory is lost: every topic, offset and group), start a new
        one on the same port with a new cluster id and create the topics again.
        Returns the new cluster id."""
        with self._lock:
            if self.infra.broker is not None:
                self.infra.broker.kill()
            self._start_broker()
            return self.infra.cluster_id

    def _start_broker(self) -> None:
        self.infra.start_broker()
        _run_blocking(lambda: create_topics(self.settings))
        log.info("broker.ready", cluster_id=self.infra.cluster_id, port=self.infra.kafka_port)

    def _restart(self, proc: ManagedProcess) -> None:
        """How the supervisor starts a dead process again."""
        if proc is self.infra.broker:
            self._start_broker()  # a new, empty log: new cluster id, topics again
        else:
            proc.start()
            proc.wait_ready()

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Until a search through Kafka is answered for every partition (every shard up)."""
        _run_blocking(lambda: self.serving(timeout))

    async def serving(self, timeout: float = 60.0) -> None:
        """`wait_until_serving`, for callers already inside an event loop. While the
        supervisor runs, an indexer that died is waited for (it is being restarted)."""
        indexers = list(self.indexers.values())
        await _probe_search(self.settings, timeout, indexers, self.supervisor.running)

    def serve_until_interrupted(self) -> None:
        """Block while the supervisor keeps the processes up; Ctrl-C returns."""
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("\nStopping ...")

    def stop(self) -> None:
        self.supervisor.stop()
        with self._lock:
            http = [self.http] if self.http is not None else []
            for proc in [*http, *self.extractors, *self.indexers.values()]:
                proc.stop()
            self.infra.stop()
            if self.data_dir.exists():
                self.supervisor.write_table()  # everything stopped
            self.extractors.clear()
            self.indexers.clear()

    def write_env_file(self) -> Path:
        """So `lookalike upload/search/status` in another terminal find this stack."""
        path = self.data_dir / ENV_FILE
        lines = [f"{k}={v}" for k, v in self.infra.env.items() if k.startswith("LOOKALIKE_")]
        lines += [f"LOOKALIKE_HTTP_URL={self.http_url}"] if self.http is not None else []
        lines += [
            f"{metrics_url_variable(name)}={url}"
            for name, url in sorted(self.infra.metrics_urls().items())
        ]
        path.write_text("\n".join(lines) + "\n")
        return path


def metrics_url_variable(process: str) -> str:
    """The stack.env variable holding a process's /metrics URL, e.g.
    LOOKALIKE_METRICS_URL_INDEXER_0_0."""
    return "LOOKALIKE_METRICS_URL_" + re.sub(r"[^A-Z0-9]+", "_", process.upper()).strip("_")


def _run_blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when called from inside an event
    loop (async tests): then in a helper thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(1, thread_name_prefix="stack") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


async def _probe_search(
    settings: Settings, timeout: float, procs: list[ManagedProcess], supervised: bool
) -> None:
    deadline = time.monotonic() + timeout
    async with SearchClient(settings) as client:
        while time.monotonic() < deadline:
            for proc in procs:
                if not proc.alive() and not (supervised and proc.wanted):
                    raise RuntimeError(f"{proc.name} exited; see {proc.log_path}")
            try:
                reply = await client.search(
                    SearchRequest(feature="phash", image_id="-probe-"), timeout=1.0
                )
            except SearchTimeout:
                continue
            if not reply.partial:
                return
    raise TimeoutError(f"search not answered for every partition within {timeout}s")

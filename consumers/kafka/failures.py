"""What kind of failure an exception is: the one place the consume loop's error policy asks.

- *Transient*: the world is briefly unavailable (broker or S3 unreachable, a timeout, S3
  answering 5xx or "slow down"). Retrying the same message later will work, so it is retried
  with backoff for as long as it takes: never dead-lettered, never skipped.
- *Poison*: this message can never be processed (`PoisonMessage`, raised by a stage that
  knows it): dead-lettered at once, with the reason.
- Anything else is *deterministic until proven otherwise*: retried a bounded number of
  times (it may be a batch-level problem such as running out of GPU memory), then the batch
  is split and the one message that still fails is dead-lettered.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from aiokafka.errors import KafkaError
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error

# S3 error codes that mean "try again", not "this object is bad".
_S3_TRANSIENT_CODES = frozenset(
    {
        "ServiceUnavailable",
        "SlowDown",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "XMinioServerNotInitialized",
    }
)


class PoisonMessage(Exception):
    """The message itself is bad: retrying cannot help. The text is the dead-letter reason."""


class TransientFailure(Exception):
    """Something this message needs is unavailable for now: retry it later, never drop it."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientFailure | ConnectionError | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False)) or type(exc).__name__ in (
            "KafkaTimeoutError",
            "KafkaConnectionError",
        )
    if isinstance(exc, ServerError | InvalidResponseError | Urllib3Error):
        return True  # S3 answered 5xx, garbage, or not at all
    if isinstance(exc, S3Error):
        return exc.code in _S3_TRANSIENT_CODES
    if isinstance(exc, socket.gaierror | socket.herror):
        return True  # name resolution
    # A full disk is freed by an operator; other OSErrors (a truncated image) are not transient.
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC

"""A query's vectors described on demand (consumers/features/contract.OnDemand): each at most
once, only when read, and a slice shares what was described."""

from __future__ import annotations

import pytest

from consumers.features.contract import OnDemand


def test_each_vector_is_described_once_when_first_read() -> None:
    calls: list[int] = []

    def describer(n: int) -> bytes:
        calls.append(n)
        return bytes([n])

    vectors = OnDemand([lambda: describer(0), lambda: describer(1)])
    assert len(vectors) == 2 and calls == []
    assert vectors[0] == b"\x00" and vectors[0] == b"\x00"
    assert calls == [0]
    first = vectors[:1]
    assert len(first) == 1 and list(first) == [b"\x00"] and calls == [0]
    assert list(vectors) == [b"\x00", b"\x01"] and calls == [0, 1]
    assert list(vectors[1:]) == [b"\x01"] and calls == [0, 1]  # the slice shares it
    with pytest.raises(IndexError):
        vectors[2]


def test_a_describer_that_fails_is_asked_again_next_time() -> None:
    attempts: list[int] = []

    def flaky() -> bytes:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("first time")
        return b"ok"

    vectors = OnDemand([flaky])
    with pytest.raises(OSError):
        vectors[0]
    assert vectors[0] == b"ok" and len(attempts) == 2

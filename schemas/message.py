"""Base class for every payload we put on a topic: versioned pydantic models, JSON on the wire.

Binary fields (hashes, vectors, image bytes) travel base64-encoded inside the JSON, never as
lists of numbers.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, ValidationError


class MessageError(ValueError):
    """Raised when bytes off a topic do not decode into the expected message."""


class Message(BaseModel):
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64", frozen=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> Self:
        if raw is None:
            raise MessageError(f"empty value where a {cls.__name__} was expected")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "message"
            raise MessageError(f"invalid {cls.__name__}: {where}: {first['msg']}") from exc

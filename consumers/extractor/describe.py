"""Decode once, describe with every configured feature. CPU-bound: runs in a worker thread."""

from __future__ import annotations

from collections.abc import Sequence

from consumers.features.contract import FeatureSpec
from consumers.features.decode import decode_image


def describe(data: bytes, features: Sequence[FeatureSpec], max_pixels: int) -> dict[str, bytes]:
    """Raises UndecodableImage with the reason when the bytes are not a usable picture."""
    image = decode_image(data, max_pixels=max_pixels)
    return {spec.name: spec.describe_batch([image])[0] for spec in features}

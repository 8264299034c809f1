"""Extractor pools: the embedded stack runs one extractor consumer group per pool."""

from __future__ import annotations

from schemas.settings import Settings


def extractor_pools(settings: Settings) -> list[str]:
    """`LOOKALIKE_EXTRACTOR_POOLS` limited to the enabled features, e.g.
    ["phash,colour,copy", "clip"] (a pool with no enabled feature is left out)."""
    pools = []
    for pool in settings.extractor_pools.split(";"):
        names = [n for n in pool.split(",") if n in settings.feature_names]
        if names:
            pools.append(",".join(names))
    return pools


def extractor_groups(settings: Settings) -> list[str]:
    """The consumer group of each pool, e.g. `lookalike-extractor.phash+colour+copy`."""
    return [settings.extractor_group_for(pool.split(",")) for pool in extractor_pools(settings)]

"""Every feature index against the bucket: lost, ghosts, stale; and how long until equal.

The bucket is listed (image keys only, eTags without quotes); each feature's index is asked
for its inventory over the control topic (image id -> eTag, one answer per indexer) and the
answers are merged (shards are disjoint, replicas hold the same). Counts are per feature; the
table reports the worst feature (max), the notes name the feature.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field

from minio import Minio

from producers.search_client import SearchClient, SearchTimeout
from schemas.minio_events import looks_like_image
from schemas.search import SearchRequest
from schemas.settings import Settings

INVENTORY_TIMEOUT_S = 10.0


@dataclass
class FeatureDiff:
    lost: int = 0  # in the bucket, not in the index
    ghosts: int = 0  # in the index, not in the bucket
    stale: int = 0  # in both, the index holds another eTag
    answered: bool = True  # the answers covered every partition
    examples: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.answered and not (self.lost or self.ghosts or self.stale)

    def describe(self) -> str:
        if not self.answered:
            return "no complete inventory"
        text = f"lost {self.lost}, ghosts {self.ghosts}, stale {self.stale}"
        return text + (f" (e.g. {', '.join(self.examples)})" if self.examples else "")


@dataclass
class Comparison:
    at: float  # time.monotonic() when the last inventory came back
    bucket: dict[str, str]  # image id -> eTag, what the indexes were compared with
    features: dict[str, FeatureDiff]

    @property
    def bucket_images(self) -> int:
        return len(self.bucket)

    @property
    def equal(self) -> bool:
        return all(d.equal for d in self.features.values())

    def worst(self, what: str) -> int:
        return max((getattr(d, what) for d in self.features.values()), default=0)

    def summary(self) -> str:
        return "; ".join(f"{f}: {d.describe()}" for f, d in self.features.items() if not d.equal)


def bucket_etags(s3: Minio, bucket: str) -> dict[str, str]:
    """image id -> eTag of every image key in the bucket (blocking: call it on a thread)."""
    out: dict[str, str] = {}
    for obj in s3.list_objects(bucket, recursive=True):
        name = obj.object_name
        if name is None or obj.is_dir or not looks_like_image(name, None):
            continue
        out[f"{bucket}/{name}"] = (obj.etag or "").strip('"')
    return out


async def index_etags(client: SearchClient, feature: str) -> dict[str, str | None] | None:
    """The feature's merged inventory, or None if the answers did not cover every partition."""
    try:
        reports = await client.inventory(feature, timeout=INVENTORY_TIMEOUT_S)
    except SearchTimeout:
        return None
    good = [r for r in reports if r.ok]
    count = max((r.partition_count for r in good), default=0)
    covered = {p for r in good for p in r.partitions}
    if not good or (count and not covered >= set(range(count))):
        return None
    merged: dict[str, str | None] = {}
    for report in good:
        merged.update(report.etags)
    return merged


def diff(
    bucket: dict[str, str], indexed: dict[str, str | None] | None, ignore: set[str]
) -> FeatureDiff:
    if indexed is None:
        return FeatureDiff(answered=False)
    result = FeatureDiff()
    for image_id, etag in bucket.items():
        if image_id in ignore:
            continue
        held = indexed.get(image_id, "-missing-")
        if held == "-missing-":
            result.lost += 1
            _example(result, f"lost {image_id}")
        elif held != etag:
            result.stale += 1
            _example(result, f"stale {image_id}")
    for image_id in indexed:
        if image_id not in bucket and image_id not in ignore:
            result.ghosts += 1
            _example(result, f"ghost {image_id}")
    return result


def _example(result: FeatureDiff, text: str) -> None:
    if len(result.examples) < 3:
        result.examples.append(text)


class Comparer:
    """Lists the bucket and asks every feature index, over one control-topic client.

    `ignore`: image ids the harness made undecodable on purpose (poison images): they stay
    in the bucket, are never indexable, and count on neither side.
    """

    def __init__(self, settings: Settings, s3: Minio, ignore: set[str]) -> None:
        self._settings = settings
        self._s3 = s3
        self._ignore = ignore

    async def compare(self, client: SearchClient) -> Comparison:
        bucket = await asyncio.to_thread(bucket_etags, self._s3, self._settings.bucket)
        features = self._settings.feature_names
        inventories = await asyncio.gather(*(index_etags(client, f) for f in features))
        return Comparison(
            at=time.monotonic(),
            bucket=bucket,
            features={
                f: diff(bucket, inv, self._ignore)
                for f, inv in zip(features, inventories, strict=True)
            },
        )

    async def wait_until_equal(
        self, since: float, limit: float, label: str
    ) -> tuple[Comparison, float | None]:
        """Poll about once a second until every index equals the bucket or `limit` seconds
        after `since` pass. Returns the last comparison and the seconds from `since` to the
        first equal one (None if never). A fresh client per call: a broker restart leaves an
        older client reading replies at offsets the new broker does not have."""
        client = SearchClient(self._settings)
        await client.start()
        last_print = 0.0
        try:
            while True:
                polled = time.monotonic()
                try:
                    result = await self.compare(client)
                except Exception as exc:  # the broker or S3 may still be coming back
                    print(f"  [{label}] compare failed: {exc!r}", file=sys.stderr, flush=True)
                    await asyncio.sleep(1.0)
                    if time.monotonic() - since > limit:
                        raise
                    continue
                if result.equal:
                    return result, max(0.0, result.at - since)
                if result.at - since > limit:
                    return result, None
                if result.at - last_print >= 5.0:
                    last_print = result.at
                    print(
                        f"  [{label}] +{result.at - since:.0f}s: {result.summary()}",
                        file=sys.stderr,
                        flush=True,
                    )
                await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - polled)))
        finally:
            await client.stop()


async def searchable_by_id(settings: Settings, image_ids: list[str]) -> tuple[int, int]:
    """(found, asked): each id searched by id in each feature index; an inventory says what
    an index holds, this says a search finds it."""
    found = asked = 0
    async with SearchClient(settings) as client:
        for feature in settings.feature_names:
            for image_id in image_ids:
                asked += 1
                request = SearchRequest(image_id=image_id, feature=feature, k=1)
                try:
                    reply = await client.search(request, timeout=5.0)
                except SearchTimeout:
                    continue
                found += reply.ok
    return found, asked

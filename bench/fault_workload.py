"""The fault benchmark's steady workload: uploads, overwrites and deletes on one key prefix.

Every S3 call runs on a thread pool, never on the event loop. The workload keeps its own idea
of which keys exist only to choose what to overwrite or delete; the bucket is the truth when
the indexes are compared (a PUT that failed while S3 was down simply did not happen).
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import urllib3
from minio import Minio
from PIL import Image, ImageEnhance

from lookalike.samples import photos
from producers.uploads import upload_bytes
from schemas.settings import Settings

T = TypeVar("T")

IMAGE_SIDE = 96  # small: decoding and the cheap features cost little; CLIP resizes anyway


def fail_fast_client(settings: Settings) -> Minio:
    """The workload's S3 client: like `lookalike.s3.s3_client`, but an unreachable S3 fails
    an operation within seconds (the minio default retries 5 times, with 5-minute timeouts,
    which would only delay the uploads of an outage until it ends)."""
    http = urllib3.PoolManager(
        maxsize=32,
        timeout=urllib3.Timeout(connect=2.0, read=20.0),
        retries=urllib3.Retry(total=1, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=settings.s3_secure,
        region=settings.s3_region,
        http_client=http,
    )


class ImageMaker:
    """Small distinct JPEGs: random crops of the sample photos, re-toned, with a counter in a
    JPEG comment so that no two uploads ever share bytes (every overwrite changes the eTag)."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._bases = [_shrink(img, 192) for img in photos().values()]
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        rng = self._rng
        base = rng.choice(self._bases)
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = base.crop((x, y, x + cw, y + ch)).resize((IMAGE_SIDE, IMAGE_SIDE))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.4, 1.6))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85, comment=f"faults-{self._count}".encode())
        return out.getvalue()


def _shrink(img: Image.Image, side: int) -> Image.Image:
    img = img.copy()
    img.thumbnail((side, side))
    return img


@dataclass
class OpCounts:
    ok: int = 0
    failed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, ok: bool) -> None:
        if ok:
            self.ok += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        else:
            self.failed += 1


class S3Ops:
    """put/delete on a thread pool; failures are counted, never raised (S3 may be down)."""

    def __init__(self, s3: Minio, bucket: str, workers: int = 32) -> None:
        self._s3 = s3
        self.bucket = bucket
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faults-s3")
        self.counts = OpCounts()

    def image_id(self, key: str) -> str:
        return f"{self.bucket}/{key}"

    async def put(self, key: str, data: bytes, kind: str = "upload") -> str | None:
        """The new eTag, or None if the PUT failed."""
        loop = asyncio.get_running_loop()
        try:
            etag = await loop.run_in_executor(
                self._pool, upload_bytes, self._s3, self.bucket, key, data
            )
        except Exception:
            self.counts.add(kind, False)
            return None
        self.counts.add(kind, True)
        return etag

    async def delete(self, key: str) -> bool:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._pool, self._s3.remove_object, self.bucket, key)
        except Exception:
            self.counts.add("delete", False)
            return False
        self.counts.add("delete", True)
        return True

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Any other blocking call (bucket listing) on the same pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class MixedWorkload:
    """Operations at a steady rate on `prefix`: new uploads (1 in 20 a JSON file, not an
    image), overwrites of live images with new content, deletes of live images (60/25/15
    once images exist). Runs until `stop()`."""

    def __init__(
        self, ops: S3Ops, images: ImageMaker, prefix: str, rate: float, seed: int = 0
    ) -> None:
        self._ops = ops
        self._images = images
        self._prefix = prefix
        self._rate = rate
        self._rng = random.Random(seed)
        self._live: list[str] = []
        self._next_key = 0
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self.issued = 0
        self.ended_at = 0.0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Issue operations until stopped, then wait for those in flight."""
        started = time.monotonic()
        while not self._stopping.is_set():
            target = started + self.issued / self._rate
            delay = target - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                    break
                except TimeoutError:
                    pass
            task = asyncio.create_task(self._one())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            self.issued += 1
        await asyncio.gather(*self._inflight)
        self.ended_at = time.monotonic()

    async def _one(self) -> None:
        roll = self._rng.random()
        if not self._live or roll < 0.60:
            n = self._next_key
            self._next_key += 1
            if n % 20 == 19:  # buckets hold more than pictures: a metadata file, not indexed
                meta = f'{{"upload": {n}, "note": "not an image"}}'.encode()
                await self._ops.put(f"{self._prefix}{n:06d}.json", meta, "non-image")
                return
            key = f"{self._prefix}{n:06d}.jpg"
            if await self._ops.put(key, self._images.next(), "upload") is not None:
                self._live.append(key)
        elif roll < 0.85:
            key = self._rng.choice(self._live)
            await self._ops.put(key, self._images.next(), "overwrite")
        else:
            key = self._live.pop(self._rng.randrange(len(self._live)))
            if not await self._ops.delete(key):
                self._live.append(key)

    def live_keys(self) -> list[str]:
        return list(self._live)

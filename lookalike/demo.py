"""`lookalike demo`: start the embedded stack, upload sample photos and transformed copies,
wait until they are indexed, and search by one of them."""

from __future__ import annotations

import asyncio
import time

import structlog

from lookalike.s3 import s3_client
from lookalike.samples import COPY_TRANSFORMS, jpeg, photos
from lookalike.stack import Stack
from producers.search_client import SearchClient
from producers.uploads import upload_bytes
from schemas.search import ALL_FEATURES, SearchErrorCode, SearchReply, SearchRequest
from schemas.settings import Settings

log = structlog.get_logger(__name__)

COPIED = ("astronaut", "coffee", "chelsea", "rocket")


def demo_uploads() -> dict[str, bytes]:
    """key -> bytes: every sample photo, plus transformed copies of a few."""
    uploads: dict[str, bytes] = {}
    originals = photos()
    for name, img in originals.items():
        uploads[f"samples/{name}.jpg"] = jpeg(img)
    for name in COPIED:
        for how, transform in COPY_TRANSFORMS.items():
            uploads[f"copies/{name}-{how}.jpg"] = transform(originals[name])
    return uploads


async def wait_until_indexed(
    settings: Settings, image_ids: list[str], timeout: float = 180.0
) -> float:
    """Until every image is in every feature index (CLIP, the slowest, last)."""
    started = time.monotonic()
    pending = {(f, i) for f in settings.feature_names for i in image_ids}
    async with SearchClient(settings) as client:
        while pending:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{len(pending)} (feature, image) still not indexed")
            for feature, image_id in sorted(pending):
                request = SearchRequest(feature=feature, image_id=image_id, k=1)
                reply = await client.search(request)
                if reply.error_code is not SearchErrorCode.NOT_FOUND:
                    pending.discard((feature, image_id))
            if pending:
                await asyncio.sleep(0.2)
    return time.monotonic() - started


def print_reply(title: str, reply: SearchReply) -> None:
    print(f"\n{title}")
    if not reply.ok:
        print(f"  error ({reply.error_code}): {reply.error}")
        return
    if reply.feature == ALL_FEATURES:
        print(f"  {'rank':>4}  {'verdict':<9}  {'score':>6}  image  (distance per feature)")
        for rank, hit in enumerate(reply.hits, 1):
            verdict = hit.verdict.value if hit.verdict else "-"
            each = ", ".join(f"{f} {d:.3g}" for f, d in sorted(hit.distances.items()))
            print(f"  {rank:>4}  {verdict:<9}  {hit.distance:>6.2f}  {hit.image_id}  ({each})")
    else:
        print(f"  {'rank':>4}  {'distance':>8}  image")
        for rank, hit in enumerate(reply.hits, 1):
            print(f"  {rank:>4}  {hit.distance:>8.0f}  {hit.image_id}")
    took = f"{reply.took_ms:.1f} ms in the indexer"
    print(f"  ({len(reply.hits)} hits of {reply.indexed} indexed, {took})")


async def query_examples(settings: Settings, uploads: dict[str, bytes]) -> None:
    async with SearchClient(settings) as client:
        image = uploads["samples/astronaut.jpg"]
        reply = await client.search(SearchRequest(image=image, k=5))
        print_reply("Query by image bytes, every feature fused: samples/astronaut.jpg", reply)
        reply = await client.search(
            SearchRequest(image_id=f"{settings.bucket}/copies/coffee-resized.jpg", k=3)
        )
        print_reply("Query by id: images/copies/coffee-resized.jpg", reply)
        reply = await client.search(SearchRequest(text="an astronaut in a space suit", k=3))
        print_reply("Query by text (CLIP; random weights here, so the ranking means little)", reply)


def run_demo(stack: Stack, keep_running: bool) -> None:
    print(f"Starting the embedded stack in {stack.data_dir} ...")
    stack.start()
    settings = stack.settings
    try:
        uploads = demo_uploads()
        s3 = s3_client(settings)
        for key, data in uploads.items():
            upload_bytes(s3, settings.bucket, key, data)
        print(f"Uploaded {len(uploads)} images to bucket '{settings.bucket}'.")
        waited = asyncio.run(
            wait_until_indexed(settings, [f"{settings.bucket}/{k}" for k in uploads])
        )
        print(
            f"All {len(uploads)} images searchable in every feature index {waited:.2f}s "
            "after the last upload."
        )
        asyncio.run(query_examples(settings, uploads))
        print(f"\nWeb page: {stack.http_url} (search by image or text, live alerts; API at /docs)")
        if keep_running:
            print(
                "\nThe stack keeps running (Ctrl-C stops it). In another terminal:\n"
                "  .venv/bin/lookalike upload PATH...\n"
                "  .venv/bin/lookalike search --image FILE\n"
                f"  .venv/bin/lookalike search --id {settings.bucket}/samples/coffee.jpg"
            )
            stack.serve_until_interrupted()
    finally:
        stack.stop()

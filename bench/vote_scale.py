"""The keypoint vote index at scale: the one part of a verified copy search that grows with the
gallery (issue 15).

    .venv/bin/python -m bench.vote_scale                          # 2,000, 10,000, 100,000 images
    .venv/bin/python -m bench.vote_scale --images 2000,10000      # quicker
    .venv/bin/python -m bench.vote_scale --threads 1,2            # the vote on 1 and 2 threads

A `keypoints` search (consumers/indexer/copy_verification.py) asks the vote index
(index_store/keypoint_votes.py) which images share keypoints with the query, then aligns and
compares at most a fixed number of candidates: only the vote grows with the number of indexed
images. This bench builds the product's vote index (`KeypointVotes` over a gallery, trained as
the keypoints engine's rebuild trains it) over galleries of real ORB descriptors: the
keypoints feature's own (copy_keypoints.describe) of random crops (35-80 % of each side) of the
sample photographs, one crop per image (described on both cores); queries: 30 other crops,
described as queries. Printed per gallery size: the build (k-means training and adding, on 2
threads), the index's size, and one query's vote time (p50, p90), against the naive way: every
descriptor compared (the same vote index with one group: the exact nearest, the same votes;
at 100,000 images on a few queries only). Votes' agreement: the share of the exact search's
top-40 voted images the index's top 40 also holds (its candidates). Votes on one thread, or
(`--threads`) on each of several OpenMP thread counts (the indexer votes on
index_store/openmp.VOTE_THREADS), every query voted once on each, the counts taking turns at
going first.
"""

from __future__ import annotations

import argparse
import platform
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import faiss
import numpy as np
from numpy.typing import NDArray

from bench.copy_set import photographs
from consumers.features.copy_keypoints import INDEXED, QUERY, describe
from consumers.indexer.copy_verification import VOTED
from index_store.keypoint_votes import KeypointVotes, Votes

CHUNK = 2000  # crops a worker process describes at a time
Descriptors = NDArray[np.uint8]


def crops(count: int, keypoints: int, seed: int) -> list[Descriptors]:
    """ORB descriptors of `count` random crops of the sample photographs."""
    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    photos = photographs()
    out = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        fw, fh = rng.uniform(0.35, 0.8, 2)
        x, y = rng.uniform(0, 1 - fw) * w, rng.uniform(0, 1 - fh) * h
        box = (int(x), int(y), int(x + fw * w), int(y + fh * h))
        out.append(describe(photo.crop(box), keypoints).descriptors)
    return out


def gallery(images: int, seed: int) -> list[Descriptors]:
    """`images` crops' descriptors, described in CHUNKs on two worker processes."""
    chunks = [min(CHUNK, images - at) for at in range(0, images, CHUNK)]
    with ProcessPoolExecutor(2) as pool:
        seeds = range(seed, seed + len(chunks))
        described = pool.map(crops, chunks, [INDEXED] * len(chunks), seeds)
        return [d for chunk in described for d in chunk]


def index_bytes(index: faiss.IndexBinary) -> int:
    return int(faiss.serialize_index_binary(index).nbytes)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="2000,10000,100000", help="gallery sizes")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--threads", default="1", help="OpenMP threads a vote runs on, e.g. 1,2")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    sizes = [int(s) for s in args.images.split(",")]
    faiss.omp_set_num_threads(1)
    cv2.setNumThreads(1)
    started = time.perf_counter()
    queries = crops(args.queries, QUERY, args.seed)  # a seed no gallery chunk uses
    everything = gallery(max(sizes), args.seed + 1)
    print(f"{len(everything):,} crops and {len(queries)} queries described in "
          f"{time.perf_counter() - started:.0f}s", flush=True)  # fmt: skip
    rows = []
    for images in sizes:
        described = everything[:images]
        faiss.omp_set_num_threads(2)  # building may use both cores, as a rebuild does
        t0 = time.perf_counter()
        votes = KeypointVotes(described)
        built = time.perf_counter() - t0
        exact = KeypointVotes(described, lists=1)  # one group: every descriptor compared
        took: dict[int, list[float]] = {t: [] for t in threads}
        found: list[Votes] = []
        for n, query in enumerate(queries):
            turn = n % len(threads)
            for t in threads[turn:] + threads[:turn]:
                faiss.omp_set_num_threads(t)
                t0 = time.perf_counter()
                voted = votes.vote(query)
                took[t].append(1000 * (time.perf_counter() - t0))
            found.append(voted)
        faiss.omp_set_num_threads(1)
        exact_ms: list[float] = []
        agree: list[float] = []
        checked = queries if images <= 10_000 else queries[:3]
        for query, answer in zip(checked, found, strict=False):
            t0 = time.perf_counter()
            right = set(exact.vote(query).most(VOTED))
            exact_ms.append(1000 * (time.perf_counter() - t0))
            agree.append(len(right & set(answer.most(VOTED))) / max(len(right), 1))
        timed = "".join(
            f"| {np.median(ms):.1f} | {np.percentile(ms, 90):.1f} " for ms in took.values()
        )
        rows.append(
            f"| {images:,} | {len(votes):,} | {built:.0f} | {index_bytes(votes.index) / 2**20:.0f} "
            f"{timed}| {np.median(exact_ms):.0f} | {np.mean(agree):.2f} ({len(checked)}) |"
        )
        print(rows[-1], flush=True)
        del votes, exact
    print(f"\n## Keypoint vote index at scale (one query: its {QUERY} descriptors; the exact "
          "search on one thread)\n")  # fmt: skip
    on = "".join(f"vote p50 ms, {t} thread(s) | vote p90 ms, {t} thread(s) | " for t in threads)
    print(f"| images | descriptors | build s | index MiB | {on}exact p50 ms | "
          "top-40 agreement (queries) |")  # fmt: skip
    print("| --- " * (6 + 2 * len(threads)) + "|")
    print("\n".join(rows))
    print(f"\n{platform.node()}, {time.perf_counter() - started:.0f}s in all")


if __name__ == "__main__":
    main()

"""Extraction throughput: JPEG bytes -> feature vectors, ours next to a naive baseline.

    # pHash + colour histogram on the CPU (all cores: 2 on the dev machine)
    .venv/bin/python -m bench.extract_throughput --part fast --images 2000
    # CLIP ViT-B-32 on the CPU, and on a GPU (device picked automatically)
    .venv/bin/python -m bench.extract_throughput --part clip --images 512 --batch-sizes 1,32,128

Inputs are distinct 640x480 JPEGs (crops of the scikit-image photographs). 'naive' is one
image at a time: full-size decode, per-image work, single thread (for CLIP: open_clip's own
torchvision preprocessing and a float32 model call per image). 'ours' is what the extractor
does: draft-mode decode, decode/preprocess in a process pool overlapped with the model,
batched model calls (fp16 on CUDA; on CPU the int8 image tower in torch and in OpenVINO, the
default). Both include decoding.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from consumers.features import colour_histogram, copy_signature, phash
from consumers.features.decode import decode_image
from lookalike.samples import distinct_jpegs

Row = tuple[str, str, int, float]  # (pipeline, variant, batch, images/s)


def fast_features(data: bytes) -> tuple[bytes, bytes]:
    img = decode_image(data)
    return phash.phash(img), colour_histogram.describe(img)


def fast_chunk(chunk: list[bytes]) -> int:
    for data in chunk:
        fast_features(data)
    return len(chunk)


def with_copy_chunk(chunk: list[bytes]) -> int:
    """The embedded stack's fast extractor pool: pHash, colour and the copy signature."""
    for data in chunk:
        img = decode_image(data)
        phash.phash(img), colour_histogram.describe(img), copy_signature.describe(img)
    return len(chunk)


def naive_fast(data: bytes) -> tuple[bytes, bytes]:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return phash.phash(img), colour_histogram.describe(img)


def timed(label: str, count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    rate = count / (time.perf_counter() - started)
    print(f"  {label}: {rate:,.1f} images/s", flush=True)
    return rate


def bench_fast(images: list[bytes], workers: int) -> list[Row]:
    rows: list[Row] = []
    sample = images[: max(50, len(images) // 4)]
    rate = timed("naive", len(sample), lambda: [naive_fast(d) for d in sample])
    rows.append(("pHash + colour", "naive: full decode, 1 thread", 1, rate))
    rate = timed("draft decode, 1 thread", len(images), lambda: fast_chunk(images))
    rows.append(("pHash + colour", "ours: draft decode, 1 process", 1, rate))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(fast_chunk, [images[:8]] * workers))  # start the workers
        chunks = [images[i : i + 32] for i in range(0, len(images), 32)]
        rate = timed(
            f"draft decode, {workers} processes",
            len(images),
            lambda: sum(pool.map(fast_chunk, chunks)),
        )
    rows.append(("pHash + colour", f"ours: draft decode, {workers} processes", 32, rate))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(with_copy_chunk, [images[:8]] * workers))
        chunks = [images[i : i + 32] for i in range(0, len(images), 32)]
        rate = timed(
            "+ copy signature", len(images), lambda: sum(pool.map(with_copy_chunk, chunks))
        )
    rows.append(("pHash + colour + copy", f"ours: draft decode, {workers} processes", 32, rate))
    return rows


_SIZE = 224


def prepare_chunk(chunk: list[bytes]) -> NDArray[np.uint8]:
    from consumers.features.clip_embed import prepare

    return np.stack([prepare(decode_image(d), _SIZE) for d in chunk])


def batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def bench_clip(images: list[bytes], workers: int, batch_sizes: list[int], device: str) -> list[Row]:
    import open_clip
    import torch

    from consumers.features.clip_embed import ClipEmbedder
    from consumers.features.clip_openvino import CALIBRATION_IMAGES

    rows: list[Row] = []
    name = "CLIP ViT-B-32"
    where = "cuda" if device == "cuda" else "cpu"

    # Naive: open_clip's own transforms, float32, one image per call.
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model = model.to(where).eval()
    sample = images[: 64 if where == "cuda" else 24]

    def naive() -> None:
        with torch.inference_mode():
            for data in sample:
                img = Image.open(io.BytesIO(data)).convert("RGB")
                model.encode_image(preprocess(img).unsqueeze(0).to(where))
        if where == "cuda":
            torch.cuda.synchronize()

    naive()  # warm-up (CUDA context, kernels)
    rows.append(
        (
            name,
            f"naive: torchvision preprocess, fp32, {where}",
            1,
            timed("naive", len(sample), naive),
        )
    )

    embedders = [("fp16", ClipEmbedder("ViT-B-32", None, where))]
    if where == "cpu":
        openvino = ClipEmbedder(
            "ViT-B-32", None, "cpu", cpu_runtime="openvino", cache_dir=Path(tempfile.mkdtemp())
        )
        openvino.embed_prepared(prepare_chunk(images[:CALIBRATION_IMAGES]))  # calibrates
        openvino.tower_ready.wait()
        embedders = [
            ("int8 image tower (torch)", ClipEmbedder("ViT-B-32", None, "cpu")),
            ("int8 image tower (OpenVINO)", openvino),
        ]
    with ProcessPoolExecutor(workers) as pool:
        for precision, embedder in embedders:
            for size in batch_sizes:
                work = images if size > 1 else images[: min(len(images), 64)]
                embedder.embed_prepared(prepare_chunk(work[:size]))  # warm-up for this shape

                def ours(
                    work: list[bytes] = work, size: int = size, embedder: ClipEmbedder = embedder
                ) -> None:
                    for pixels in pool.map(prepare_chunk, batches(work, size)):
                        embedder.embed_prepared(pixels)

                rate = timed(f"{precision}, batch {size}", len(work), ours)
                rows.append(
                    (name, f"ours: {workers} decode processes, {precision}, {where}", size, rate)
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["fast", "clip"], required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=256, help="distinct JPEGs, cycled")
    parser.add_argument("--batch-sizes", default="1,32,128")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    distinct = distinct_jpegs(min(args.distinct, args.images))
    images = [distinct[i % len(distinct)] for i in range(args.images)]
    print(
        f"{len(images)} JPEGs 640x480 (~{sum(map(len, distinct)) // len(distinct) // 1024} KB)",
        flush=True,
    )
    if args.part == "fast":
        rows = bench_fast(images, args.workers)
    else:
        import torch

        device = (
            ("cuda" if torch.cuda.is_available() else "cpu")
            if args.device == "auto"
            else args.device
        )
        torch.set_num_threads(max(1, (os.cpu_count() or 1) if device == "cpu" else 4))
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        rows = bench_clip(images, args.workers, sizes, device)
        if device == "cuda":
            print(f"GPU: {torch.cuda.get_device_name(0)}")

    baseline = rows[0][3]
    cpu = platform.processor() or platform.machine()
    print(f"\nExtraction throughput on {platform.node()}: {os.cpu_count()} CPUs, {cpu}")
    print("| features | pipeline | batch | images/s | vs naive |")
    print("| --- | --- | --- | --- | --- |")
    for feature, variant, batch, rate in rows:
        print(f"| {feature} | {variant} | {batch} | {rate:,.1f} | {rate / baseline:.1f}x |")


if __name__ == "__main__":
    main()

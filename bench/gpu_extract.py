"""CLIP at GPU speed: JPEG bytes in memory -> L2-normalised vectors on one GPU.

    python -m bench.gpu_extract --images 20000 --batch-sizes 32,128,256,512

Three pipelines in one run, on distinct 640x480 JPEGs (lookalike.samples.distinct_jpegs):
- naive: PIL decode + open_clip's torchvision transforms + float32 model, one image per call;
- CPU decode: what the extractor did before (PIL draft decode and resize in `--workers`
  processes, fp16 model on the GPU);
- GPU decode (consumers/features/tensor_pixels.py + ClipEmbedder.embed_pixels): nvJPEG batch
  decode, resize/crop/normalise as tensor ops, fp16 model; `--prep-threads` threads each prepare
  batches on their own CUDA stream while the model runs the previous ones.
For the GPU path it prints the stage breakdown (decode, resize+crop, model; each timed alone,
synchronised) and the GPU utilisation while the pipeline ran (NVML, sampled every 50 ms), and
the smallest cosine between its vectors and the CPU path's on the same images.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from consumers.features.clip_embed import ClipEmbedder, prepare
from consumers.features.decode import decode_image
from consumers.features.tensor_pixels import TensorPixels
from lookalike.samples import distinct_jpegs

_SIZE = 224


def batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def prepare_chunk(chunk: list[bytes]) -> NDArray[np.uint8]:
    return np.stack([prepare(decode_image(d), _SIZE) for d in chunk])


def rate_of(count: int, run: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


class Utilisation:
    """Mean GPU utilisation (NVML) over the `with` block."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> Utilisation:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:
            return self

        def sample() -> None:
            while not self._stop.wait(0.05):
                self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> str:
        return f"{np.mean(self.samples):.0f} %" if self.samples else "n/a"


def naive(images: list[bytes]) -> float:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model = model.cuda().eval()
    sample = images[:256]

    @torch.inference_mode()
    def run() -> None:
        for data in sample:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            model.encode_image(preprocess(img).unsqueeze(0).cuda())

    run()  # warm-up
    return rate_of(len(sample), run)


def cpu_decode(embedder: ClipEmbedder, images: list[bytes], size: int, workers: int) -> float:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(prepare_chunk, [images[:8]] * workers))  # start the workers

        def run() -> None:
            for pixels in pool.map(prepare_chunk, batches(images, size)):
                embedder.embed_prepared(pixels)

        return rate_of(len(images), run)


def stage_breakdown(
    embedder: ClipEmbedder, pixels: TensorPixels, images: list[bytes], size: int
) -> dict[str, float]:
    """Milliseconds per batch of each stage alone (synchronised), mean over the images."""
    from torchvision.io import ImageReadMode, decode_jpeg

    totals = {"decode": 0.0, "resize + crop": 0.0, "model": 0.0}
    count = 0
    for chunk in batches(images, size):
        if len(chunk) < size:
            break
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in chunk]
        decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda")
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        stack = torch.stack(decoded)
        ready = pixels._resize_crop(stack, stack.shape[2], stack.shape[3])
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        embedder.embed_pixels(ready)
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        totals["decode"] += t1 - t0
        totals["resize + crop"] += t2 - t1
        totals["model"] += t3 - t2
        count += 1
    return {stage: 1000 * took / max(count, 1) for stage, took in totals.items()}


def gpu_pipeline(
    embedder: ClipEmbedder, images: list[bytes], size: int, threads: int
) -> tuple[float, str]:
    """Images/s with `threads` preparing batches (own CUDA streams) ahead of the model."""
    todo: queue.Queue[list[bytes] | None] = queue.Queue()
    for chunk in batches(images, size):
        todo.put(chunk)
    for _ in range(threads):
        todo.put(None)
    ready: queue.Queue[tuple[torch.Tensor, torch.cuda.Event] | None] = queue.Queue(maxsize=4)

    def prepare_ahead() -> None:
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        pixels = TensorPixels(_SIZE, "cuda")
        with torch.cuda.stream(stream):
            while (chunk := todo.get()) is not None:
                batch = pixels.prepare(chunk)
                done = torch.cuda.Event()  # type: ignore[no-untyped-call]
                done.record(stream)
                ready.put((batch.pixels, done))
        ready.put(None)

    def run() -> None:
        workers = [threading.Thread(target=prepare_ahead) for _ in range(threads)]
        for w in workers:
            w.start()
        finished = 0
        while finished < threads:
            item = ready.get()
            if item is None:
                finished += 1
                continue
            batch_pixels, done = item
            torch.cuda.current_stream().wait_event(done)
            batch_pixels.record_stream(torch.cuda.current_stream())
            embedder.embed_pixels(batch_pixels)
        for w in workers:
            w.join()

    with Utilisation() as util:
        rate = rate_of(len(images), run)
    return rate, util.mean


def _pipeline_process(
    images: list[bytes], size: int, threads: int, start: Any, results: Any
) -> None:
    embedder = ClipEmbedder("ViT-B-32", None, "cuda")
    embedder.embed_encoded(images[:size])  # warm-up
    start.wait()
    begun = time.perf_counter()
    gpu_pipeline(embedder, images, size, threads)
    results.put((len(images), begun, time.perf_counter()))


def gpu_processes(
    images: list[bytes], size: int, threads: int, processes: int
) -> tuple[float, str]:
    """Images/s of `processes` GPU pipelines on one GPU, each with its own share of images.

    torchvision's nvJPEG decoder is one per process and decodes one batch at a time, so a GPU
    host runs several extractor processes (consumers of one group) to keep the GPU busy.
    """
    context = mp.get_context("spawn")
    start, results = context.Barrier(processes + 1), context.Queue()
    share = len(images) // processes
    workers = [
        context.Process(
            target=_pipeline_process,
            args=(images[p * share : (p + 1) * share], size, threads, start, results),
        )
        for p in range(processes)
    ]
    for w in workers:
        w.start()
    start.wait()  # every process has loaded and warmed up its model
    with Utilisation() as util:
        done = [results.get() for _ in workers]
    for w in workers:
        w.join()
    count = sum(d[0] for d in done)
    return count / (max(d[2] for d in done) - min(d[1] for d in done)), util.mean


def smallest_cosine(embedder: ClipEmbedder, images: list[bytes]) -> float:
    sample = images[:256]
    on_cpu = embedder.embed_prepared(prepare_chunk(sample))
    on_gpu = embedder.embed_encoded(sample)
    cosines = [float(np.dot(a, b)) for a, b in zip(on_cpu, on_gpu, strict=True)]
    return min(cosines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--distinct", type=int, default=512, help="distinct JPEGs, cycled")
    parser.add_argument("--batch-sizes", default="32,128,256,512")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--prep-threads", type=int, default=3)
    parser.add_argument("--processes", default="2,3", help="GPU pipelines in parallel processes")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"

    distinct = distinct_jpegs(args.distinct)
    images = [distinct[i % len(distinct)] for i in range(args.images)]
    kb = sum(map(len, distinct)) // len(distinct) // 1024
    print(f"{len(images)} JPEGs 640x480 (~{kb} KB); {torch.cuda.get_device_name(0)}", flush=True)
    embedder = ClipEmbedder("ViT-B-32", None, "cuda")
    pixels = TensorPixels(_SIZE, "cuda")
    for size in {int(s) for s in args.batch_sizes.split(",")}:  # warm-up every shape
        embedder.embed_encoded(images[:size])

    rows: list[tuple[str, int, float, str]] = []
    rate = naive(images)
    rows.append(("naive: PIL + torchvision transforms, fp32, one image per call", 1, rate, ""))
    print(f"naive: {rate:,.0f} images/s", flush=True)
    breakdowns: list[tuple[int, dict[str, float]]] = []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        rate = cpu_decode(embedder, images[: min(len(images), 8192)], size, args.workers)
        rows.append((f"CPU decode ({args.workers} processes), fp16", size, rate, ""))
        print(f"CPU decode batch {size}: {rate:,.0f} images/s", flush=True)
        rate, util = gpu_pipeline(embedder, images, size, args.prep_threads)
        rows.append((f"GPU decode ({args.prep_threads} prep threads), fp16", size, rate, util))
        print(f"GPU decode batch {size}: {rate:,.0f} images/s, GPU {util}", flush=True)
        for processes in [int(p) for p in args.processes.split(",") if p]:
            rate, util = gpu_processes(images, size, args.prep_threads, processes)
            label = f"GPU decode, {processes} processes x {args.prep_threads} prep threads, fp16"
            rows.append((label, size, rate, util))
            print(f"{label} batch {size}: {rate:,.0f} images/s, GPU {util}", flush=True)
        breakdowns.append((size, stage_breakdown(embedder, pixels, images[: size * 20], size)))

    print(f"\nCLIP ViT-B-32 extraction, {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| pipeline | batch | images/s | vs naive | GPU busy |")
    print("| --- | --- | --- | --- | --- |")
    for name, size, rate, util in rows:
        print(f"| {name} | {size} | {rate:,.0f} | {rate / rows[0][2]:.1f}x | {util or '-'} |")
    print("\nGPU path, each stage alone (ms per batch; images/s if it were the only stage)")
    print("| batch | decode (nvJPEG) | resize + crop | model (fp16) |")
    print("| --- | --- | --- | --- |")
    for size, stages in breakdowns:
        cells = [f"{ms:.2f} ms ({size / ms * 1000:,.0f}/s)" for ms in stages.values()]
        print(f"| {size} | " + " | ".join(cells) + " |")
    cosine = smallest_cosine(embedder, images)
    print(f"\nsmallest cosine, GPU path vs CPU path (256 images): {cosine:.5f}")


if __name__ == "__main__":
    main()

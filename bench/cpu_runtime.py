"""CLIP's image tower on CPU cores: which runtime keeps the vectors and runs fastest.

    python -m bench.cpu_runtime --threads 2 --images 256

The CPU extractor's model stage (prepared 224x224 uint8 pixels -> unit vectors; decoding and
resizing are the same for every runtime and not timed here) in each runtime, on `--threads`
cores, batch `--batch`:
  - naive: torch float32, one image per call;
  - torch float32, and torch int8 (dynamic quantisation of the linear layers: the CPU
    default before OpenVINO);
  - ONNX Runtime float32, int8 with dynamic quantisation (weights int8, activations quantised
    per call), and int8 with static quantisation (QDQ, activation ranges calibrated on
    `--calibration` images that are not among the measured ones);
  - OpenVINO on the same ONNX graphs: float32, bfloat16 (on CPUs with AVX-512 BF16), and the
    static int8 graph (consumers/features/clip_openvino.py: the CPU extractor's default).
Printed: images/s, speed-up over the naive way, and the cosine of each runtime's vectors to
torch float32 on the same images (smallest and mean). Target: >= 50 images/s on 2 cores with
cosine >= 0.99.

The weights are open_clip's architecture with seeded random weights (nothing can be downloaded
here); quantisation error depends on the weights, so check the cosine again on real weights
(`--pretrained PATH`) before relying on an int8 runtime.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from consumers.features.clip_embed import ClipEmbedder
from consumers.features.clip_openvino import OpenVinoTower, export_onnx, quantise_static
from consumers.features.decode import decode_image
from lookalike.samples import distinct_jpegs

Embed = Callable[[NDArray[np.uint8]], NDArray[np.float32]]


def prepared_pixels(embedder: ClipEmbedder, count: int, seed: int) -> NDArray[np.uint8]:
    images = [decode_image(data) for data in distinct_jpegs(count, seed=seed)]
    return np.stack([embedder.prepare(img) for img in images])


def torch_runtime(embedder: ClipEmbedder) -> Embed:
    return embedder.embed_prepared


def onnx_runtime(path: Path, threads: int) -> Embed:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def embed(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        (vectors,) = session.run(["vectors"], {"pixels": pixels})
        return np.asarray(vectors, dtype=np.float32)

    return embed


def openvino_runtime(path: Path, threads: int, precision: str) -> Embed:
    return OpenVinoTower(path, threads, precision).embed


def quantise_dynamic(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)


def measure(embed: Embed, pixels: NDArray[np.uint8], batch: int) -> tuple[float, NDArray[Any]]:
    embed(pixels[:batch])  # warm-up: first-call allocations and kernel choices
    started = time.perf_counter()
    vectors = np.concatenate([embed(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
    return len(pixels) / (time.perf_counter() - started), vectors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256, help="measured images")
    parser.add_argument("--calibration", type=int, default=64, help="other images, for int8")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    fp32 = ClipEmbedder(args.model, args.pretrained, "cpu", quantize_cpu=False)
    int8 = ClipEmbedder(args.model, args.pretrained, "cpu", quantize_cpu=True)
    pixels = prepared_pixels(fp32, args.images, seed=1)
    calibration = prepared_pixels(fp32, args.calibration, seed=2)  # held out of the measure
    work = Path(tempfile.mkdtemp(prefix="cpu-runtime-"))
    exported = work / "clip.onnx"
    export_onnx(fp32.model.visual, fp32._mean, fp32._std, fp32.size, exported)
    quantise_dynamic(exported, work / "clip-int8-dynamic.onnx")
    quantise_static(exported, work / "clip-int8-static.onnx", calibration)

    naive_rate, reference = measure(torch_runtime(fp32), pixels[:32], 1)
    _, reference = measure(torch_runtime(fp32), pixels, args.batch)
    runs: list[tuple[str, int, Embed]] = [
        ("torch float32", args.batch, torch_runtime(fp32)),
        ("torch int8 (dynamic; the previous default)", args.batch, torch_runtime(int8)),
        ("ONNX Runtime float32", args.batch, onnx_runtime(exported, args.threads)),
        (
            "ONNX Runtime int8 (dynamic)",
            args.batch,
            onnx_runtime(work / "clip-int8-dynamic.onnx", args.threads),
        ),
        (
            "ONNX Runtime int8 (static QDQ, calibrated)",
            args.batch,
            onnx_runtime(work / "clip-int8-static.onnx", args.threads),
        ),
        ("OpenVINO float32", args.batch, openvino_runtime(exported, args.threads, "f32")),
        ("OpenVINO bfloat16", args.batch, openvino_runtime(exported, args.threads, "bf16")),
        (
            "OpenVINO int8 (the static QDQ graph; the default)",
            args.batch,
            openvino_runtime(work / "clip-int8-static.onnx", args.threads, "f32"),
        ),
    ]
    print(
        f"\nCLIP {args.model} image tower on {args.threads} CPU threads "
        f"({os.cpu_count()} CPUs), {len(pixels)} images, torch {torch.__version__}"
    )
    print("| runtime | batch | images/s | vs naive | cosine to torch float32 (min / mean) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| naive: torch float32, one image per call | 1 | {naive_rate:.1f} | 1.0x | 1 / 1 |")
    for name, batch, embed in runs:
        rate, vectors = measure(embed, pixels, batch)
        cosine = np.sum(vectors * reference, axis=1)
        print(
            f"| {name} | {batch} | {rate:.1f} | {rate / naive_rate:.1f}x "
            f"| {cosine.min():.4f} / {cosine.mean():.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

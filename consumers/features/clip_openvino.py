"""CLIP's image tower as an int8 OpenVINO graph: the fastest CPU runtime that keeps the vectors
(bench/cpu_runtime.py; numbers in BENCHMARKS.md).

How the graph is made, once per feature version, in this order:
  1. export the torch image tower, with the pixel normalisation and the L2 norm, to ONNX
     (uint8 NHWC pixels in, unit vectors out);
  2. quantise it statically (QDQ: int8 weights per channel, uint8 activations) with activation
     ranges calibrated on images the embedder was asked to describe;
  3. save it under the cache directory, named by the feature version; OpenVINO compiles it for
     this CPU. A later process loads the saved graph and skips 1-2.
The int8 vectors stay within cosine 0.999 of float32 (tests/test_clip_openvino.py), the bound
every CLIP precision keeps, so they share the feature version's index.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from numpy.typing import NDArray

log = structlog.get_logger(__name__)

CALIBRATION_IMAGES = 64  # images whose activations set the int8 ranges
_CALIBRATION_BATCH = 16


class _Normalised(torch.nn.Module):
    """uint8 NHWC pixels -> unit vectors: the image tower with its normalisation, one graph."""

    def __init__(self, visual: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.visual = visual
        self.mean = mean.float().cpu()  # constants of the exported graph
        self.std = std.float().cpu()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        features: torch.Tensor = self.visual((x - self.mean) / self.std)
        unit: torch.Tensor = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return unit


def export_onnx(
    visual: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, size: int, path: Path
) -> None:
    """The float32 image tower (not a quantised torch one) as an ONNX graph."""
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    torch.onnx.export(
        _Normalised(visual, mean, std).eval(),
        (example,),
        str(path),
        input_names=["pixels"],
        output_names=["vectors"],
        dynamic_axes={"pixels": {0: "n"}, "vectors": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def quantise_static(source: Path, target: Path, calibration: NDArray[np.uint8]) -> None:
    """QDQ int8 graph of `source`, activation ranges from the `calibration` pixels."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            parts = max(1, len(calibration) // _CALIBRATION_BATCH)
            self._batches = iter(np.array_split(calibration, parts))

        def get_next(self) -> dict[str, NDArray[np.uint8]] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"pixels": batch}

    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        Batches(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    prepared.unlink(missing_ok=True)


class OpenVinoTower:
    """A compiled graph (float32, or int8 from `quantise_static`): pixels -> unit vectors."""

    def __init__(self, path: Path, threads: int, precision: str = "f32") -> None:
        """`precision`: what the float parts compute in (f32, or bf16 where the CPU has it)."""
        import openvino as ov

        core = ov.Core()
        self._compiled = core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "INFERENCE_PRECISION_HINT": precision,
                "PERFORMANCE_HINT": "LATENCY",
            },
        )
        self._request: Any = self._compiled.create_infer_request()

    def embed(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, H, W, 3) uint8 -> (N, dim) unit vectors. One caller at a time."""
        return np.asarray(self._request.infer({0: pixels})[0], dtype=np.float32)


def int8_tower(
    visual: torch.nn.Module,
    mean: torch.Tensor,
    std: torch.Tensor,
    size: int,
    calibration: NDArray[np.uint8],
    cached: Path,
) -> OpenVinoTower:
    """Export, quantise with `calibration` and save to `cached` (a file), then compile."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("clip.int8_building", images=len(calibration), path=str(cached))
    with tempfile.TemporaryDirectory(dir=cached.parent) as work:
        exported = Path(work) / "float32.onnx"
        export_onnx(visual, mean, std, size, exported)
        quantised = Path(work) / "int8.onnx"
        quantise_static(exported, quantised, calibration)
        quantised.replace(cached)  # atomic: a crash leaves no half-written graph
    log.info("clip.int8_built", path=str(cached))
    return OpenVinoTower(cached, torch.get_num_threads())

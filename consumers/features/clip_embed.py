"""CLIP embeddings (open_clip): images and text in one space, L2-normalised float32.

Weights come from config: an open_clip pretrained tag (e.g. 'laion2b_s34b_b79k', loaded from
the local cache or the hub) or a local checkpoint path. With none, the architecture is built
with random weights, seeded so that every process (extractor and indexer) builds the same
model: right for tests and speed measurement, meaningless for semantic quality.

Throughput choices (numbers in BENCHMARKS.md):
- preprocessing is ours, not torchvision's: resize the shorter side to the model's input size
  and centre-crop with PIL on the (draft-decoded) image, hand the model uint8 pixels, and
  normalise on the device, in one batched operation;
- on CUDA the model runs in float16; on CPU its linear layers are int8 dynamically quantised
  (image tower; cosine 0.9998 to float32, measured) unless `quantize_cpu=False`;
- on CPU with `cpu_runtime="openvino"` the image tower becomes an int8 OpenVINO graph
  (clip_openvino.py) calibrated on the first `CALIBRATION_IMAGES` images it describes (torch
  int8 describes those), saved in `cache_dir` and loaded from there by later processes.
The version string names the index: model + weights + preprocessing, so vectors that are not
interchangeable never share an index. Numeric precision is not part of it: float16 on a GPU,
int8 or float32 on a CPU give vectors within cosine 0.999 of each other
(tests/test_clip_embed.py), so a GPU extractor feeds the index a CPU indexer serves and encodes
its queries with.
"""

from __future__ import annotations

import copy
import hashlib
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog
import torch
from numpy.typing import NDArray
from PIL import Image

from consumers.features.clip_openvino import CALIBRATION_IMAGES

if TYPE_CHECKING:
    from consumers.features.clip_openvino import OpenVinoTower
    from consumers.features.tensor_pixels import TensorPixels

log = structlog.get_logger(__name__)

NAME = "clip"
_SEED = 0


def pick_device(wanted: str) -> str:
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def weights_tag(pretrained: str | None) -> str:
    if not pretrained:
        return f"random-seed{_SEED}"
    path = Path(pretrained)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return f"ckpt-{digest.hexdigest()[:12]}"
    return pretrained


def prepare(img: Image.Image, size: int) -> NDArray[np.uint8]:
    """Shorter side to `size` (bicubic), centre crop: (size, size, 3) uint8. CPU, per image."""
    w, h = img.size
    scale = size / min(w, h)
    resized = img.convert("RGB").resize(
        (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    return np.asarray(crop, dtype=np.uint8)


class ClipEmbedder:
    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: str = "auto",
        *,
        quantize_cpu: bool = True,
        cpu_runtime: str = "torch",
        cache_dir: Path | None = None,
    ) -> None:
        """`cpu_runtime`: "torch", or "openvino" for the int8 OpenVINO image tower on a CPU
        (saved in `cache_dir`, or rebuilt by every process without one)."""
        import open_clip

        self.device = pick_device(device)
        torch.manual_seed(_SEED)
        model, _, _ = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained or None, device=self.device
        )
        model.eval()
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        self.size = int(cfg.get("size", (224, 224))[0])
        mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device)
        std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD), device=self.device)
        self._mean, self._std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.version = (
            f"clip-{model_name}-{weights_tag(pretrained)}-{self.size}px-shortest-bicubic-v2"
        )
        self._tower: OpenVinoTower | None = None
        self._tower_lock = threading.Lock()  # one inference or build at a time
        self._calibration: list[NDArray[np.uint8]] = []
        self._tower_file = cache_dir / f"{self.version}-int8.onnx" if cache_dir else None
        self._float_visual: torch.nn.Module | None = None  # for the export, until built
        self.tower_ready = threading.Event()  # set once the OpenVINO tower describes images
        if self.device == "cuda":
            self.dtype, precision = torch.float16, "fp16"
            model = model.to(dtype=self.dtype)
        elif cpu_runtime == "openvino" and self._tower_file and self._tower_file.is_file():
            from consumers.features.clip_openvino import OpenVinoTower

            self._tower = OpenVinoTower(self._tower_file, torch.get_num_threads())
            self.dtype, precision = torch.float32, "openvino-int8"
            self.tower_ready.set()
        elif cpu_runtime == "openvino":
            self._float_visual = copy.deepcopy(model.visual)
        if self.device == "cpu" and quantize_cpu and self._tower is None:
            self.dtype, precision = torch.float32, "int8dyn"
            # Image tower only: it does the bulk work, and the text tower's code reads
            # weight dtypes that quantised layers do not have.
            model.visual = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                model.visual, {torch.nn.Linear}, torch.qint8
            )
        elif self.device == "cpu" and self._tower is None:
            self.dtype, precision = torch.float32, "fp32"
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        with torch.inference_mode():
            self.dim = int(self.embed_text(["x"]).shape[1])
        self.precision = precision
        self._pixels: TensorPixels | None = None
        log.info(
            "clip.loaded",
            model=model_name,
            device=self.device,
            precision=precision,
            dim=self.dim,
            v=self.version,
        )

    def prepare(self, img: Image.Image) -> NDArray[np.uint8]:
        return prepare(img, self.size)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_prepared(np.stack([self.prepare(img) for img in images]))

    @torch.inference_mode()
    def embed_prepared(self, pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(N, H, W, 3) uint8 from `prepare` -> (N, dim) unit vectors."""
        if self._float_visual is not None or self._tower is not None:
            with self._tower_lock:
                if self._tower is not None:
                    return self._tower.embed(np.ascontiguousarray(pixels))
                self._calibrate(pixels)
        batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
        return self.embed_pixels(batch.permute(0, 3, 1, 2))

    def _calibrate(self, pixels: NDArray[np.uint8]) -> None:
        """Keep images for the int8 ranges; with enough, build the OpenVINO tower in a
        thread (torch goes on describing meanwhile) and switch to it when it is ready."""
        kept = sum(len(p) for p in self._calibration)
        if self._float_visual is None or kept >= CALIBRATION_IMAGES:
            return  # building already
        self._calibration.append(pixels[: CALIBRATION_IMAGES - kept].copy())
        if kept + len(self._calibration[-1]) >= CALIBRATION_IMAGES:
            threading.Thread(target=self._build_tower, name="clip-int8", daemon=True).start()

    def _build_tower(self) -> None:
        from consumers.features.clip_openvino import int8_tower

        assert self._float_visual is not None
        cached = self._tower_file or Path(tempfile.mkdtemp()) / f"{self.version}-int8.onnx"
        try:
            tower = int8_tower(
                self._float_visual,
                self._mean,
                self._std,
                self.size,
                np.concatenate(self._calibration),
                cached,
            )
        except Exception:
            log.exception("clip.int8_failed", hint="torch int8 goes on describing images")
            self._float_visual = None
            return
        with self._tower_lock:
            self._tower, self.precision = tower, "openvino-int8"
            self._float_visual, self._calibration = None, []
        self.tower_ready.set()

    @torch.inference_mode()
    def embed_pixels(self, pixels: torch.Tensor) -> NDArray[np.float32]:
        """(N, 3, H, W) uint8 on this embedder's device -> (N, dim) unit vectors."""
        x = pixels.to(torch.float32).div_(255.0)
        x = ((x - self._mean) / self._std).to(self.dtype)
        return _unit_rows(self.model.encode_image(x))

    @torch.inference_mode()
    def embed_encoded(
        self, datas: Sequence[bytes], max_pixels: int = 80_000_000
    ) -> list[NDArray[np.float32] | str]:
        """Encoded images (JPEG, PNG, ...) -> per image its unit vector or why it has none.

        JPEGs are decoded and resized on this embedder's device (tensor_pixels.py); this is
        the GPU extractor's path, where CPU decoding is what the model would wait on.
        """
        from consumers.features.tensor_pixels import TensorPixels

        if self._pixels is None:
            self._pixels = TensorPixels(self.size, self.device)
        self._pixels.max_pixels = max_pixels
        batch = self._pixels.prepare(datas)
        vectors = self.embed_pixels(batch.pixels) if batch.rows else None
        out: list[NDArray[np.float32] | str] = [
            batch.failures.get(i, "not decoded") for i in range(len(datas))
        ]
        for row, i in enumerate(batch.rows):
            assert vectors is not None
            out[i] = vectors[row]
        return out

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> NDArray[np.float32]:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return _unit_rows(self.model.encode_text(tokens))


def _unit_rows(features: torch.Tensor) -> NDArray[np.float32]:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out: NDArray[np.float32] = features.cpu().numpy().astype(np.float32, copy=False)
    return out

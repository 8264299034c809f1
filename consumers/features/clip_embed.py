"""CLIP embeddings (open_clip): images and text in one space, L2-normalised float32.

Weights come from config: an open_clip pretrained tag (e.g. 'laion2b_s34b_b79k', loaded from
the local cache or the hub) or a local checkpoint path. With none, the architecture is built
with random weights, seeded so that every process (extractor and indexer) builds the same
model: right for tests and speed measurement, meaningless for semantic quality.

The version string names the index: model + weights (tag or checkpoint hash) + preprocessing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import structlog
import torch
from numpy.typing import NDArray
from PIL import Image

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


class ClipEmbedder:
    def __init__(self, model_name: str, pretrained: str | None, device: str = "auto") -> None:
        import open_clip

        self.device = pick_device(device)
        torch.manual_seed(_SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained or None, device=self.device
        )
        model.eval()
        # Half precision on GPU doubles throughput; CPU kernels want float32.
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        model = model.to(dtype=self.dtype)
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", (224, 224))
        self.dim = int(model.text_projection.shape[1]) if hasattr(model, "text_projection") else 0
        if not self.dim:
            with torch.no_grad():
                self.dim = int(self.embed_text(["x"]).shape[1])
        self.version = (
            f"clip-{model_name}-{weights_tag(pretrained)}-{size[0]}px-"
            f"{cfg.get('resize_mode', 'shortest')}-{cfg.get('interpolation', 'bicubic')}-v1"
        )
        log.info("clip.loaded", model=model_name, device=self.device, dim=self.dim)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self.preprocess(img) for img in images])
        return self.embed_pixels(batch)

    @torch.inference_mode()
    def embed_pixels(self, batch: torch.Tensor) -> NDArray[np.float32]:
        """A preprocessed (N, 3, H, W) batch -> (N, dim) unit vectors."""
        features = self.model.encode_image(batch.to(self.device, dtype=self.dtype))
        return _unit_rows(features)

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> NDArray[np.float32]:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return _unit_rows(self.model.encode_text(tokens))


def _unit_rows(features: torch.Tensor) -> NDArray[np.float32]:
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out: NDArray[np.float32] = features.cpu().numpy().astype(np.float32, copy=False)
    return out

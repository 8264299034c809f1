"""A PCA projection that shrinks float vectors before they enter an ANN graph.

Searching a graph in fewer dimensions costs proportionally less per visited node; the exact
re-rank from the store of record (see `ann_index.FaissHnswIndex`) then restores exact
distances. The projection is orthonormal and applied to *centred* vectors, so Euclidean
distances in the projected space approximate the original ones (the discarded components only
add a nearly constant term). Inner products would not survive centring: embeddings such as
CLIP's share a large common direction, and `(q - mean) . (x - mean)` ranks differently from
`q . x`. That is why a reduced graph searches by L2 (for unit vectors, L2 order = cosine order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
from numpy.typing import NDArray


class PcaProjection:
    def __init__(self, mean: NDArray[np.float32], components: NDArray[np.float32]) -> None:
        """`components`: (dim, out_dim), orthonormal columns, largest variance first."""
        if components.ndim != 2 or mean.shape != (components.shape[0],):
            raise ValueError(f"mean {mean.shape} does not fit components {components.shape}")
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.variance_kept = 1.0

    @property
    def in_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, sample: NDArray[np.float32], out_dim: int) -> Self:
        """Principal axes of `sample` (rows are vectors); needs more rows than `out_dim`."""
        rows, dim = sample.shape
        if not 0 < out_dim <= dim:
            raise ValueError(f"cannot project {dim} dimensions to {out_dim}")
        if rows <= out_dim:
            raise ValueError(f"{rows} training vectors cannot fit {out_dim} components")
        data = sample.astype(np.float64)
        mean: NDArray[np.float64] = data.mean(axis=0)
        centred = data - mean
        covariance = centred.T @ centred / (rows - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
        order = np.argsort(eigenvalues)[::-1][:out_dim]
        projection = cls(mean.astype(np.float32), eigenvectors[:, order].astype(np.float32))
        total = float(np.clip(eigenvalues, 0.0, None).sum())
        kept = float(np.clip(eigenvalues[order], 0.0, None).sum())
        projection.variance_kept = kept / total if total > 0 else 1.0
        return projection

    def project(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        out = (vectors - self.mean) @ self.components
        return np.ascontiguousarray(out, dtype=np.float32)

    def restore(self, projected: NDArray[np.float32]) -> NDArray[np.float32]:
        """Back to the original space (loses what the projection dropped)."""
        out = projected @ self.components.T + self.mean
        return np.asarray(out, dtype=np.float32)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(
                f,
                mean=self.mean,
                components=self.components,
                variance_kept=np.float64(self.variance_kept),
            )

    @classmethod
    def load(cls, path: Path) -> Self:
        with np.load(path) as data:
            projection = cls(data["mean"], data["components"])
            projection.variance_kept = float(data["variance_kept"])
        return projection

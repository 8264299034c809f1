"""How many PCA dimensions a graph engine holds (faiss_graph.py): a fixed number, or the fewest
that keep a share of the variance of the vectors it is trained on.

Why chosen from the data: a fixed projection tuned on vectors whose signal lives in few
dimensions throws neighbours away on vectors that spread their variance wider, and no search
beam or re-rank depth can bring them back (BENCHMARKS.md, "CLIP recall"). Keeping a share of the
variance adapts; when that share needs most of the dimensions, projecting saves too little per
distance to pay for what it loses, and the graph holds the vectors themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

log = structlog.get_logger(__name__)

ROUND_TO = 16  # projection sizes are multiples of this (SIMD-friendly distance loops)


@dataclass(frozen=True, slots=True)
class Projection:
    """`dims`: a fixed projection size (None: no projection); `keep_variance`: choose the size
    at training instead, the fewest dimensions (rounded up to 16) that keep this share of the
    sample's variance, or none when that is more than `max_share` of the dimensions."""

    dims: int | None = None
    keep_variance: float | None = None
    max_share: float = 0.5

    def __post_init__(self) -> None:
        if self.keep_variance is not None and not 0 < self.keep_variance <= 1:
            raise ValueError(f"keep_variance must be in (0, 1], got {self.keep_variance}")

    @property
    def chosen_at_training(self) -> bool:
        return self.keep_variance is not None

    @property
    def name(self) -> str | int | None:
        """What a snapshot records: the fixed size, or the rule the size was chosen by."""
        if self.keep_variance is not None:
            return f"variance>={self.keep_variance}"
        return self.dims

    def size_for(self, sample: NDArray[np.float32]) -> int | None:
        """The projection size for vectors like `sample` (rows), None for no projection."""
        dim = sample.shape[1]
        if self.keep_variance is None:
            return self.dims
        share = variance_shares(sample)
        wanted = int(np.searchsorted(np.cumsum(share), self.keep_variance - 1e-9)) + 1
        size = min(dim, -(-wanted // ROUND_TO) * ROUND_TO)
        # A sample smaller than the projection cannot fit it: no projection then.
        chosen = size if size <= self.max_share * dim and size < len(sample) else None
        log.info(
            "index.projection_chosen",
            keep_variance=self.keep_variance,
            dims_needed=wanted,
            dims=f"{dim}->{chosen or dim}",
            vectors=len(sample),
        )
        return chosen


def variance_shares(sample: NDArray[np.float32]) -> NDArray[np.float64]:
    """Each principal component's share of the sample's variance, largest first (as many
    components as the sample has rows or dimensions, whichever is fewer)."""
    centred = np.asarray(sample, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    return shares_of(np.linalg.svd(centred, compute_uv=False) ** 2)


def shares_of(eigenvalues: NDArray[np.floating]) -> NDArray[np.float64]:
    variance = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    return variance / max(float(variance.sum()), 1e-30)

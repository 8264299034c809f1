"""The exact float engine agrees with numpy brute force, across scan chunks, gaps and
exclusions."""

from __future__ import annotations

import numpy as np
import pytest

from index_store.engines.exact_float import ExactFloatEngine
from index_store.metric import Metric


def brute_force(
    vectors: dict[str, np.ndarray], queries: list[np.ndarray], metric: Metric, k: int
) -> list[tuple[str, float]]:
    def distance(v: np.ndarray, q: np.ndarray) -> float:
        if metric is Metric.L1:
            return float(np.abs(v - q).sum())
        return float(1.0 - v @ q)

    dists = {i: min(distance(v, q) for q in queries) for i, v in vectors.items()}
    return sorted(dists.items(), key=lambda kv: (kv[1], kv[0]))[:k]


@pytest.mark.parametrize("metric", [Metric.L1, Metric.COSINE])
@pytest.mark.parametrize("scan_rows", [1 << 14, 100])  # 100: the search crosses many chunks
def test_search_matches_brute_force_after_removals(metric: Metric, scan_rows: int) -> None:
    rng = np.random.default_rng(3)
    engine = ExactFloatEngine(16, metric, scan_rows=scan_rows)
    vectors: dict[str, np.ndarray] = {}
    for i in range(2_000):
        v = rng.standard_normal(16).astype(np.float32)
        v /= np.linalg.norm(v)
        engine.upsert(f"img-{i:04d}", v.tobytes())
        vectors[f"img-{i:04d}"] = v
    for i in rng.choice(2_000, 300, replace=False):
        assert engine.remove(f"img-{i:04d}")
        del vectors[f"img-{i:04d}"]
    queries = [rng.standard_normal(16).astype(np.float32) for _ in range(2)]
    want = brute_force(vectors, queries, metric, 12)
    got = engine.search([q.tobytes() for q in queries], 12)
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [d for _, d in got] == pytest.approx([d for _, d in want], abs=1e-4)

    excluded = [i for i, _ in want[:3]]
    kept = {i: v for i, v in vectors.items() if i not in excluded}
    got = engine.search([q.tobytes() for q in queries], 12, exclude=excluded)
    assert [i for i, _ in got] == [i for i, _ in brute_force(kept, queries, metric, 12)]


def test_wrong_sizes_and_metrics_are_refused() -> None:
    with pytest.raises(ValueError):
        ExactFloatEngine(4, Metric.HAMMING)
    engine = ExactFloatEngine(4, Metric.L1)
    with pytest.raises(ValueError):
        engine.upsert("a", bytes(12))
    engine.upsert("a", bytes(16))
    with pytest.raises(ValueError):
        engine.search([bytes(12)], 1)

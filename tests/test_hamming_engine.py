"""The Hamming engine agrees with brute force through adds, replaces and deletes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_store.engines.hamming import HammingEngine


def brute_force(codes: dict[str, bytes], query: bytes, k: int) -> list[tuple[str, int]]:
    q = np.unpackbits(np.frombuffer(query, np.uint8))
    dists = {
        i: int((np.unpackbits(np.frombuffer(c, np.uint8)) != q).sum()) for i, c in codes.items()
    }
    return sorted(dists.items(), key=lambda kv: (kv[1], kv[0]))[:k]


def test_search_matches_brute_force_after_churn() -> None:
    rng = np.random.default_rng(7)
    engine = HammingEngine(72, capacity=4)
    truth: dict[str, bytes] = {}
    for step in range(600):
        image_id = f"img-{rng.integers(0, 200)}"
        if rng.random() < 0.25:
            assert engine.remove(image_id) == (image_id in truth)
            truth.pop(image_id, None)
        else:
            code = rng.integers(0, 256, 72, dtype=np.uint8).tobytes()
            engine.upsert(image_id, code)
            truth[image_id] = code
        if step % 50 == 0:
            query = rng.integers(0, 256, 72, dtype=np.uint8).tobytes()
            got = engine.search([query], 10)
            want = brute_force(truth, query, 10)
            assert [d for _, d in got] == [d for _, d in want]
            assert {i for i, _ in got} <= set(truth)
    assert len(engine) == len(truth)


def test_replace_moves_an_image_to_its_new_code() -> None:
    engine = HammingEngine(8)
    old, new = bytes(8), bytes([255] * 8)
    engine.upsert("a", old)
    engine.upsert("a", new)
    assert engine.search([new], 1) == [("a", 0)]
    assert engine.search([old], 1) == [("a", 64)]
    assert len(engine) == 1


def test_deleted_slots_are_reused() -> None:
    engine = HammingEngine(8, capacity=2)
    for i in range(2):
        engine.upsert(str(i), bytes(8))
    engine.remove("0")
    engine.upsert("2", bytes(8))
    assert engine.slots == 2  # no growth: the slot of "0" was taken again
    assert not engine.needs_compaction


def test_max_distance_and_exclude_filter_results() -> None:
    engine = HammingEngine(8)
    engine.upsert("near", bytes([1] + [0] * 7))
    engine.upsert("far", bytes([255] * 8))
    engine.upsert("self", bytes(8))
    assert engine.search([bytes(8)], 5, max_distance=3, exclude=["self"]) == [("near", 1)]


def test_best_of_several_queries_wins() -> None:
    engine = HammingEngine(8)
    engine.upsert("x", bytes([255] * 8))
    assert engine.search([bytes(8), bytes([255] * 8)], 1) == [("x", 0)]


def test_empty_engine_returns_nothing() -> None:
    assert HammingEngine(8).search([bytes(8)], 3) == []


def test_saved_rows_come_back_compacted(tmp_path: Path) -> None:
    engine = HammingEngine(8, codes_per_item=2)
    rng = np.random.default_rng(3)
    items = filled(engine, rng, 50)
    for i in range(0, 50, 3):
        engine.remove(f"img-{i:05d}")
        del items[f"img-{i:05d}"]
    engine.save(tmp_path)
    loaded = engine.restored(tmp_path)
    assert len(loaded) == loaded.slots == len(items)  # free slots are not saved
    assert loaded.snapshot_format == engine.snapshot_format
    for image_id, blob in items.items():
        assert loaded.vector_of(image_id) == blob
    query = [rng.integers(0, 256, 16, dtype=np.uint8).tobytes()]
    assert loaded.search(query, 10) == engine.search(query, 10)


def brute_force_multi(
    items: dict[str, bytes], queries: list[bytes], code_bytes: int, k: int
) -> list[tuple[str, float]]:
    """Distance of an item: the smallest over all (query code, item code) pairs."""

    def codes(blob: bytes) -> list[bytes]:
        return [blob[i : i + code_bytes] for i in range(0, len(blob), code_bytes)]

    def hamming(a: bytes, b: bytes) -> int:
        return (int.from_bytes(a) ^ int.from_bytes(b)).bit_count()

    query_codes = [c for q in queries for c in codes(q)]
    dists = {
        i: float(min(hamming(q, c) for q in query_codes for c in codes(blob)))
        for i, blob in items.items()
    }
    return sorted(dists.items(), key=lambda kv: (kv[1], kv[0]))[:k]


# A search scans rows a chunk at a time; a small chunk makes these tests cross many of them.
SCAN_ROWS = [1 << 18, 1000]


def filled(engine: HammingEngine, rng: np.random.Generator, count: int) -> dict[str, bytes]:
    """`count` random items upserted into `engine`, and the same items by id."""
    items: dict[str, bytes] = {}
    for i in range(count):
        blob = rng.integers(0, 256, engine.item_bytes, dtype=np.uint8).tobytes()
        engine.upsert(f"img-{i:05d}", blob)
        items[f"img-{i:05d}"] = blob
    return items


@pytest.mark.parametrize("scan_rows", SCAN_ROWS)
def test_several_codes_per_item_and_per_query_match_brute_force(scan_rows: int) -> None:
    rng = np.random.default_rng(5)
    engine = HammingEngine(8, codes_per_item=3, scan_rows=scan_rows)
    items = filled(engine, rng, 3_000)
    for _ in range(3):
        queries = [rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(2)]
        assert engine.search(queries, 15) == brute_force_multi(items, queries, 8, 15)
    stored = engine.vector_of("img-00042")
    assert stored is not None and engine.search([stored], 1) == [("img-00042", 0.0)]


@pytest.mark.parametrize("scan_rows", SCAN_ROWS)
def test_large_engine_with_gaps_and_exclusions_matches_brute_force_with_ties(
    scan_rows: int,
) -> None:
    # Short codes so that many rows tie at the k-th distance.
    rng = np.random.default_rng(11)
    engine = HammingEngine(8, capacity=16, scan_rows=scan_rows)
    truth = filled(engine, rng, 60_000)
    for i in rng.choice(60_000, 5_000, replace=False):
        assert engine.remove(f"img-{i:05d}")
        del truth[f"img-{i:05d}"]
    for _ in range(5):
        query = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        excluded = [i for i, _ in brute_force(truth, query, 3)]
        kept = {i: c for i, c in truth.items() if i not in excluded}
        got = engine.search([query], 25, exclude=excluded)
        assert got == [(i, float(d)) for i, d in brute_force(kept, query, 25)]
        limited = engine.search([query], 25, max_distance=got[4][1], exclude=excluded)
        assert limited == [(i, d) for i, d in got if d <= got[4][1]]

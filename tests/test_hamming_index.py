"""The Hamming index agrees with brute force through adds, replaces and deletes."""

from __future__ import annotations

import numpy as np
import pytest

from index_store.hamming_index import HammingIndex


def brute_force(codes: dict[str, bytes], query: bytes, k: int) -> list[tuple[str, int]]:
    q = np.unpackbits(np.frombuffer(query, np.uint8))
    dists = {
        i: int((np.unpackbits(np.frombuffer(c, np.uint8)) != q).sum()) for i, c in codes.items()
    }
    return sorted(dists.items(), key=lambda kv: (kv[1], kv[0]))[:k]


def test_search_matches_brute_force_after_churn() -> None:
    rng = np.random.default_rng(7)
    index = HammingIndex(72, capacity=4)
    truth: dict[str, bytes] = {}
    for step in range(600):
        image_id = f"img-{rng.integers(0, 200)}"
        if rng.random() < 0.25:
            assert index.remove(image_id) == (image_id in truth)
            truth.pop(image_id, None)
        else:
            code = rng.integers(0, 256, 72, dtype=np.uint8).tobytes()
            index.upsert(image_id, code)
            truth[image_id] = code
        if step % 50 == 0:
            query = rng.integers(0, 256, 72, dtype=np.uint8).tobytes()
            got = index.search([query], 10)
            want = brute_force(truth, query, 10)
            assert [d for _, d in got] == [d for _, d in want]
            assert {i for i, _ in got} <= set(truth)
    assert len(index) == len(truth)


def test_replace_moves_an_image_to_its_new_code() -> None:
    index = HammingIndex(8)
    old, new = bytes(8), bytes([255] * 8)
    index.upsert("a", old)
    index.upsert("a", new)
    assert index.search([new], 1) == [("a", 0)]
    assert index.search([old], 1) == [("a", 64)]
    assert len(index) == 1


def test_deleted_slots_are_reused() -> None:
    index = HammingIndex(8, capacity=2)
    for i in range(2):
        index.upsert(str(i), bytes(8))
    index.remove("0")
    index.upsert("2", bytes(8))
    assert index._used == 2  # no growth: slot of "0" was taken again


def test_max_distance_and_exclude_filter_results() -> None:
    index = HammingIndex(8)
    index.upsert("near", bytes([1] + [0] * 7))
    index.upsert("far", bytes([255] * 8))
    index.upsert("self", bytes(8))
    assert index.search([bytes(8)], 5, max_distance=3, exclude=["self"]) == [("near", 1)]


def test_best_of_several_queries_wins() -> None:
    index = HammingIndex(8)
    index.upsert("x", bytes([255] * 8))
    assert index.search([bytes(8), bytes([255] * 8)], 1) == [("x", 0)]


def test_empty_index_returns_nothing() -> None:
    assert HammingIndex(8).search([bytes(8)], 3) == []


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


def filled(index: HammingIndex, rng: np.random.Generator, count: int) -> dict[str, bytes]:
    """`count` random items upserted into `index`, and the same items by id."""
    items: dict[str, bytes] = {}
    for i in range(count):
        blob = rng.integers(0, 256, index.item_bytes, dtype=np.uint8).tobytes()
        index.upsert(f"img-{i:05d}", blob)
        items[f"img-{i:05d}"] = blob
    return items


@pytest.mark.parametrize("scan_rows", SCAN_ROWS)
def test_several_codes_per_item_and_per_query_match_brute_force(scan_rows: int) -> None:
    rng = np.random.default_rng(5)
    index = HammingIndex(8, codes_per_item=3)
    index._scan_rows = scan_rows
    items = filled(index, rng, 3_000)
    for _ in range(3):
        queries = [rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(2)]
        assert index.search(queries, 15) == brute_force_multi(items, queries, 8, 15)
    stored = index.code_of("img-00042")
    assert stored is not None and index.search([stored], 1) == [("img-00042", 0.0)]


@pytest.mark.parametrize("scan_rows", SCAN_ROWS)
def test_large_index_with_gaps_and_exclusions_matches_brute_force_with_ties(
    scan_rows: int,
) -> None:
    # Short codes so that many rows tie at the k-th distance.
    rng = np.random.default_rng(11)
    index = HammingIndex(8, capacity=16)
    index._scan_rows = scan_rows
    truth = filled(index, rng, 60_000)
    for i in rng.choice(60_000, 5_000, replace=False):
        assert index.remove(f"img-{i:05d}")
        del truth[f"img-{i:05d}"]
    for _ in range(5):
        query = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        excluded = [i for i, _ in brute_force(truth, query, 3)]
        kept = {i: c for i, c in truth.items() if i not in excluded}
        got = index.search([query], 25, exclude=excluded)
        assert got == [(i, float(d)) for i, d in brute_force(kept, query, 25)]
        limited = index.search([query], 25, max_distance=got[4][1], exclude=excluded)
        assert limited == [(i, d) for i, d in got if d <= got[4][1]]

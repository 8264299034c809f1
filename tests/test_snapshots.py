"""Checkpoints: a snapshot plus the store's later changes rebuild exactly the live index, and
a crash in the middle of writing a snapshot leaves the previous one in use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from index_store.engines.hamming import HammingEngine
from index_store.feature_index import FeatureIndex
from index_store.lmdb_store import Delete, FeatureStore, ImageRecord, Upsert
from index_store.snapshots import latest


def upsert(image_id: str, code: bytes) -> Upsert:
    return Upsert(image_id, code, ImageRecord(bucket="b", key=image_id, etag=code.hex()[:8]))


def codes(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(n)]


def open_index(tmp: Path) -> tuple[FeatureStore, FeatureIndex]:
    store = FeatureStore(tmp / "store")
    return store, FeatureIndex(store, "h", HammingEngine(8), snapshot_dir=tmp / "snapshots")


def test_snapshot_plus_later_changes_equals_the_live_index(tmp_path: Path) -> None:
    store, index = open_index(tmp_path)
    first = codes(50, 1)
    index.apply([upsert(f"i{n}", c) for n, c in enumerate(first)], {"t/0": 50})
    assert index.checkpoint()
    later = codes(10, 2)
    index.apply([upsert(f"i{n}", c) for n, c in enumerate(later)], {"t/0": 60})  # replace
    index.apply([Delete("i40"), Delete("i41"), upsert("new", later[0])], {"t/0": 63})
    query = codes(1, 3)
    expected = index.search(query, 20)
    store.close()

    store, again = open_index(tmp_path)
    assert again.load() == 50 - 2 + 1
    assert again.search(query, 20) == expected
    assert store.offsets() == {"t/0": 63}
    store.close()


def test_checkpoint_drops_the_change_log_it_covers(tmp_path: Path) -> None:
    store, index = open_index(tmp_path)
    index.apply([upsert(f"i{n}", c) for n, c in enumerate(codes(5, 1))], {"t/0": 5})
    assert store.changed_since("h", 0) == {f"i{n}" for n in range(5)}
    index.checkpoint()
    assert store.changed_since("h", 0) == set()
    assert not index.checkpoint()  # nothing new: no new snapshot


def test_half_written_snapshot_is_ignored(tmp_path: Path) -> None:
    store, index = open_index(tmp_path)
    index.apply([upsert(f"i{n}", c) for n, c in enumerate(codes(5, 1))], {"t/0": 5})
    index.checkpoint()
    good = latest(tmp_path / "snapshots")
    assert good is not None
    # A crash mid-checkpoint leaves a temporary directory and a snapshot without manifest.
    (tmp_path / "snapshots" / ".tmp-99-dead").mkdir()
    (tmp_path / "snapshots" / "000000000099").mkdir()
    (tmp_path / "snapshots" / "000000000099" / "codes.npy").write_bytes(b"garbage")
    assert latest(tmp_path / "snapshots") == good
    store.close()
    store, again = open_index(tmp_path)
    assert again.load() == 5
    again.apply([upsert("x", codes(1, 9)[0])], {"t/0": 6})
    again.checkpoint()  # and the leftovers are cleaned up by the next checkpoint
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert len(names) == 1 and names[0].isdigit()
    store.close()


def test_without_snapshot_the_whole_store_is_loaded(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    FeatureIndex(store, "h", HammingEngine(8)).apply(
        [upsert(f"i{n}", c) for n, c in enumerate(codes(7, 4))], {"t/0": 7}
    )
    again = FeatureIndex(store, "h", HammingEngine(8), snapshot_dir=tmp_path / "none")
    assert again.load() == 7
    store.close()


def test_rebuild_keeps_changes_applied_while_it_ran(tmp_path: Path) -> None:
    store, index = open_index(tmp_path)
    index.apply([upsert(f"i{n}", c) for n, c in enumerate(codes(30, 1))], {"t/0": 30})

    def vectors_then_a_concurrent_batch() -> Iterator[tuple[str, bytes]]:
        yield from store.vectors("h")
        # A batch lands while the fresh engine is being built.
        index.apply([Delete("i0"), upsert("late", codes(1, 5)[0])], {"t/0": 32})

    expected_ids = {f"i{n}" for n in range(1, 30)} | {"late"}
    assert index.rebuild(vectors_then_a_concurrent_batch()) == len(expected_ids)
    found = {n.image_id for n in index.search(codes(1, 6), 100)}
    assert found == expected_ids
    store.close()


# A writer that indexes batches and checkpoints after each one, until it is killed.
WRITER = """
import sys
from pathlib import Path
import numpy as np
from index_store.feature_index import FeatureIndex
from index_store.engines.hamming import HammingEngine
from index_store.lmdb_store import FeatureStore, ImageRecord, Upsert

root = Path(sys.argv[1])
store = FeatureStore(root / "store")
index = FeatureIndex(store, "h", HammingEngine(72), snapshot_dir=root / "snapshots" / "h")
index.load()
rng = np.random.default_rng(0)
done = store.offsets().get("t/0", 0)
while True:
    batch = [
        Upsert(f"i{done + n}", rng.integers(0, 256, 72, dtype=np.uint8).tobytes(),
               ImageRecord(bucket="b", key=str(done + n)))
        for n in range(3000)
    ]
    done += len(batch)
    index.apply(batch, {"t/0": done})
    index.checkpoint()
"""


def test_kill_9_during_checkpoints_loses_nothing(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    caught_mid_checkpoint = 0
    for _ in range(20):
        repo = Path(__file__).resolve().parent.parent
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=repo)
        deadline = time.monotonic() + 30
        snapshots = tmp_path / "snapshots" / "h"
        while time.monotonic() < deadline:  # wait until a snapshot is being written
            if snapshots.is_dir() and any(p.name.startswith(".tmp-") for p in snapshots.iterdir()):
                break
            time.sleep(0.001)
        writer.kill()
        writer.wait()
        if snapshots.is_dir() and any(p.name.startswith(".tmp-") for p in snapshots.iterdir()):
            caught_mid_checkpoint += 1
        if caught_mid_checkpoint >= 2:
            break
    assert caught_mid_checkpoint >= 2  # the kills really landed inside checkpoints

    store = FeatureStore(tmp_path / "store")
    index = FeatureIndex(store, "h", HammingEngine(72), snapshot_dir=tmp_path / "snapshots" / "h")
    indexed = store.offsets()["t/0"]
    assert index.load() == indexed == store.count("h")  # offsets match what is indexed
    for image_id, code in store.vectors("h"):
        assert index.vector_of(image_id) == code
    store.close()

"""Index snapshots on disk, written so that a crash at any moment leaves the previous one usable:
the one save protocol of every engine.

A snapshot is a directory `<seq>/` (seq = the store's change number it covers) holding the
engine's files and a MANIFEST.json written last. It is built under a temporary name, its files
fsynced, and renamed into place in one step; `latest` only trusts directories with a manifest,
so a half-written snapshot is never loaded, and the next checkpoint removes its leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.json"


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    path: Path
    manifest: dict[str, object]


def latest(directory: Path) -> Snapshot | None:
    if not directory.is_dir():
        return None
    complete = [p for p in directory.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()]
    if not complete:
        return None
    best = max(complete, key=lambda p: int(p.name))
    manifest = json.loads((best / MANIFEST).read_text())
    return Snapshot(int(best.name), best, manifest)


def write(
    directory: Path, seq: int, save: Callable[[Path], None], manifest: dict[str, object]
) -> Snapshot:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{seq}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save(tmp)
    doc = {**manifest, "seq": seq, "written_at": time.time()}
    (tmp / f"{MANIFEST}.part").write_text(json.dumps(doc))
    _fsync_all(tmp)
    os.replace(tmp / f"{MANIFEST}.part", tmp / MANIFEST)
    final = directory / f"{seq:012d}"
    if final.exists():
        # Same seq checkpointed again, e.g. by another engine after a configuration change
        # (the old snapshot is unusable to it). A directory cannot be replaced in one step: a
        # crash between these two renames leaves no snapshot, and the store rebuilds the index.
        os.replace(final, directory / f".old-{seq}-{uuid.uuid4().hex[:8]}")
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in directory.iterdir():  # earlier snapshots and leftovers of crashed ones
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return Snapshot(seq, final, doc)


def _fsync_all(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            _fsync_all(path)
        elif path.is_file():
            _fsync_file(path)
    _fsync_dir(directory)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new names, renames)."""
    try:
        _fsync_file(path)
    except OSError:  # some filesystems cannot fsync a directory
        pass

"""LMDB store of record: every indexed code/vector, its image's metadata, and the consumed
offsets, written together in one transaction per batch.

Because a batch's changes and the offsets they cover commit atomically, a restart (even
after kill -9) resumes exactly after the last applied message: nothing lost, nothing twice.
Named databases: `vec:<index>` (image_id -> raw bytes), `meta:<index>` (image_id -> JSON
ImageRecord), `offsets` ("topic/partition" -> next offset to read, as text), `log_identity`
(which broker log those offsets refer to: its cluster id), `seq` (index -> number of changes
ever applied) and `log:<index>` (change number -> image_id): the change log lets a restart
bring an index snapshot up to date by replaying only what came after it. `rej:<index>`
(image_id -> JSON eTag and reason) remembers object versions that cannot be indexed.

The store decides what a change does (`apply`): it compares each change with what it holds and
writes in the same transaction, and the in-memory engine mirrors only the changes that took
effect. Applying the same batch twice changes nothing, which makes at-least-once delivery safe.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lmdb
from pydantic import BaseModel, Field


class ImageRecord(BaseModel):
    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    indexed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Upsert:
    image_id: str
    vector: bytes
    record: ImageRecord


@dataclass(frozen=True, slots=True)
class Delete:
    image_id: str


@dataclass(frozen=True, slots=True)
class Reject:
    """The object at `etag` cannot be indexed: drop any older vector, remember why."""

    image_id: str
    etag: str | None
    reason: str


Change = Upsert | Delete | Reject


@dataclass(frozen=True, slots=True)
class Applied:
    """What `FeatureStore.apply` did: the index's change number after the batch, and the
    changes that took effect, in order."""

    seq: int
    changes: list[Change]


class FeatureStore:
    def __init__(self, path: Path, *, readonly: bool = False, map_size: int = 1 << 37) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._env = lmdb.open(
            str(path), map_size=map_size, max_dbs=64, readonly=readonly, lock=True
        )
        self._readonly = readonly
        self._dbs: dict[str, lmdb._Database] = {}

    def close(self) -> None:
        self._env.close()

    def _db(self, name: str) -> lmdb._Database:
        db = self._dbs.get(name)
        if db is None:
            db = self._env.open_db(name.encode(), create=not self._readonly)
            self._dbs[name] = db
        return db

    def apply(self, index: str, changes: Sequence[Change], offsets: dict[str, int]) -> Applied:
        """Write one batch and the offsets it covers, all or nothing. Only the last change per
        image counts (Kafka keeps per-key order), and only if it changes something: a replayed
        upsert (same eTag and vector), a replayed rejection or a delete of nothing is skipped.
        Returns the changes that took effect, which the in-memory engine mirrors."""
        vec, meta, offs = self._db(f"vec:{index}"), self._db(f"meta:{index}"), self._db("offsets")
        seqs, log, rejected = self._db("seq"), self._db(f"log:{index}"), self._db(f"rej:{index}")
        effective: list[Change] = []
        with self._env.begin(write=True) as txn:
            raw = txn.get(index.encode(), db=seqs)
            seq = int(raw) if raw is not None else 0
            for change in _last_per_image(changes):
                key = change.image_id.encode()
                if not self._takes_effect(txn, index, key, change):
                    continue
                if isinstance(change, Upsert):
                    txn.put(key, change.vector, db=vec)
                    txn.put(key, change.record.model_dump_json().encode(), db=meta)
                    txn.delete(key, db=rejected)
                else:
                    txn.delete(key, db=vec)
                    txn.delete(key, db=meta)
                    if isinstance(change, Reject):
                        entry = {"etag": change.etag, "reason": change.reason}
                        txn.put(key, json.dumps(entry).encode(), db=rejected)
                    else:
                        txn.delete(key, db=rejected)
                seq += 1
                txn.put(seq.to_bytes(8, "big"), key, db=log)
                effective.append(change)
            for name, offset in offsets.items():
                txn.put(name.encode(), str(offset).encode(), db=offs)
            txn.put(index.encode(), str(seq).encode(), db=seqs)
        return Applied(seq, effective)

    def _takes_effect(self, txn: lmdb.Transaction, index: str, key: bytes, change: Change) -> bool:
        """False for a replayed upsert (same eTag and vector), a replayed rejection (same
        eTag) and a delete of what is neither indexed nor rejected."""
        record = txn.get(key, db=self._db(f"meta:{index}"))
        if isinstance(change, Upsert):
            if record is None or json.loads(bytes(record))["etag"] != change.record.etag:
                return True
            return bool(txn.get(key, db=self._db(f"vec:{index}")) != change.vector)
        if record is not None:
            return True
        rejection = txn.get(key, db=self._db(f"rej:{index}"))
        if isinstance(change, Reject):
            return rejection is None or _rejected_etag(bytes(rejection)) != (change.etag or "")
        return rejection is not None

    def seq(self, index: str) -> int:
        with self._env.begin(db=self._db("seq")) as txn:
            raw = txn.get(index.encode())
        return int(raw) if raw is not None else 0

    def changed_since(self, index: str, seq: int) -> set[str]:
        """Image ids changed after change number `seq` (to bring a snapshot up to date)."""
        with self._env.begin(db=self._db(f"log:{index}")) as txn:
            cursor = txn.cursor()
            if not cursor.set_range((seq + 1).to_bytes(8, "big")):
                return set()
            return {bytes(v).decode() for _, v in cursor}

    def forget_changes(self, index: str, upto: int) -> None:
        """Drop change-log entries <= `upto` (a snapshot covers them)."""
        log = self._db(f"log:{index}")
        with self._env.begin(write=True, db=log) as txn:
            cursor = txn.cursor()
            while cursor.first() and int.from_bytes(cursor.key(), "big") <= upto:
                cursor.delete()

    def replace_index(self, index: str, source: FeatureStore, offsets: dict[str, int]) -> int:
        """Make `index` hold exactly what `source` holds of it (vectors, records, rejections),
        with the offsets that content covers, in one transaction; its change log is emptied
        (what it listed is replaced). Returns the images it holds now."""
        names = (f"vec:{index}", f"meta:{index}", f"rej:{index}")
        ours = [self._db(n) for n in names]
        theirs = [source._db(n) for n in names]
        log, offs = self._db(f"log:{index}"), self._db("offsets")
        with self._env.begin(write=True) as txn, source._env.begin(buffers=True) as read:
            for db, src in zip(ours, theirs, strict=True):
                txn.drop(db, delete=False)
                for key, value in read.cursor(db=src):
                    txn.put(bytes(key), bytes(value), db=db, append=True)  # keys come sorted
            txn.drop(log, delete=False)
            for name, offset in offsets.items():
                txn.put(name.encode(), str(offset).encode(), db=offs)
            return int(txn.stat(ours[0])["entries"])

    def offsets(self) -> dict[str, int]:
        with self._env.begin(db=self._db("offsets")) as txn:
            return {k.decode(): int(v) for k, v in txn.cursor()}

    def log_id(self) -> str | None:
        """Which log the stored offsets refer to (the broker's cluster id), if recorded."""
        with self._env.begin(db=self._db("log_identity")) as txn:
            raw = txn.get(b"cluster_id")
        return None if raw is None else bytes(raw).decode()

    def save_offsets(self, offsets: dict[str, int], log_id: str | None = None) -> None:
        """Offsets without changes (past a dead letter, or the start of a new log), and the
        log they refer to when it changed: one transaction, so the two never disagree."""
        offs, logs = self._db("offsets"), self._db("log_identity")
        with self._env.begin(write=True) as txn:
            for name, offset in offsets.items():
                txn.put(name.encode(), str(offset).encode(), db=offs)
            if log_id is not None:
                txn.put(b"cluster_id", log_id.encode(), db=logs)

    def vectors(self, index: str) -> Iterator[tuple[str, bytes]]:
        with self._env.begin(db=self._db(f"vec:{index}"), buffers=True) as txn:
            for k, v in txn.cursor():
                yield bytes(k).decode(), bytes(v)

    def vectors_of(self, index: str, image_ids: Sequence[str]) -> list[bytes | None]:
        """Vectors of `image_ids` (None where absent) read in one transaction: re-ranking
        fetches dozens per query, and a transaction per id costs more than the reads."""
        with self._env.begin(db=self._db(f"vec:{index}"), buffers=True) as txn:
            found = [txn.get(i.encode()) for i in image_ids]
            return [None if v is None else bytes(v) for v in found]

    def record(self, index: str, image_id: str) -> ImageRecord | None:
        return self.records_of(index, [image_id])[0]

    def records_of(self, index: str, image_ids: Sequence[str]) -> list[ImageRecord | None]:
        """Records of `image_ids` (None where absent) read in one transaction (search hits)."""
        with self._env.begin(db=self._db(f"meta:{index}")) as txn:
            found = [txn.get(i.encode()) for i in image_ids]
        return [None if raw is None else ImageRecord.model_validate_json(raw) for raw in found]

    def rejection(self, index: str, image_id: str) -> str | None:
        """The eTag at which `image_id` was rejected, if it was (and nothing came since)."""
        with self._env.begin(db=self._db(f"rej:{index}")) as txn:
            raw = txn.get(image_id.encode())
        return None if raw is None else _rejected_etag(raw)

    def rejections(self, index: str) -> Iterator[tuple[str, str | None]]:
        """(image id, eTag) of every rejected object version."""
        with self._env.begin(db=self._db(f"rej:{index}")) as txn:
            for k, v in txn.cursor():
                yield bytes(k).decode(), json.loads(bytes(v))["etag"]

    def records(self, index: str) -> Iterator[tuple[str, ImageRecord]]:
        with self._env.begin(db=self._db(f"meta:{index}")) as txn:
            for k, v in txn.cursor():
                yield k.decode(), ImageRecord.model_validate_json(v)

    def sample_ids(self, index: str, n: int, rng: random.Random) -> list[str]:
        """Up to `n` ids of the index drawn at random (one pass over its keys)."""
        total = self.count(index)
        wanted = set(rng.sample(range(total), min(n, total)))
        with self._env.begin(db=self._db(f"vec:{index}"), buffers=True) as txn:
            keys = txn.cursor().iternext(keys=True, values=False)
            return [bytes(k).decode() for i, k in enumerate(keys) if i in wanted]

    def count(self, index: str) -> int:
        db = self._db(f"vec:{index}")  # opened before the transaction that reads it
        with self._env.begin() as txn:
            return int(txn.stat(db)["entries"])


def _last_per_image(changes: Sequence[Change]) -> list[Change]:
    """Within one batch only the last change per image matters."""
    last: dict[str, Change] = {}
    for change in changes:
        last.pop(change.image_id, None)
        last[change.image_id] = change
    return list(last.values())


def _rejected_etag(raw: bytes) -> str:
    etag: str | None = json.loads(raw)["etag"]
    return etag or ""

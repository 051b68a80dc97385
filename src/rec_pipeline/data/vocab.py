"""Per-field vocabularies: raw feature id -> table row, built on the training split only.

Index 0 is padding and out-of-vocabulary. A field is either counted (ids seen at least
``min_count`` times in training, optionally the ``max_size`` most frequent) or hashed
(``1 + hash(raw id) mod buckets``) when its raw id space is too large to count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd

from rec_pipeline.data.hashing import splitmix64

VOCAB_COLUMNS = ["field", "raw_id", "count", "index"]


class IdCounter:
    """Streaming count of raw ids per field; memory grows with distinct ids, not rows.

    Counts arrive as (distinct ids, counts) pairs, from :meth:`add` or from partial counters of
    other processes (:meth:`merge`). A field's pairs wait until they hold as many entries as its
    merged count and are then merged in one sort, so merging one pair per shard costs about
    ``log(shards)`` sorts of the distinct ids, not one per shard.
    """

    def __init__(self) -> None:
        self._merged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, name: str, ids: np.ndarray) -> None:
        """Count the raw ids ``ids`` of field ``name``."""
        k, c = np.unique(np.asarray(ids, np.int64), return_counts=True)
        self.add_counts(name, k, c.astype(np.int64))

    def add_counts(self, name: str, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts`` of the distinct raw ids ``keys`` of field ``name``."""
        pending = self._pending.setdefault(name, [])
        pending.append((keys, counts))
        merged = self._merged.get(name, (np.empty(0, np.int64),))[0].size
        if sum(k.size for k, _ in pending) >= max(merged, 1 << 16):
            self._flush(name)

    def merge(self, other: IdCounter) -> None:
        """Add every count of ``other`` (another part of the same data)."""
        for name in other.names:
            self.add_counts(name, *other.field(name))

    @property
    def names(self) -> list[str]:
        return list(self._pending)

    def field(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct ids int64, their counts int64) of field ``name`` (empty if unseen)."""
        if name not in self._pending:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        self._flush(name)
        return self._merged[name]

    def _flush(self, name: str) -> None:
        parts = self._pending[name]
        if name in self._merged:
            parts = [self._merged[name], *parts]
        keys = np.concatenate([k for k, _ in parts]).astype(np.int64, copy=False)
        counts = np.concatenate([c for _, c in parts]).astype(np.int64, copy=False)
        if len(parts) > 1:
            keys, inverse = np.unique(keys, return_inverse=True)
            counts = np.bincount(inverse, weights=counts, minlength=keys.size).astype(np.int64)
        self._merged[name] = keys, counts
        self._pending[name] = []


def vocabulary_frame(
    counter: IdCounter,
    fields: Iterable[str],
    *,
    min_count: int,
    max_size: Mapping[str, int],
    hash_buckets: Mapping[str, int],
) -> pd.DataFrame:
    """Long table (field, raw_id, count, index); index 1.. by decreasing count, then raw id."""
    parts = []
    for name in fields:
        if name in hash_buckets:
            continue
        k, c = counter.field(name)
        keep = c >= min_count
        k, c = k[keep], c[keep]
        order = np.lexsort((k, -c))  # most frequent first, ties by raw id: deterministic
        if name in max_size:
            # Table rows include index 0, so a cap of N leaves N - 1 ids.
            order = order[: max(int(max_size[name]) - 1, 0)]
        k, c = k[order], c[order]
        parts.append(
            pd.DataFrame(
                {
                    "field": name,
                    "raw_id": k,
                    "count": c,
                    "index": np.arange(1, len(k) + 1, dtype=np.int32),
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(VOCAB_COLUMNS, ["str", "int64", "int64", "int32"], strict=True)
            }
        )
    return pd.concat(parts, ignore_index=True)


class Vocabulary:
    """Vectorised lookup of raw ids, from the vocabulary table and the hashing settings."""

    def __init__(self, frame: pd.DataFrame, hash_buckets: Mapping[str, int] | None = None):
        self.hash_buckets = dict(hash_buckets or {})
        self._keys: dict[str, np.ndarray] = {}
        self._index: dict[str, np.ndarray] = {}
        # A hash index per field: lookups are O(1) per id (several times faster than a binary
        # search over the sorted ids, and the encode stage is mostly lookups).
        self._table: dict[str, pd.Index] = {}
        for name, g in frame.groupby("field", sort=False):
            order = np.argsort(g["raw_id"].to_numpy(), kind="stable")
            self._keys[str(name)] = g["raw_id"].to_numpy(np.int64)[order]
            self._index[str(name)] = g["index"].to_numpy(np.int32)[order]
            self._table[str(name)] = pd.Index(self._keys[str(name)])
        digest = hashlib.sha256()
        for name in sorted(self._keys):
            digest.update(name.encode())
            digest.update(self._keys[name].tobytes())
            digest.update(self._index[name].tobytes())
        for name in sorted(self.hash_buckets):
            digest.update(f"{name}:hash:{self.hash_buckets[name]}".encode())
        self.fingerprint = digest.hexdigest()[:16]

    def size(self, name: str) -> int:
        """Table rows for the field, index 0 included."""
        if name in self.hash_buckets:
            return int(self.hash_buckets[name]) + 1
        return len(self._keys.get(name, ())) + 1

    def lookup(self, name: str, raw_ids: np.ndarray) -> np.ndarray:
        """int32 [N] table rows for int64 raw ids [N]; unknown ids map to 0."""
        raw_ids = np.asarray(raw_ids, dtype=np.int64)
        if name in self.hash_buckets:
            b = np.uint64(self.hash_buckets[name])
            return (splitmix64(raw_ids) % b + np.uint64(1)).astype(np.int32)
        table = self._table.get(name)
        if table is None or len(table) == 0:
            return np.zeros(len(raw_ids), np.int32)
        pos = table.get_indexer(raw_ids)  # -1 where the id is not in the vocabulary
        return np.where(pos >= 0, self._index[name][pos], 0).astype(np.int32)

"""Folders of Parquet shards: the columnar on-disk form of parsed and encoded data.

A :class:`ShardSet` is a lazy handle on a folder of ``part-NNNNN.parquet`` files. Reading is by
shard or by record batch, so no consumer needs the whole split in memory; the GPU loader reads the
columns it needs shard by shard and concatenates the numpy buffers.

Worker processes write their shards themselves (:func:`write_part`, into a staging folder) and
hand back only a :class:`PartFile`; a :class:`ShardWriter` then renames the file into its folder,
so the rows are written once and never travel between processes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
# zstd (pyarrow's default level): on the parsed and encoded shards its files are 12-25 % smaller
# than snappy's or lz4's for 7-11 % more write time; level 3 saves under 2.5 % more and writes
# slower (benchmarks/README.md, "Shard codec").
COMPRESSION = "zstd"


@dataclass(frozen=True)
class PartFile:
    """A shard already written to ``path`` (``rows`` rows), to be moved into a shard folder.

    ``path`` must be on the shard folder's filesystem: the move is a rename, never a copy.
    """

    path: Path
    rows: int


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The leaf columns that Parquet's dictionary encoding pays for: lists of raw ids (int64)
    and of weights (floats) repeat their values, and so do strings; encoded indices (int32),
    sample ids and draws hardly do, and encoding them by dictionary costs time for a larger
    file. A tenth of Ali-CCP's encoded shards: 11-17 % smaller and written 20-30 % faster than
    with every column by dictionary; its parsed shards 0-8 % smaller (benchmarks/README.md,
    "Shard codec")."""
    names = []
    for f in schema:
        if pa.types.is_list(f.type):
            value = f.type.value_type
            if pa.types.is_int64(value) or pa.types.is_floating(value):
                names.append(f"{f.name}.list.element")
        elif pa.types.is_string(f.type) or pa.types.is_binary(f.type):
            names.append(f.name)
    return names


def write_parquet(table: pa.Table, path: Path, compression: str = COMPRESSION) -> None:
    """One Parquet file of ``table``, dictionary-encoded where that pays (above)."""
    pq.write_table(
        table, path, compression=compression, use_dictionary=dictionary_columns(table.schema)
    )


def write_part(table: pa.Table, path: Path, compression: str = COMPRESSION) -> PartFile:
    """Write ``table`` as one Parquet file at ``path`` (in a staging folder) and describe it."""
    write_parquet(table, path, compression)
    return PartFile(Path(path), table.num_rows)


def staging_folder(parent: Path, prefix: str) -> Path:
    """A fresh folder under ``parent`` for the part files of one pass (removed by the caller).

    Folders an earlier, killed pass left there are removed first: one run at a time uses a data
    folder (the run lock), so nothing else is writing under ``parent``.
    """
    parent = Path(parent)
    for old in parent.glob(f"{prefix}*"):
        shutil.rmtree(old, ignore_errors=True)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


@dataclass(frozen=True)
class ShardSet:
    """Read-only view of a shard folder."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def files(self) -> list[Path]:
        manifest = self.path / MANIFEST
        if manifest.exists():
            names = json.loads(manifest.read_text())["parts"]
            return [self.path / n["file"] for n in names]
        return sorted(self.path.glob("part-*.parquet"))

    @property
    def num_rows(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    @property
    def schema(self) -> pa.Schema:
        files = self.files
        if not files:
            raise FileNotFoundError(f"no shards in {self.path}")
        return pq.read_schema(files[0])

    def iter_tables(self, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """One table per shard (a shard is at most one writer chunk)."""
        for f in self.files:
            yield pq.read_table(f, columns=list(columns) if columns else None)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole set as one table: only for small sets or few columns."""
        tables = list(self.iter_tables(columns))
        if not tables:
            return self.schema.empty_table() if columns is None else pa.table({})
        return pa.concat_tables(tables)

    def __len__(self) -> int:
        return self.num_rows


class ShardWriter:
    """Writes tables, or moves :class:`PartFile` s, as numbered shards; ``reset`` clears an
    earlier run's shards first.

    Each shard appears whole (written under a temporary name, or renamed from its staging
    folder) before the manifest lists it, so a failed write leaves the folder as it was.
    """

    def __init__(self, path: Path, compression: str = COMPRESSION):
        self.path = Path(path)
        self.compression = compression
        self._parts: list[dict] = []

    def reset(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for f in self.path.glob("part-*.parquet"):
            f.unlink()
        (self.path / MANIFEST).unlink(missing_ok=True)
        self._parts = []
        self._write_manifest()

    def write(self, item: pa.Table | PartFile) -> None:
        rows = item.rows if isinstance(item, PartFile) else item.num_rows
        if rows == 0 and self._parts:
            # Empty chunks carry nothing; the first one still fixes the schema.
            if isinstance(item, PartFile):
                item.path.unlink()
            return
        name = f"part-{len(self._parts):05d}.parquet"
        if isinstance(item, PartFile):
            self._move_in(item, name)
        else:
            tmp = self.path / f".{name}.tmp"
            write_parquet(item, tmp, self.compression)
            os.replace(tmp, self.path / name)
        self._parts.append({"file": name, "rows": rows})
        self._write_manifest()

    def _move_in(self, part: PartFile, name: str) -> None:
        if part.path.stat().st_dev != self.path.stat().st_dev:
            raise OSError(
                f"part file {part.path} is not on the filesystem of {self.path}: "
                "staging folders must sit next to the shard folders (a rename, not a copy)"
            )
        os.replace(part.path, self.path / name)

    def _write_manifest(self) -> None:
        # Rewritten after every part, so its cost grows with the parts written: compact JSON
        # (the C encoder) is ~4x cheaper than indented (the pure-Python one), which matters at
        # a thousand parts a folder.
        tmp = self.path / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps({"parts": self._parts}, separators=(",", ":")))
        os.replace(tmp, self.path / MANIFEST)

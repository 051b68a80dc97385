"""Folders of Parquet shards: the columnar on-disk form of parsed and encoded data.

A :class:`ShardSet` is a lazy handle on a folder of ``part-NNNNN.parquet`` files. Reading is by
shard or by record batch, so no consumer needs the whole split in memory; the GPU loader reads the
columns it needs shard by shard and concatenates the numpy buffers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"


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
    """Writes tables as numbered shards; ``reset`` clears an earlier run's shards first."""

    def __init__(self, path: Path, compression: str = "zstd"):
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

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0 and self._parts:
            return  # empty chunks carry nothing; the first one still fixes the schema
        name = f"part-{len(self._parts):05d}.parquet"
        tmp = self.path / f".{name}.tmp"
        pq.write_table(table, tmp, compression=self.compression)
        os.replace(tmp, self.path / name)
        self._parts.append({"file": name, "rows": table.num_rows})
        self._write_manifest()

    def _write_manifest(self) -> None:
        tmp = self.path / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps({"parts": self._parts}, indent=1))
        os.replace(tmp, self.path / MANIFEST)

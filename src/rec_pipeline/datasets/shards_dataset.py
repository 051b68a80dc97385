"""A folder of Parquet shards, written one chunk per save by generator nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from kedro.io import AbstractDataset, DatasetError

from rec_pipeline.data.shards import ShardSet, ShardWriter


class ParquetShardsDataset(AbstractDataset[pa.Table, ShardSet]):
    """Saves ``pyarrow.Table`` chunks as ``part-NNNNN.parquet``; loads a lazy :class:`ShardSet`.

    A generator node yields one chunk at a time and Kedro saves each: the first save of a run
    clears the folder's earlier shards, later saves append. Memory stays at one chunk.

    Example catalog entry::

        encoded_train:
          type: rec_pipeline.datasets.ParquetShardsDataset
          path: data/05_model_input/encoded/train
    """

    def __init__(self, *, path: str, compression: str = "zstd", metadata: dict | None = None):
        self._path = Path(path)
        self._writer = ShardWriter(self._path, compression=compression)
        self._started = False
        self.metadata = metadata

    def load(self) -> ShardSet:
        if not self._exists():
            raise DatasetError(f"no shards at {self._path}: run the pipeline that writes them")
        return ShardSet(self._path)

    def save(self, data: pa.Table) -> None:
        if not isinstance(data, pa.Table):
            raise DatasetError(f"{type(self).__name__} saves pyarrow Tables, got {type(data)}")
        if not self._started:
            self._writer.reset()
            self._started = True
        self._writer.write(data)

    def _exists(self) -> bool:
        return self._path.is_dir() and any(self._path.glob("part-*.parquet"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

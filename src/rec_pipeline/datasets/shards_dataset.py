"""A folder of Parquet shards, written one chunk per save by generator nodes, and the staging
folder where worker processes write shards before a shard dataset moves them in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from kedro.io import AbstractDataset, DatasetError

from rec_pipeline.data.shards import PartFile, ShardSet, ShardWriter


class ParquetShardsDataset(AbstractDataset[pa.Table | PartFile, ShardSet]):
    """Saves chunks as ``part-NNNNN.parquet``; loads a lazy :class:`ShardSet`.

    A generator node yields one chunk at a time and Kedro saves each: the first save of a run
    clears the folder's earlier shards, later saves append. Memory stays at one chunk. A chunk
    is a ``pyarrow.Table``, written here, or a :class:`PartFile` a worker process already wrote
    (into the ``shard_staging`` folder, on this folder's filesystem), renamed into the folder:
    its rows are never read or written again. Either way a shard appears whole before the
    manifest lists it.

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

    def save(self, data: pa.Table | PartFile) -> None:
        if not isinstance(data, pa.Table | PartFile):
            raise DatasetError(
                f"{type(self).__name__} saves pyarrow Tables or PartFiles, got {type(data)}"
            )
        if not self._started:
            self._writer.reset()
            self._started = True
        self._writer.write(data)

    def _exists(self) -> bool:
        return self._path.is_dir() and any(self._path.glob("part-*.parquet"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class StagingFolderDataset(AbstractDataset[None, Path]):
    """Loads the folder where worker processes write part files for the shard datasets.

    Nodes that parse or encode in several processes take it as an input and make a fresh
    sub-folder per pass (removed when the pass ends). Keep it on the shard folders' filesystem:
    a part file is moved into its shard folder by a rename. It is never saved.
    """

    def __init__(self, *, path: str, metadata: dict | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        self._path.mkdir(parents=True, exist_ok=True)
        return self._path

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is a folder for node inputs; it is not saved")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

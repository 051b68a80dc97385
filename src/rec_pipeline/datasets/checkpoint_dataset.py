"""Versioned model checkpoints: weights, the typed config and the data metadata, in one file."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractVersionedDataset, Version

from rec_pipeline.atomic_io import load_torch, save_torch
from rec_pipeline.train.checkpoint import Checkpoint


class TorchCheckpointDataset(AbstractVersionedDataset[dict | Checkpoint, dict]):
    """A ``torch.save`` dict of tensors and plain Python values (:meth:`Checkpoint.to_dict`).

    Loading uses ``weights_only=True``: a checkpoint holds no pickled code, so it can be loaded
    without the training code's state and from an untrusted folder. A truncated or corrupted
    file is an error naming it. Saving is atomic: a kill during a save leaves no partial file.
    """

    def __init__(
        self, *, filepath: str, version: Version | None = None, metadata: dict | None = None
    ):
        fs = fsspec.filesystem("file")
        super().__init__(
            filepath=PurePosixPath(filepath),
            version=version,
            exists_function=fs.exists,
            glob_function=fs.glob,
        )
        self.metadata = metadata

    def load(self) -> dict:
        return load_torch(str(self._get_load_path()))

    def save(self, data: dict | Checkpoint) -> None:
        if isinstance(data, Checkpoint):
            data = data.to_dict()
        save_torch(data, Path(str(self._get_save_path())))

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).exists()
        except Exception:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

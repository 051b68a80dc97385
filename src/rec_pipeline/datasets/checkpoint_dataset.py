"""Versioned model checkpoints: weights, the typed config and the data metadata, in one file."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io import AbstractVersionedDataset, Version


class TorchCheckpointDataset(AbstractVersionedDataset[dict, dict]):
    """A ``torch.save`` dict of tensors and plain Python values.

    Loading uses ``weights_only=True``: a checkpoint holds no pickled code, so it can be loaded
    without the training code's state and from an untrusted folder.
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
        return torch.load(str(self._get_load_path()), map_location="cpu", weights_only=True)

    def save(self, data: dict) -> None:
        path = Path(str(self._get_save_path()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(data, tmp)
        tmp.replace(path)

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).exists()
        except Exception:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

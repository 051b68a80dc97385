"""Periodic training states of the current run: a folder of atomically written checkpoints."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset

from rec_pipeline.train.state_store import TrainingStateStore


class TrainingStateDataset(AbstractDataset[None, TrainingStateStore]):
    """Loads a :class:`TrainingStateStore` handle on ``path`` (``latest()``, ``save()``); the
    training node hands it to the trainer, which saves a state every
    ``runtime.checkpoint_every`` steps.

    Example catalog entry::

        training_state:
          type: rec_pipeline.datasets.TrainingStateDataset
          path: data/06_models/training_state
    """

    def __init__(self, *, path: str, keep: int = 2, metadata: dict | None = None):
        self._store = TrainingStateStore(path, keep)
        self.metadata = metadata

    def load(self) -> TrainingStateStore:
        return self._store

    def save(self, data: None) -> None:
        raise NotImplementedError("TrainingStateDataset is written through its store's save()")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._store.path), "keep": self._store.keep}

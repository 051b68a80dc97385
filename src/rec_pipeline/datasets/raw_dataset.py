"""The raw Ali-CCP folder as a catalog dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from rec_pipeline.data.raw import ExistingFiles, RawFiles, SyntheticSource


class RawAliCCPDataset(AbstractDataset[ExistingFiles | SyntheticSource, RawFiles]):
    """Loads :class:`RawFiles` (paths of the four files); saving materialises a source.

    Saving a ``SyntheticSource`` writes planted-truth files unless identical ones are already
    there, and refuses to touch files it did not write; saving ``ExistingFiles`` only checks that
    the user's four files are present.
    """

    def __init__(self, *, path: str, metadata: dict | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> RawFiles:
        return RawFiles(self._path).check()

    def save(self, data: ExistingFiles | SyntheticSource) -> None:
        data.materialize(self._path)

    def _exists(self) -> bool:
        try:
            RawFiles(self._path).check()
        except Exception:
            return False
        return True

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}

"""A read-only view of every saved version of a versioned JSON dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset


class JSONVersionsDataset(AbstractDataset[None, list]):
    """Loads ``[{"version": str, "data": dict}, ...]``, oldest first, for a versioned JSON path.

    Kedro stores version ``v`` of ``path/name.json`` at ``path/name.json/v/name.json``; the
    report uses this to compare a run with the one before it.
    """

    def __init__(self, *, filepath: str, metadata: dict | None = None):
        self._filepath = Path(filepath)
        self.metadata = metadata

    def load(self) -> list[dict[str, Any]]:
        if not self._filepath.is_dir():
            return []
        out = []
        for vdir in sorted(p for p in self._filepath.iterdir() if p.is_dir()):
            f = vdir / self._filepath.name
            if f.is_file():
                out.append({"version": vdir.name, "data": json.loads(f.read_text())})
        return out

    def save(self, data: None) -> None:
        raise NotImplementedError("JSONVersionsDataset is read-only")

    def _exists(self) -> bool:
        return self._filepath.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

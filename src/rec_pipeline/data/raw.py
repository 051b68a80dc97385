"""The raw Ali-CCP folder: its four files, where they come from, and the no-overwrite rule.

A raw folder may hold a user's real data, so nothing here ever overwrites a file it did not write:
the synthetic generator leaves a marker (``_synthetic.json``) with its config fingerprint, and a
folder is regenerated only when every file in it is the generator's own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rec_pipeline.data import synthetic
from rec_pipeline.data.aliccp import SPLIT_FILES

log = logging.getLogger(__name__)


# The planted truth of synthetic data: each impression's true click and conversion probabilities.
TRUTH_COLUMNS = {"sample_id": "int64", "p_ctr": "float64", "p_cvr": "float64"}


class RawDataError(RuntimeError):
    """The raw folder is missing files or holds files this project must not overwrite."""


@dataclass(frozen=True)
class RawFiles:
    """The four raw files of a folder, plus the planted truth when the data is synthetic."""

    folder: Path

    def skeleton(self, split: str) -> Path:
        return self.folder / SPLIT_FILES[split][0]

    def common(self, split: str) -> Path:
        return self.folder / SPLIT_FILES[split][1]

    def truth(self, split: str) -> Path | None:
        path = self.folder / f"truth_{split}.parquet"
        return path if path.exists() and self.is_synthetic else None

    def planted_truth(self, split: str) -> pd.DataFrame:
        """True (sample_id, p_ctr, p_cvr) of the ``split`` raw file (train or test); no rows
        when the folder holds real data."""
        path = self.truth(split)
        if path is None:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TRUTH_COLUMNS.items()})
        return pd.read_parquet(path, columns=list(TRUTH_COLUMNS))

    @property
    def is_synthetic(self) -> bool:
        return (self.folder / synthetic.MARKER_NAME).exists()

    def check(self) -> RawFiles:
        missing = [
            str(self.folder / name)
            for names in SPLIT_FILES.values()
            for name in names
            if not (self.folder / name).is_file()
        ]
        if missing:
            raise RawDataError(
                "raw Ali-CCP files not found: " + ", ".join(missing) + ". Point the catalog entry "
                "'raw_aliccp' at the folder holding sample_skeleton_{train,test}.csv and "
                "common_features_{train,test}.csv (see README: real data)."
            )
        return self


@dataclass(frozen=True)
class ExistingFiles:
    """Source for a folder the user filled: nothing is written, the files are only checked."""

    def materialize(self, folder: Path) -> bool:
        """Checks the folder; never writes (returns False)."""
        RawFiles(Path(folder)).check()
        return False


@dataclass(frozen=True)
class SyntheticSource:
    """Source that writes planted-truth data, unless identical files are already there."""

    config: synthetic.SyntheticConfig

    def materialize(self, folder: Path) -> bool:
        """Writes the world into ``folder`` unless it is there already; True when it wrote."""
        folder = Path(folder)
        marker = folder / synthetic.MARKER_NAME
        ours = set(synthetic.RAW_FILE_NAMES) | set(synthetic.TRUTH_FILE_NAMES)
        present = [n for n in ours if (folder / n).exists()]
        if marker.exists():
            written = json.loads(marker.read_text())
            if written.get("fingerprint") == self.config.fingerprint() and len(present) == len(
                ours
            ):
                log.info("Synthetic data in %s is up to date; not regenerating.", folder)
                return False
        elif any((folder / n).exists() for n in synthetic.RAW_FILE_NAMES):
            raise RawDataError(
                f"{folder} already holds Ali-CCP files that the synthetic generator did not write "
                f"(no {synthetic.MARKER_NAME}); refusing to overwrite them. Run with "
                "data.source: files to use them, or point 'raw_aliccp' at another folder."
            )
        folder.mkdir(parents=True, exist_ok=True)
        summary = synthetic.write_synthetic(folder, self.config)
        log.info("Wrote synthetic Ali-CCP data to %s: %s", folder, summary)
        return True

"""Where the raw data comes from: the planted-truth generator, or the user's own files."""

from __future__ import annotations

from typing import Any

from rec_pipeline.config import load_section
from rec_pipeline.data.raw import ExistingFiles, SyntheticSource


def prepare_raw_data(source: str, synthetic: dict[str, Any]) -> ExistingFiles | SyntheticSource:
    """The source the raw dataset materialises: synthetic data, or a check of real files."""
    if source == "files":
        return ExistingFiles()
    return SyntheticSource(load_section("synthetic", synthetic).build())

"""kedro-datasets types whose saves are atomic: a kill during a save keeps the previous file.

Each class is its kedro-datasets parent with the local filesystem wrapped by
:class:`AtomicLocalFileSystem`; loading, versioning and arguments are the parent's.
"""

from __future__ import annotations

from typing import Any

from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import ParquetDataset
from kedro_datasets.text import TextDataset

from rec_pipeline.atomic_io import AtomicLocalFileSystem


def _make_atomic(dataset: Any) -> None:
    if dataset._protocol == "file":
        dataset._fs = AtomicLocalFileSystem(dataset._fs)


class AtomicJSONDataset(JSONDataset):
    """``json.JSONDataset`` with atomic saves."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        _make_atomic(self)


class AtomicTextDataset(TextDataset):
    """``text.TextDataset`` with atomic saves."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        _make_atomic(self)


class AtomicParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` with atomic saves."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        _make_atomic(self)


class AtomicMatplotlibDataset(MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` with atomic saves (each figure file on its own)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        _make_atomic(self)

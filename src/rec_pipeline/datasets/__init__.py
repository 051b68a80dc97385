"""Kedro catalog datasets for the project's artefacts (the only Kedro-aware data code)."""

from rec_pipeline.datasets.atomic_datasets import (
    AtomicJSONDataset,
    AtomicMatplotlibDataset,
    AtomicParquetDataset,
    AtomicTextDataset,
)
from rec_pipeline.datasets.checkpoint_dataset import TorchCheckpointDataset
from rec_pipeline.datasets.raw_dataset import RawAliCCPDataset
from rec_pipeline.datasets.shards_dataset import ParquetShardsDataset, StagingFolderDataset
from rec_pipeline.datasets.training_state_dataset import TrainingStateDataset
from rec_pipeline.datasets.versions_dataset import JSONVersionsDataset
from rec_pipeline.train.state_store import TrainingStateStore

__all__ = [
    "AtomicJSONDataset",
    "AtomicMatplotlibDataset",
    "AtomicParquetDataset",
    "AtomicTextDataset",
    "JSONVersionsDataset",
    "ParquetShardsDataset",
    "RawAliCCPDataset",
    "StagingFolderDataset",
    "TorchCheckpointDataset",
    "TrainingStateDataset",
    "TrainingStateStore",
]

"""Atomic saves keep the previous file on a failed write; checkpoints fail clearly when broken."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from kedro.io import DatasetError  # noqa: E402

from rec_pipeline.atomic_io import CorruptCheckpointError, atomic_open  # noqa: E402
from rec_pipeline.datasets import (  # noqa: E402
    AtomicJSONDataset,
    AtomicMatplotlibDataset,
    AtomicParquetDataset,
    AtomicTextDataset,
    TorchCheckpointDataset,
    TrainingStateStore,
)
from rec_pipeline.train.checkpoint import Checkpoint, Snapshot  # noqa: E402


def _figure(value: float):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, value])
    return fig


# (dataset factory, two payloads, how to compare a load with a payload)
CASES = {
    "json": (
        lambda p: AtomicJSONDataset(filepath=str(p / "m.json")),
        ({"auc": 0.7}, {"auc": 0.8}),
        lambda loaded, data: loaded == data,
    ),
    "text": (
        lambda p: AtomicTextDataset(filepath=str(p / "r.html")),
        ("<p>one</p>", "<p>two</p>"),
        lambda loaded, data: loaded == data,
    ),
    "parquet": (
        lambda p: AtomicParquetDataset(filepath=str(p / "h.parquet")),
        (pd.DataFrame({"step": [1, 2]}), pd.DataFrame({"step": [3, 4, 5]})),
        lambda loaded, data: loaded.equals(data),
    ),
    "matplotlib": (
        lambda p: AtomicMatplotlibDataset(filepath=str(p / "f.png")),
        (1.0, 2.0),
        None,
    ),
}


class Killed(BaseException):
    """Stands for the process dying in the middle of a write."""


@pytest.mark.parametrize("kind", CASES)
def test_a_save_that_dies_midway_keeps_the_previous_version(tmp_path, monkeypatch, kind):
    make, (first, second), same = CASES[kind]
    ds = make(tmp_path)
    as_saved = (lambda v: _figure(v)) if kind == "matplotlib" else (lambda v: v)
    ds.save(as_saved(first))
    target = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    before = target.read_bytes()

    def die(fd):
        raise Killed

    monkeypatch.setattr(os, "fsync", die)
    with pytest.raises((Killed, DatasetError)):
        ds.save(as_saved(second))
    monkeypatch.undo()
    assert target.read_bytes() == before  # not truncated, not half-written
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temporary file left
    if same is not None:
        assert same(ds.load(), first)
    ds.save(as_saved(second))
    assert target.read_bytes() != before
    if same is not None:
        assert same(ds.load(), second)


def test_atomic_open_replaces_only_on_success(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write(b"new but")
        raise RuntimeError("write failed")
    assert path.read_bytes() == b"old"
    with atomic_open(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["a.bin"]


def _checkpoint(step: int) -> Checkpoint:
    return Checkpoint(
        config={},
        metadata={"vocab_fingerprint": "x"},
        model_meta={},
        parameter_counts={},
        best=Snapshot(step=step, state_dict={"w": torch.full((3,), float(step))}),
    )


def test_checkpoint_dataset_saves_a_checkpoint_and_names_a_broken_file(tmp_path):
    ds = TorchCheckpointDataset(filepath=str(tmp_path / "model.pt"))
    ds.save(_checkpoint(7))
    loaded = Checkpoint.from_dict(ds.load())  # weights_only=True inside
    assert torch.equal(loaded.best.state_dict["w"], torch.full((3,), 7.0))
    path = tmp_path / "model.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as by a crash without atomic saves
    with pytest.raises(DatasetError, match=f"checkpoint file {path} cannot be read"):
        ds.load()
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DatasetError, match="truncated or corrupted"):
        ds.load()


def test_state_store_keeps_the_newest_two_and_reports_a_corrupt_one(tmp_path):
    store = TrainingStateStore(tmp_path / "states", keep=2)
    assert store.latest() is None
    for step in (10, 20, 30):
        ckpt = _checkpoint(step)
        ckpt.state = None
        store.save(ckpt)
    names = [p.name for p in store.files()]
    assert names == ["state-000001-step20.pt", "state-000002-step30.pt"]
    assert store.latest().best.step == 30
    Path(store.latest_path()).write_bytes(b"PK\x03\x04broken")
    with pytest.raises(CorruptCheckpointError, match=str(store.latest_path())):
        store.latest()
    store.clear()
    assert store.files() == [] and store.latest() is None

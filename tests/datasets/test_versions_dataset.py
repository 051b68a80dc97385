"""Every saved version of a versioned JSON dataset, for run-to-run comparisons."""

from __future__ import annotations

import json

import pandas as pd


def test_metrics_history_reads_versions(tmp_path):
    from rec_pipeline.datasets import JSONVersionsDataset

    base = tmp_path / "m.json"
    for v, split in (("2026-01-01T00.00.00.000Z", "test"), ("2026-01-02T00.00.00.000Z", "valid")):
        (base / v).mkdir(parents=True)
        (base / v / "m.json").write_text(json.dumps({"split": split}))
    got = JSONVersionsDataset(filepath=str(base)).load()
    assert [g["data"]["split"] for g in got] == ["test", "valid"]
    assert JSONVersionsDataset(filepath=str(tmp_path / "none.json")).load() == []
    assert isinstance(pd.DataFrame(got), pd.DataFrame)

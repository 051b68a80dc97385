"""The shard dataset takes part files a worker already wrote: it renames them into its folder
(no copy), lists a shard only once it is whole, and a failed pass leaves no part file behind."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from raw_files import write_raw

from rec_pipeline.data.parsing import parse_raw_files
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import MANIFEST, write_part
from rec_pipeline.datasets import ParquetShardsDataset, StagingFolderDataset


def _table(n: int) -> pa.Table:
    return pa.table({"x": pa.array(range(n), pa.int64())})


def _manifest(folder) -> list[dict]:
    return json.loads((folder / MANIFEST).read_text())["parts"]


def test_part_files_are_moved_in_not_copied(tmp_path):
    staging = StagingFolderDataset(path=str(tmp_path / "staging")).load()
    ds = ParquetShardsDataset(path=str(tmp_path / "shards"))
    ds.save(_table(0))  # an empty table first: it fixes the schema
    part = write_part(_table(5), staging / "a.parquet")
    inode = part.path.stat().st_ino
    ds.save(part)
    empty = write_part(_table(0), staging / "b.parquet")
    ds.save(empty)  # an empty part carries nothing: dropped, not listed
    ds.save(_table(3))
    folder = tmp_path / "shards"
    assert [p["rows"] for p in _manifest(folder)] == [0, 5, 3]
    assert (folder / "part-00001.parquet").stat().st_ino == inode  # the same file, renamed
    assert not any(staging.iterdir())
    assert ds.load().read().column("x").to_pylist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_a_failed_move_leaves_the_folder_as_it_was(tmp_path):
    staging = StagingFolderDataset(path=str(tmp_path / "staging")).load()
    ds = ParquetShardsDataset(path=str(tmp_path / "shards"))
    ds.save(_table(2))
    part = write_part(_table(4), staging / "a.parquet")
    part.path.unlink()  # lost before the save (a worker killed half-way, say)
    with pytest.raises(FileNotFoundError):
        ds.save(part)
    folder = tmp_path / "shards"
    assert _manifest(folder) == [{"file": "part-00000.parquet", "rows": 2}]
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "part-00000.parquet"]
    with pytest.raises(Exception, match="saves pyarrow Tables or PartFiles"):
        ds.save({"x": [1]})


def test_a_pass_stopped_half_way_leaves_no_part_file(tmp_path):
    write_raw(tmp_path / "raw")
    staging = tmp_path / "staging"
    (staging / "parse-killed").mkdir(parents=True)  # what a killed run left
    (staging / "parse-killed" / "x.parquet").write_bytes(b"partial")
    chunks = parse_raw_files(RawFiles(tmp_path / "raw").check(), ["205"], ["101"], 1200, staging)
    first = next(chunks)  # the first train_commons part, still in the staging folder
    assert first[1].path.parent.parent == staging
    assert [p.name for p in staging.iterdir()] == [first[1].path.parent.name]
    chunks.close()  # the consumer failed: its generator is closed (or collected)
    assert not any(staging.iterdir())

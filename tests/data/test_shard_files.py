"""Shard files keep every value and encode by dictionary only the columns that repeat."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_pipeline.data.shards import ShardSet, ShardWriter, write_part


def _table(rows: int = 2_000) -> pa.Table:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 5, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    n = int(offsets[-1])
    return pa.table(
        {
            "sample_id": pa.array(np.arange(rows, dtype=np.int64)),
            "click": pa.array(rng.integers(0, 2, rows).astype(np.int8)),
            "common_feature_index": pa.array([f"c{i % 37}" for i in range(rows)]),
            "raw_205": pa.ListArray.from_arrays(offsets, pa.array(rng.integers(0, 50, n))),
            "id_205": pa.ListArray.from_arrays(
                offsets, pa.array(rng.integers(0, 10**6, n).astype(np.int32))
            ),
            "w_205": pa.ListArray.from_arrays(offsets, pa.array(np.ones(n, np.float32))),
            "draw": pa.array(rng.random(rows)),
        }
    )


def _dictionary_encoded(path) -> dict[str, bool]:
    meta = pq.ParquetFile(path).metadata.row_group(0)
    columns = (meta.column(i) for i in range(meta.num_columns))
    return {c.path_in_schema: any("DICTIONARY" in e for e in c.encodings) for c in columns}


def test_written_shards_read_back_equal_with_dictionaries_where_values_repeat(tmp_path):
    table = _table()
    part = write_part(table, tmp_path / "part.parquet")
    writer = ShardWriter(tmp_path / "shards")
    writer.reset()
    writer.write(table)
    for path in (part.path, tmp_path / "shards" / "part-00000.parquet"):
        assert pq.read_table(path).equals(table)
        assert _dictionary_encoded(path) == {
            "sample_id": False,
            "click": False,
            "common_feature_index": True,
            "raw_205.list.element": True,
            "id_205.list.element": False,
            "w_205.list.element": True,
            "draw": False,
        }
    assert ShardSet(tmp_path / "shards").read().equals(table)

"""Parsing in several processes gives the tables and counts of one process, in file order, and
the chunks of the in-memory parser; the workers hand back part files, never rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from raw_files import COMMON, SKELETON, feat, write_raw

from rec_pipeline.data.aliccp import COMMON_KIND, SKELETON_KIND, FileParser, write_parts
from rec_pipeline.data.shards import PartFile

# Every test runs with each tokenizer (tests/data/conftest.py).
pytestmark = pytest.mark.usefixtures("each_tokenizer")


def _parse(path, workers: int, chunk_bytes: int = 1500):
    staging = path.parent / f"staging-{workers}-{chunk_bytes}"
    staging.mkdir()
    parser = FileParser(path, SKELETON_KIND, ["205", "301"], chunk_bytes=chunk_bytes)
    chunks = [(p, q) for _, p, q in write_parts([parser], staging, workers=workers)]
    assert all(isinstance(p, PartFile) for p, _ in chunks)
    parts = [pq.read_table(p.path) for p, _ in chunks]
    assert [t.num_rows for t in parts] == [p.rows for p, _ in chunks]
    rows = pa.concat_tables(parts)
    quarantine = pa.concat_tables([q for _, q in chunks])
    return [t.num_rows for t in parts], rows, quarantine, parser.report.to_dict()


def _in_memory(path, chunk_bytes: int = 1500):
    parser = FileParser(path, SKELETON_KIND, ["205", "301"], chunk_bytes=chunk_bytes)
    chunks = list(parser.chunks())
    rows = pa.concat_tables([r.combine_chunks() for r, _ in chunks])
    return [r.num_rows for r, _ in chunks], rows, parser.report.to_dict()


def test_two_workers_match_one(tmp_path):
    bad = [f"9{i:02d},x,0,train0001,1,{feat('205', 1)}" for i in range(5)]  # unparsable click
    bad += ["950,0,0,train0002,2", f"951,0,1,train0003,1,{feat('205', 7001)}"]
    write_raw(tmp_path, bad)
    path = tmp_path / SKELETON.format("train")
    n1, rows1, q1, report1 = _parse(path, workers=1)
    n2, rows2, q2, report2 = _parse(path, workers=2)
    # The same chunks (so the same shards downstream), several of them in flight at once.
    assert n1 == n2 and len(n1) > 4
    assert rows1.equals(rows2) and q1.equals(q2)
    assert report1 == report2
    assert q2.column("line_number").to_pylist() == list(range(201, 208))  # file line numbers
    n0, rows0, report0 = _in_memory(path)  # the in-memory parser cuts the same chunks
    assert n0 == n1 and rows0.equals(rows1) and report0 == report1


def test_crlf_lines_and_no_trailing_newline_match_too(tmp_path):
    write_raw(tmp_path)
    path = tmp_path / SKELETON.format("train")
    text = path.read_bytes().replace(b"\n", b"\r\n", 40).rstrip(b"\n")  # 40 CRLF lines, no final \n
    path.write_bytes(text)
    one, two = _parse(path, workers=1), _parse(path, workers=3)
    assert one[1].equals(two[1]) and one[2].equals(two[2]) and one[3] == two[3]
    assert one[3]["valid_rows"] == 200  # every line kept, the last one too


def test_the_same_chunks_when_a_line_is_longer_than_a_chunk(tmp_path):
    long = ",".join([f"{feat('205', 7000 + i)}" for i in range(120)]).replace(",", "\x01")
    write_raw(tmp_path, [f"960,1,0,train0003,120,{long}"])
    path = tmp_path / SKELETON.format("train")
    for chunk_bytes in (700, 4096):
        one, four = _parse(path, 1, chunk_bytes), _parse(path, 4, chunk_bytes)
        assert one[0] == four[0] and one[1].equals(four[1]) and one[3] == four[3]


def test_one_pool_for_several_files_keeps_each_file_in_order(tmp_path):
    write_raw(tmp_path, [f"9{i:02d},x,0,train0001,1,{feat('205', 1)}" for i in range(3)])
    paths = [tmp_path / SKELETON.format("train"), tmp_path / COMMON.format("train")]

    def parse(workers):
        parsers = [
            FileParser(paths[0], SKELETON_KIND, ["205", "301"], chunk_bytes=1500),
            FileParser(paths[1], COMMON_KIND, ["101", "109_14"], chunk_bytes=300),
        ]
        staging = tmp_path / f"many-{workers}"
        staging.mkdir()
        out = [(j, pq.read_table(p.path), q) for j, p, q in write_parts(parsers, staging, workers)]
        return out, [p.report.to_dict() for p in parsers]

    one, three = parse(1), parse(3)
    files = [j for j, *_ in one[0]]
    assert files == sorted(files) and len(set(files)) == 2 and len(files) > 8  # file by file
    assert one[1] == three[1]
    for (j1, r1, q1), (j3, r3, q3) in zip(one[0], three[0], strict=True):
        assert j1 == j3 and r1.equals(r3) and q1.equals(q3)

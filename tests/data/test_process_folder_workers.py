"""``process_folder`` gives the same shards, vocabularies and reports with 1, 2 or 3 workers,
and its workers hand back part files and counts, never the rows they parsed or encoded."""

from __future__ import annotations

import json
import pickle

import pandas as pd
import pytest
from raw_files import write_many_raw

from rec_pipeline.config import DataConfig, VocabConfig
from rec_pipeline.data import counting, encode
from rec_pipeline.data.aliccp import parts
from rec_pipeline.data.encode import ENCODE_OUTPUTS
from rec_pipeline.data.parsing import PARSE_OUTPUTS
from rec_pipeline.data.processing import process_folder
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import PartFile, ShardSet
from rec_pipeline.data.vocab import IdCounter

FOLDERS = [f"parsed_{n}" for n in PARSE_OUTPUTS] + [f"encoded_{n}" for n in ENCODE_OUTPUTS]
FOLDERS += ["quarantine", "sampled/encoded_train"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many") / "raw"
    write_many_raw(folder)
    return RawFiles(folder).check()


def _outputs(folder):
    shards = {n: ShardSet(folder / n) for n in FOLDERS}
    return (
        {n: [f.name for f in s.files] for n, s in shards.items()},
        {n: s.read() for n, s in shards.items()},
        pd.read_parquet(folder / "vocabularies.parquet"),
        json.loads((folder / "encode_report.json").read_text()),
    )


def test_the_same_outputs_with_one_two_and_three_workers(tmp_path, raw):
    runs = {}
    for workers in (1, 2, 3):
        data = DataConfig(source="files", workers=workers, chunk_mb=1)
        processed = process_folder(raw, data, VocabConfig(min_count=1), tmp_path / f"w{workers}")
        meta = {k: v for k, v in processed.metadata.to_dict().items() if k != "created_at"}
        runs[workers] = (_outputs(processed.folder), meta)
        assert not any((tmp_path / f"w{workers}" / "_staging").iterdir())
    (names, tables, vocab, report), meta = runs[1]
    assert len(names["parsed_train_samples"]) >= 4  # enough chunks for the pools
    assert tables["quarantine"].num_rows == 23 + 6
    for workers in (2, 3):
        (n, t, v, r), m = runs[workers]
        assert n == names and v.equals(vocab) and r == report and m == meta
        assert all(t[k].equals(tables[k]) for k in FOLDERS), workers


def _recording(real, results):
    """``ordered_map`` that keeps what each worker sent back, pickled as it travelled."""

    def ordered_map(*args, **kwargs):
        for result in real(*args, **kwargs):
            results.append((result, len(pickle.dumps(result))))
            yield result

    return ordered_map


def test_workers_send_back_part_files_and_counts_only(tmp_path, raw, monkeypatch):
    parsed, counts, encoded = [], [], []
    monkeypatch.setattr(parts, "ordered_map", _recording(parts.ordered_map, parsed))
    monkeypatch.setattr(counting, "ordered_map", _recording(counting.ordered_map, counts))
    monkeypatch.setattr(encode, "ordered_map", _recording(encode.ordered_map, encoded))
    data = DataConfig(source="files", workers=2, chunk_mb=1)
    process_folder(raw, data, VocabConfig(min_count=1), tmp_path)
    assert len(parsed) >= 4 and len(encoded) >= 4 and len(counts) >= 4
    for (part, quarantine, report), size in parsed:
        # The rows stay in the worker's part file; only the rejected lines come back (text,
        # for the quarantine's line numbers, which depend on the chunks before).
        assert isinstance(part, PartFile) and part.rows > 0
        assert quarantine.num_rows == sum(report.counts.values()) <= 10
        assert size < 8_000  # against ~1 MiB of parsed rows in each part file
    for done, size in encoded:
        assert all(isinstance(p, PartFile) for p in done.parts.values())
        assert size < 8_000
    for partial, size in counts:  # distinct ids and their counts, ~1,400 at most here
        assert isinstance(partial, IdCounter) and size < 12 * 1_500 + 4_000

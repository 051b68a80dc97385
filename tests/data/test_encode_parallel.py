"""Encoding the sample shards in several processes gives the tables and counts of one."""

from __future__ import annotations

from raw_files import feat, write_raw

from rec_pipeline.data.counting import count_training_ids
from rec_pipeline.data.encode import ENCODE_OUTPUTS, encode_splits
from rec_pipeline.data.parsing import PARSE_OUTPUTS, parse_raw_files
from rec_pipeline.data.processing import write_shards
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.data.vocab import Vocabulary, vocabulary_frame

SK, CM = ["205", "301"], ["101", "109_14"]


def _encode(parsed, vocab, workers, folder):
    """Every output's encoded rows and the final report (the part files moved into shards)."""
    names = [f"encoded_{n}" for n in ENCODE_OUTPUTS]
    chunks = encode_splits(
        parsed, SK, CM, vocab, valid_fraction=0.3, seed=5, staging=folder / "st", workers=workers
    )
    report = write_shards(folder, names, chunks)
    assert not any((folder / "st").iterdir())  # the staging folder is removed when done
    return [ShardSet(folder / n) for n in names], report


def test_two_workers_match_one(tmp_path):
    raw = tmp_path / "raw"
    write_raw(raw, [f"990,0,0,nosuchrecord,1,{feat('205', 7001)}"])  # one missing record
    names = [f"parsed_{n}" for n in PARSE_OUTPUTS] + ["quarantine"]
    parse = parse_raw_files(RawFiles(raw).check(), SK, CM, 1200, tmp_path / "staging")
    write_shards(tmp_path, names, parse)
    parsed = {n: ShardSet(tmp_path / f"parsed_{n}") for n in PARSE_OUTPUTS}
    assert len(parsed["train_samples"].files) >= 4  # enough shards for the workers
    counter = count_training_ids(
        parsed["train_samples"].iter_tables(),
        parsed["train_commons"].iter_tables(),
        SK,
        CM,
        valid_fraction=0.3,
        seed=5,
    )
    names = [f"f0_{f}" for f in SK] + [f"f1_{f}" for f in CM]
    vocab = Vocabulary(vocabulary_frame(counter, names, min_count=1, max_size={}, hash_buckets={}))
    one, report_one = _encode(parsed, vocab, 1, tmp_path / "one")
    two, report_two = _encode(parsed, vocab, 2, tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        assert [f.name for f in a.files] == [f.name for f in b.files]  # the same shards
        assert a.read().equals(b.read())
    assert report_one == report_two
    assert report_two["files"]["train_file"]["missing_common_record"] == 1

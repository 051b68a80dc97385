"""The synthetic generator in several processes: the bytes of one process, and nothing left
behind when a run fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rec_pipeline.config import ConfigError, load_config
from rec_pipeline.data import synthetic as syn
from rec_pipeline.data.synthetic import processes as syn_processes

# Two impressions per record: blocks of ~1k rows, so chunk_rows=1 cuts 4 train and 3 test
# chunks, enough for worker processes (below 4 chunks a run stays in the calling process).
# Every kind of world key is on: test-only users and items, saturating affinity.
PARALLEL = dict(
    n_train_rows=4_000,
    n_test_rows=2_500,
    impressions_per_common=2.0,
    n_users=300,
    n_items=800,
    n_categories=60,
    n_shops=150,
    n_brands=120,
    n_intentions=100,
    n_topics=6,
    behaviour_events_mean=15.0,
    test_new_user_fraction=0.3,
    test_new_item_fraction=0.2,
    affinity_shape="saturating",
    chunk_rows=1,
)
FILES = (*syn.RAW_FILE_NAMES, *syn.TRUTH_FILE_NAMES)


def digests(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in FILES}


def spy_on_pools(monkeypatch) -> list[int]:
    """The worker count of every process pool the generator starts."""
    started: list[int] = []
    original = syn_processes.ordered_map

    def spy(fn, args, workers, *rest):
        started.append(workers)
        return original(fn, args, workers, *rest)

    monkeypatch.setattr(syn_processes, "ordered_map", spy)
    return started


def test_same_bytes_and_summary_whatever_the_worker_count(tmp_path, monkeypatch):
    pools = spy_on_pools(monkeypatch)
    runs = {}
    for workers in (1, 2, 3):
        folder = tmp_path / str(workers)
        summary = syn.write_synthetic(folder, syn.SyntheticConfig(**PARALLEL, workers=workers))
        # the four raw files, the truth and the marker; the workers' parts are gone
        assert sorted(p.name for p in folder.iterdir()) == sorted((*FILES, syn.MARKER_NAME))
        measured = summary.to_dict()
        measured.pop("seconds"), measured.pop("rows_per_second")
        runs[workers] = (digests(folder), measured)
    assert pools == [2, 3]  # one run in this process, two with workers
    assert runs[1] == runs[2] == runs[3]
    assert runs[1][1]["splits"]["test"]["unseen_item_share"] > 0


def test_failed_parallel_run_leaves_nothing(tmp_path, monkeypatch):
    original = syn_processes._copy_part

    def fail_on_test(part, *args):
        if part.name.startswith("1-"):  # a part of the test split: the disk is full
            raise OSError(28, "No space left on device")
        original(part, *args)

    monkeypatch.setattr(syn_processes, "_copy_part", fail_on_test)
    with pytest.raises(OSError, match="No space left"):
        syn.write_synthetic(tmp_path, syn.SyntheticConfig(**PARALLEL, workers=2))
    assert list(tmp_path.iterdir()) == []


def test_worker_count_is_not_part_of_the_fingerprint():
    config = syn.SyntheticConfig(**PARALLEL)
    assert config.workers == "auto"
    for workers in (1, 7, "auto"):
        assert syn.SyntheticConfig(**PARALLEL, workers=workers).fingerprint() == (
            config.fingerprint()
        )


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5, None])
def test_bad_worker_count_names_the_key(bad):
    with pytest.raises(ConfigError, match="synthetic.workers"):
        load_config({"synthetic": {"workers": bad}})
    with pytest.raises(ValueError, match="workers"):
        syn.SyntheticConfig.from_mapping({"workers": bad})

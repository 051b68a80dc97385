"""The data-processing pipeline on a catalog built in code (no Kedro session, no project)."""

from __future__ import annotations

import pickle

import pytest
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pickle import PickleDataset
from raw_files import write_many_raw, write_raw

from rec_pipeline.config import Config
from rec_pipeline.data import workers as workers_module
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.datasets import ParquetShardsDataset, RawAliCCPDataset, StagingFolderDataset
from rec_pipeline.hooks import WorkerPoolHook
from rec_pipeline.pipelines.data_processing import create_pipeline, create_sampling_pipeline

SHARDS = [
    *[f"parsed_{s}_{t}" for s in ("train", "test") for t in ("samples", "commons")],
    *[f"encoded_{s}" for s in ("train_all", "train", "valid", "test")],
    "encoded_train_commons",
    "encoded_test_commons",
    "quarantine",
]
KEPT = ("vocabularies", "encode_report", "parse_report")


def _catalog(
    tmp_path, keep_prob: float, raw=None, workers: int = 1, at_least: int | None = None
) -> DataCatalog:
    params = Config().model_dump(by_alias=True)
    params["data"].update(source="files", workers=workers, chunk_mb=1)
    params["data"].update(neg_keep_prob_train=keep_prob, neg_keep_at_least=at_least)
    params["vocab"]["min_count"] = 1
    if raw is None:
        raw = tmp_path / "raw"
        if not raw.exists():
            write_raw(raw)
    shards = {n: ParquetShardsDataset(path=str(tmp_path / n)) for n in SHARDS}
    # On disk, so that a later catalog (a rerun of sampling alone) finds them.
    kept = {n: PickleDataset(filepath=str(tmp_path / f"{n}.pkl")) for n in KEPT}
    return DataCatalog(
        {
            "raw_aliccp": RawAliCCPDataset(path=str(raw)),
            "shard_staging": StagingFolderDataset(path=str(tmp_path / "staging")),
            **shards,
            **kept,
            "params:data": MemoryDataset(params["data"]),
            "params:vocab": MemoryDataset(params["vocab"]),
        }
    )


def test_encoded_splits_metadata_and_quality_reconcile(tmp_path):
    catalog = _catalog(tmp_path, keep_prob=0.5)
    out = SequentialRunner().run(create_pipeline(), catalog)
    meta = DatasetMetadata.from_dict(out["metadata"].load())
    quality = out["data_quality"].load()
    sampled = catalog["encoded_train"].load()
    # 40 groups x 5 impressions per split; valid takes whole groups; sampling drops negatives.
    assert meta.splits["test"]["rows"] == 200 == quality["rows"]["test"]
    assert quality["rows"]["train_all"] + meta.splits["valid"]["rows"] == 200
    assert meta.splits["train"]["rows"] == len(sampled) == quality["rows"]["train"]
    ns = quality["negative_sampling"]
    assert len(sampled) == ns["rows_in"] - (ns["negatives_seen"] - ns["negatives_kept"])
    assert meta.neg_keep_prob_train == 0.5
    assert meta.names("skeleton")[0] == "f0_205" and meta.raw_ids("common")[0] == "101"
    assert out["planted_truth_test"].load().empty  # real files: no planted truth


def test_sampling_reruns_alone_on_the_encoded_rows(tmp_path):
    SequentialRunner().run(create_pipeline(), _catalog(tmp_path, keep_prob=1.0))
    full = ParquetShardsDataset(path=str(tmp_path / "encoded_train")).load().read()
    catalog = _catalog(tmp_path, keep_prob=0.3)
    out = SequentialRunner().run(create_sampling_pipeline(), catalog)
    sampled = catalog["encoded_train"].load().read()
    assert set(sampled.column("sample_id").to_pylist()) < set(full.column("sample_id").to_pylist())
    assert (full.column("click").to_numpy() == 1).sum() == (
        sampled.column("click").to_numpy() == 1
    ).sum()  # every click kept
    assert out["metadata"].load()["neg_keep_prob_train"] == 0.3
    # A floor above the split's negatives keeps them all, and the metadata says so.
    catalog = _catalog(tmp_path, keep_prob=0.3, at_least=10**6)
    out = SequentialRunner().run(create_sampling_pipeline(), catalog)
    assert catalog["encoded_train"].load().read().equals(full)
    assert out["metadata"].load()["neg_keep_prob_train"] == 1.0


@pytest.fixture(scope="module")
def many_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("many") / "raw"
    write_many_raw(raw)
    return raw


def _run_with_pool_hook(pipeline, catalog) -> dict:
    """The pipeline run with :class:`WorkerPoolHook` called as a Kedro session calls it."""
    hook = WorkerPoolHook()
    manager = _create_hook_manager()
    manager.register(hook)
    hook.before_pipeline_run({}, pipeline, catalog)
    try:
        return SequentialRunner().run(pipeline, catalog, hook_manager=manager)
    finally:
        hook.after_pipeline_run({}, None, pipeline, catalog)
        assert workers_module._SHARED is None and not workers_module._IN_USE


def test_the_same_outputs_with_one_two_and_three_workers(tmp_path, many_raw):
    """Workers write their part files and the shard datasets move them in: every shard folder
    holds the same shards, rows and reports whatever the count."""
    outputs = {}
    for workers in (1, 2, 3, "2 shared"):
        folder = tmp_path / f"w{workers}"
        count = int(str(workers)[0])
        catalog = _catalog(folder, 0.5, many_raw, count)
        if workers == "2 shared":  # one pool for the run, as a Kedro session's hook sets up
            out = _run_with_pool_hook(create_pipeline(), catalog)
        else:
            out = SequentialRunner().run(create_pipeline(), catalog)
        reports = {n: pickle.loads((folder / f"{n}.pkl").read_bytes()) for n in KEPT}
        reports["vocabularies"] = reports["vocabularies"].to_dict("list")
        shards = {n: ShardSet(folder / n) for n in SHARDS}
        outputs[workers] = (
            {n: [f.name for f in s.files] for n, s in shards.items()},
            {n: s.read() for n, s in shards.items()},
            reports,
            out["data_quality"].load(),
        )
        assert not any((folder / "staging").iterdir())  # no part file left behind
    one = outputs[1]
    assert len(one[0]["parsed_train_samples"]) >= 4  # the pools did run
    assert one[1]["quarantine"].num_rows == 23 + 6  # bad lines in every chunk (train + test)
    for workers in (2, 3, "2 shared"):
        names, tables, reports, quality = outputs[workers]
        assert names == one[0] and reports == one[2] and quality == one[3]
        assert all(tables[n].equals(one[1][n]) for n in SHARDS), workers

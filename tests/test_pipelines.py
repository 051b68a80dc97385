"""The pipelines through real Kedro sessions, on tiny data, in a temporary copy of the project."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from kedro_project import TINY, catalog, latest, run  # noqa: E402
from sklearn.metrics import roc_auc_score

from rec_pipeline.config import ConfigError
from rec_pipeline.data.shards import ShardSet


@pytest.mark.slow
def test_whole_chain_then_rerun_evaluation(project):
    run(project)
    cat = catalog(project)
    metrics = cat.load("evaluation_metrics")
    assert metrics["split"] == "test" and metrics["n_rows"] == 2000
    preds = cat.load("predictions")
    for task in ("ctr", "cvr", "ctcvr"):
        block = metrics["tasks"][task]
        assert block["oracle_auc"] is not None  # the synthetic truth is joined
        assert 0.0 < block["auc"] < 1.0
    # The saved probabilities rank as the reported AUCs say (calibration is monotone per task).
    clicked = preds[preds["click"] == 1]
    assert metrics["tasks"]["ctr"]["auc"] == pytest.approx(
        roc_auc_score(preds["click"], preds["p_ctr"]), abs=1e-9
    )
    assert metrics["tasks"]["cvr"]["auc"] == pytest.approx(
        roc_auc_score(clicked["conversion"], clicked["p_cvr"]), abs=1e-9
    )
    assert list(preds.columns)[:6] == [
        "sample_id",
        "click",
        "conversion",
        "p_ctr",
        "p_cvr",
        "p_ctcvr",
    ]
    assert len(preds) == 2000
    ckpt = cat.load("model_checkpoint")
    assert ckpt["metadata"]["vocab_fingerprint"] == cat.load("metadata")["vocab_fingerprint"]
    hist = cat.load("training_history")
    assert {"train", "valid", "health", "grad"} <= set(hist["kind"])
    # One checkpoint, one split, one set of numbers: the validation that kept the best weights
    # and auto-eval of those weights on the validation split agree exactly (both in fp32).
    summary = cat.load("training_summary")
    auto = cat.load("auto_eval_metrics")
    assert auto["split"] == "valid" and auto["checkpoint"] == "best"
    for task in ("ctr", "cvr", "ctcvr"):
        assert summary["best_metrics"].get(f"auc_{task}") == auto["tasks"][task]["auc"], task
    report = latest(project / "data/08_reporting/report.html").read_text()
    assert "<img" in report and "http://" not in report
    dq = cat.load("data_quality")
    assert dq["rows"]["test"] == 2000

    # Rerun evaluation alone on another split and checkpoint: a new version, no retraining.
    run(project, "evaluation", {**TINY, "evaluation": {"split": "valid", "checkpoint": "last"}})
    versions = cat.load("evaluation_metrics_versions")
    assert [v["data"]["split"] for v in versions] == ["test", "valid"]
    assert versions[-1]["data"]["checkpoint"] == "last"
    # ... and the evaluation node gives the same numbers again for the best weights on valid.
    run(project, "evaluation", {**TINY, "evaluation": {"split": "valid", "checkpoint": "best"}})
    again = catalog(project).load("evaluation_metrics")  # a new catalog: the newest version
    assert again["split"] == "valid" and again["checkpoint"] == "best"
    for task in ("ctr", "cvr", "ctcvr"):
        assert again["tasks"][task]["auc"] == auto["tasks"][task]["auc"], task
    assert len(list((project / "data/06_models/model_checkpoint.pt").iterdir())) == 1
    run(project, "reporting")
    assert "Comparison" in latest(project / "data/08_reporting/report.html").read_text()


SKELETON = "sample_skeleton_{}.csv"
COMMON = "common_features_{}.csv"


def feat(field: str, fid: int, value: str = "1.0") -> str:
    return f"{field}\x02{fid}\x03{value}"


def write_raw(folder: Path, bad_train_lines: list[str] | None = None) -> None:
    """Hand-written raw files: 40 groups of 5 impressions, plus the given bad lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        sk, cm = [], []
        for g in range(40):
            cfi = f"{split}{g:04d}"
            cfeats = [feat("101", 1000 + g % 7), feat("109_14", 50 + g % 3, "0.693147")]
            cm.append(f"{cfi},{len(cfeats)},{chr(1).join(cfeats)}")
            for i in range(5):
                click = int((g + i) % 4 == 0)
                conv = int(click and g % 3 == 0)
                sfeats = [feat("205", 7000 + (g * 5 + i) % 11), feat("301", 1 + i % 2)]
                sid = (0 if split == "train" else 10_000) + g * 5 + i
                sk.append(f"{sid},{click},{conv},{cfi},{len(sfeats)},{chr(1).join(sfeats)}")
        if split == "train" and bad_train_lines:
            sk.extend(bad_train_lines)
        (folder / SKELETON.format(split)).write_text("\n".join(sk) + "\n")
        (folder / COMMON.format(split)).write_text("\n".join(cm) + "\n")


FILES_PARAMS = {**TINY, "data": {"source": "files", "batch_size": 64}, "vocab": {"min_count": 1}}


@pytest.mark.slow
def test_real_files_with_bad_lines_are_counted_and_quarantined(project):
    raw = project / "user_raw"
    bad = [
        "900,0,0,train0001,2",  # wrong column count
        f"901,x,0,train0001,1,{feat('205', 1)}",  # unparsable number
        "902,0,0,train0001,1,205\x027001",  # missing separator
        f"903,0,0,train0001,1,{feat('205', 7001)}\x00",  # garbage byte
        f"904,0,1,train0001,1,{feat('205', 7001)}",  # click=0, conversion=1
        f"905,1,0,nosuchrecord,1,{feat('205', 7001)}",  # common record missing
        f"906,1,0,train0002,2,{feat('205', 7001)}\x01{feat('999', 5)}",  # unknown field: kept
        f"907,1,0,train0002,3,{feat('205', 7001)}",  # feature_num mismatch
    ]
    write_raw(raw, bad)
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    run(project, "data", {**FILES_PARAMS, "raw_dir": str(raw)})
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before  # never written
    cat = catalog(project, {**FILES_PARAMS, "raw_dir": str(raw)})
    dq = cat.load("data_quality")
    assert dq["rejected_lines_by_reason"] == {
        "wrong_column_count": 1,
        "bad_number": 1,
        "bad_feature_list": 1,
        "garbage_bytes": 1,
        "click0_conversion1": 1,
        "feature_num_mismatch": 1,
    }
    assert dq["parse"]["train_samples"]["unknown_fields"] == {"999": 1}
    assert dq["encode"]["train_file"]["missing_common_record"] == 1
    assert dq["encode"]["train_file"]["missing_common_examples"] == [905]
    q = cat.load("quarantine").read().to_pandas()
    assert sorted(q["line_number"]) == [201, 202, 203, 204, 205, 208]
    assert set(q["reason"]) == set(dq["rejected_lines_by_reason"])
    # Every line is accounted for: 208 lines = 202 valid + 6 rejected; of the 202 rows one has
    # no common record (counted before any sampling); the other 201 are split, and then
    # training negatives sampled.
    parsed = dq["parse"]["train_samples"]
    assert (parsed["lines"], parsed["valid_rows"], parsed["rejected"]) == (208, 202, 6)
    assert dq["encode"]["train_file"]["sample_rows"] == 202
    assert dq["rows"]["train_all"] + dq["rows"]["valid"] == 201
    ns = dq["negative_sampling"]
    assert ns["rows_in"] == dq["rows"]["train_all"]
    dropped_negatives = ns["negatives_seen"] - ns["negatives_kept"]
    assert dq["rows"]["train"] + dropped_negatives == dq["rows"]["train_all"]


@pytest.mark.slow
def test_a_file_with_no_valid_row_is_an_error_naming_it(project):
    raw = project / "user_raw"
    write_raw(raw)
    (raw / COMMON.format("test")).write_text("")
    with pytest.raises(Exception, match="common_features_test.csv"):
        run(project, "data", {**FILES_PARAMS, "raw_dir": str(raw)})


@pytest.mark.slow
def test_generator_refuses_to_overwrite_foreign_files(project):
    raw = project / "user_raw"
    write_raw(raw)
    with pytest.raises(Exception, match="refusing to overwrite"):
        run(project, "data_generation", {**TINY, "raw_dir": str(raw)})
    assert "train0000" in (raw / SKELETON.format("train")).read_text()


@pytest.mark.slow
def test_generator_skips_its_own_identical_files(project):
    run(project, "data_generation")
    raw = project / "data/01_raw/aliccp_synthetic"
    stamp = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    run(project, "data_generation")
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamp


def test_bad_parameter_fails_before_any_work(project):
    bad = {**TINY, "runtime": {**TINY["runtime"], "epochz": 3}}
    with pytest.raises(ConfigError, match="runtime.epochz"):
        run(project, "__default__", bad)
    assert not (project / "data/01_raw").exists()


def test_registry_lists_every_pipeline(project):
    from kedro.framework.project import pipelines

    named = ("data_generation", "data_processing", "sampling", "training", "evaluation")
    assert {*named, "data", "reporting", "__default__"} == set(pipelines)
    assert {n.name for n in pipelines["__default__"].nodes} == {
        "prepare_raw_data",
        "parse_raw",
        "extract_planted_truth",
        "build_vocabularies",
        "encode_features",
        "sample_training_negatives",
        "describe_dataset",
        "build_data_quality_report",
        "train_model",
        "auto_evaluate",
        "evaluate_model",
        "build_report",
    }
    # Lineage tells the truth: training reads only what data processing wrote for it.
    assert pipelines["training"].only_nodes("train_model").inputs() == {
        "encoded_train",
        "encoded_valid",
        "encoded_train_commons",
        "metadata",
        "parameters",
    }
    # Sampling reads encoded rows, not the raw or parsed data.
    assert not {i for i in pipelines["sampling"].inputs() if i.startswith(("raw", "parsed"))}
    assert "raw_aliccp" not in pipelines["evaluation"].inputs()


@pytest.mark.slow
def test_each_pipeline_runs_alone_on_data_outside_the_default_folder(project):
    """`kedro run --pipeline=data --params raw_dir=...`, then every later pipeline on its own,
    without naming the raw folder again."""
    raw = project / "elsewhere" / "aliccp"
    run(project, "data_generation", {**TINY, "raw_dir": str(raw)})
    assert (raw / SKELETON.format("train")).exists()
    assert not (project / "data/01_raw").exists()
    run(project, "data_processing", {**TINY, "raw_dir": str(raw)})
    for name in ("training", "evaluation", "reporting"):
        run(project, name)
    cat = catalog(project)
    assert cat.load("evaluation_metrics")["tasks"]["ctr"]["oracle_auc"] is not None
    # A new keep probability: sampling and its dependants rerun, nothing is parsed again.
    parsed = project / "data/02_intermediate/parsed/train_samples"
    stamp = {p.name: p.stat().st_mtime_ns for p in parsed.iterdir()}
    run(project, "sampling", {**TINY, "data": {"neg_keep_prob_train": 0.2}})
    assert {p.name: p.stat().st_mtime_ns for p in parsed.iterdir()} == stamp
    meta = catalog(project).load("metadata")
    assert meta["neg_keep_prob_train"] == 0.2
    report = catalog(project).load("sampling_report")
    assert report["keep_prob"] == 0.2 and report["negatives_kept"] < report["negatives_seen"]
    assert len(ShardSet(project / "data/05_model_input/encoded/train")) == report["kept"]["rows"]


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


@pytest.mark.slow
def test_real_data_environment_reads_a_named_folder(project):
    """`kedro run --env=aliccp --params raw_dir=...`: the source recipe on the user's files."""
    raw = project / "user_raw"
    write_raw(raw)
    params = {"raw_dir": str(raw), "vocab": {"min_count": 1}}
    run(project, "data", params, env="aliccp")
    meta_dir = project / "data/aliccp/05_model_input/metadata.json"
    assert meta_dir.is_dir()  # the aliccp environment keeps its artefacts apart
    assert not (project / "data/05_model_input").exists()
    cat_params = catalog(project, params, env="aliccp").load("parameters")
    assert cat_params["optim"]["lr_scheduler"]["total_steps"] == 40000  # the source recipe
    assert cat_params["data"]["source"] == "files"

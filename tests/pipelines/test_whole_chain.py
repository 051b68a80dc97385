"""The whole chain and each named pipeline through real Kedro sessions, on tiny data."""

from __future__ import annotations

import pytest
from kedro_project import TINY, catalog, latest, run  # noqa: E402
from raw_files import SKELETON
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
    # A log this small keeps every negative (data.neg_keep_at_least)...
    assert cat.load("metadata")["neg_keep_prob_train"] == 1.0
    # ... a new keep probability: sampling and its dependants rerun, nothing is parsed again.
    parsed = project / "data/02_intermediate/parsed/train_samples"
    stamp = {p.name: p.stat().st_mtime_ns for p in parsed.iterdir()}
    rate = {"neg_keep_prob_train": 0.2, "neg_keep_at_least": None}
    run(project, "sampling", {**TINY, "data": rate})
    assert {p.name: p.stat().st_mtime_ns for p in parsed.iterdir()} == stamp
    meta = catalog(project).load("metadata")
    assert meta["neg_keep_prob_train"] == 0.2
    report = catalog(project).load("sampling_report")
    assert report["keep_prob"] == 0.2 and report["negatives_kept"] < report["negatives_seen"]
    assert len(ShardSet(project / "data/05_model_input/encoded/train")) == report["kept"]["rows"]


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
        "training_state",
        "parameters",
    }
    # Sampling reads encoded rows, not the raw or parsed data.
    assert not {i for i in pipelines["sampling"].inputs() if i.startswith(("raw", "parsed"))}
    assert "raw_aliccp" not in pipelines["evaluation"].inputs()

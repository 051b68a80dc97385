"""A user's own raw files: bad lines counted and quarantined, a real-data environment."""

from __future__ import annotations

import pytest
from kedro_project import TINY, catalog, run  # noqa: E402
from raw_files import COMMON, feat, write_raw

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
    # Nine more rows whose common record is missing, all negatives: counted before negative
    # sampling could drop any of them.
    bad += [f"{910 + i},0,0,nosuch{i},1,{feat('205', 7001)}" for i in range(9)]
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
    assert dq["encode"]["train_file"]["missing_common_record"] == 10
    assert sorted(dq["encode"]["train_file"]["missing_common_examples"]) == [905, *range(910, 919)]
    q = cat.load("quarantine").read().to_pandas()
    assert sorted(q["line_number"]) == [201, 202, 203, 204, 205, 208]
    assert set(q["reason"]) == set(dq["rejected_lines_by_reason"])
    # Every line is accounted for: 217 lines = 211 valid + 6 rejected; of the 211 rows ten have
    # no common record (counted before any sampling); the other 201 are split, and then
    # training negatives sampled.
    parsed = dq["parse"]["train_samples"]
    assert (parsed["lines"], parsed["valid_rows"], parsed["rejected"]) == (217, 211, 6)
    assert dq["encode"]["train_file"]["sample_rows"] == 211
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

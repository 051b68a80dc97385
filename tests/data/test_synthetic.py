"""The synthetic Ali-CCP generator: exact raw format, consistency, determinism, planted truth."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from rec_pipeline.data import synthetic as syn
from rec_pipeline.data.synthetic import processes as syn_processes
from rec_pipeline.data.synthetic.world import build_world

SMALL = dict(
    n_train_rows=30_000,
    n_test_rows=10_000,
    impressions_per_common=15.0,
    n_users=800,
    n_items=3_000,
    n_categories=150,
    n_shops=600,
    n_brands=400,
    n_intentions=300,
    n_topics=12,
    behaviour_events_mean=60.0,
    chunk_rows=7_000,
)
TINY = dict(SMALL, n_train_rows=4_000, n_test_rows=1_500)

SKELETON_SINGLE = ("205", "206", "207", "216", "301")
COMMON_SINGLE = ("101", *syn.PROFILE_FIELDS)
CROSS_OF = {"508": ("206", "109_14"), "509": ("207", "110_14"), "702": ("216", "127_14")}
HEX16 = re.compile(r"^[0-9a-f]{16}$")


# ---------------------------------------------------------------------------------- helpers


def parse_features(text: str) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for feature in text.split("\x01"):
        field, rest = feature.split("\x02")
        fid, value = rest.split("\x03")
        out.setdefault(field, []).append((int(fid), value))
    return out


def read_skeleton(path: Path) -> list[dict]:
    rows = []
    with open(path, "rb") as f:
        data = f.read().decode("ascii")
    assert data.endswith("\n")
    for line in data[:-1].split("\n"):
        cols = line.split(",")
        assert len(cols) == 6, line
        sid, click, conv, cfi, num, flist = cols
        feats = parse_features(flist)
        assert int(num) == sum(len(v) for v in feats.values()) == flist.count("\x01") + 1
        rows.append(
            dict(sid=int(sid), click=int(click), conv=int(conv), cfi=cfi, num=int(num), f=feats)
        )
    return rows


def read_common(path: Path) -> dict[str, dict]:
    records = {}
    with open(path, "rb") as f:
        data = f.read().decode("ascii")
    assert data.endswith("\n")
    for line in data[:-1].split("\n"):
        cols = line.split(",")
        assert len(cols) == 3, line[:200]
        cfi, num, flist = cols
        feats = parse_features(flist)
        assert int(num) == sum(len(v) for v in feats.values())
        assert cfi not in records, "common_feature_index must be unique"
        records[cfi] = feats
    return records


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    config = syn.SyntheticConfig(**SMALL)
    summary = syn.write_synthetic(folder, config)
    data = {"folder": folder, "config": config, "summary": summary}
    for split in syn.SPLITS:
        data[f"skeleton_{split}"] = read_skeleton(folder / f"sample_skeleton_{split}.csv")
        data[f"common_{split}"] = read_common(folder / f"common_features_{split}.csv")
        data[f"truth_{split}"] = pd.read_parquet(folder / f"truth_{split}.parquet")
    return data


# ------------------------------------------------------------------------------------ files


def test_files_marker_and_summary(small):
    folder, config, summary = small["folder"], small["config"], small["summary"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([*syn.RAW_FILE_NAMES, *syn.TRUTH_FILE_NAMES, syn.MARKER_NAME])
    marker = json.loads((folder / syn.MARKER_NAME).read_text())
    assert marker == syn.read_marker(folder)
    assert marker["fingerprint"] == config.fingerprint() == summary.fingerprint
    assert syn.SyntheticConfig(**marker["config"]) == config
    assert marker["summary"]["splits"]["train"]["rows"] == config.n_train_rows
    assert summary.rows == {"train": config.n_train_rows, "test": config.n_test_rows}
    for split in syn.SPLITS:
        s = summary.splits[split]
        assert s.clicks == sum(r["click"] for r in small[f"skeleton_{split}"])
        assert s.conversions == sum(r["conv"] for r in small[f"skeleton_{split}"])
        for name, size in s.bytes.items():
            assert (folder / name).stat().st_size == size
    assert summary.bytes_written == sum(sum(s.bytes.values()) for s in summary.splits.values())
    assert summary.rows_per_second > 0
    assert "rows/s" in str(summary)


def test_skeleton_format(small):
    rows = small["skeleton_train"] + small["skeleton_test"]
    assert len(small["skeleton_train"]) == SMALL["n_train_rows"]
    assert len(small["skeleton_test"]) == SMALL["n_test_rows"]
    n210 = Counter()
    present = Counter()
    for r in rows:
        assert HEX16.match(r["cfi"])
        assert r["click"] in (0, 1) and r["conv"] in (0, 1)
        assert not (r["click"] == 0 and r["conv"] == 1)
        f = r["f"]
        assert set(f) <= set(syn.SKELETON_FIELDS)
        for field in SKELETON_SINGLE:
            assert len(f[field]) == 1 and f[field][0][1] == "1.0"
        assert 1 <= len(f["210"]) <= 4
        assert all(v == "1.0" for _, v in f["210"])
        n210[len(f["210"])] += 1
        for field in ("508", "509", "702"):
            assert len(f.get(field, [])) <= 1
        for field in syn.CROSS_FIELDS:
            present[field] += field in f
            for _, value in f.get(field, []):
                assert float(value) >= math.log(2) - 1e-6
        for values in f.values():
            for fid, value in values:
                assert 1 <= fid < syn.MAX_FEATURE_ID
                float(value)
    assert n210[1] > 0 and sum(n210[k] for k in (2, 3, 4)) > 0, "210 is multi-hot"
    for field in syn.CROSS_FIELDS:  # crosses are sometimes present, often absent
        assert 0.05 * len(rows) < present[field] < 0.95 * len(rows), field
    assert any(len(r["f"].get("853", [])) > 1 for r in rows)
    ids = [r["sid"] for r in rows]
    assert len(set(ids)) == len(ids), "sample_id unique across train and test"


def test_common_format(small):
    for split in syn.SPLITS:
        records = small[f"common_{split}"]
        lengths = {f: [] for f in syn.BEHAVIOUR_FIELDS}
        for feats in records.values():
            assert set(feats) <= set(syn.COMMON_FIELDS)
            for field in COMMON_SINGLE:
                assert len(feats[field]) == 1 and feats[field][0][1] == "1.0"
            for field in syn.BEHAVIOUR_FIELDS:
                values = feats.get(field, [])
                lengths[field].append(len(values))
                ids = [fid for fid, _ in values]
                assert len(set(ids)) == len(ids)
                for fid, value in values:
                    assert 1 <= fid < syn.MAX_FEATURE_ID
                    weight = float(value)
                    count = round(math.expm1(weight))
                    assert count >= 1 and abs(weight - math.log1p(count)) < 1e-5
                    assert value == f"{math.log1p(count):.6g}"
        for field, lens in lengths.items():
            assert np.mean(lens) > 10 and max(lens) > 50, field  # long behaviour lists
        profiles = {f: {feats[f][0][0] for feats in records.values()} for f in COMMON_SINGLE}
        assert len(profiles["124"]) == 2 and len(profiles["101"]) > 50


def test_grouped_by_common_record(small):
    all_cfi = set()
    for split in syn.SPLITS:
        rows, records = small[f"skeleton_{split}"], small[f"common_{split}"]
        runs = [rows[0]["cfi"]]
        for r in rows[1:]:
            if r["cfi"] != runs[-1]:
                runs.append(r["cfi"])
        assert len(runs) == len(set(runs)), "skeleton not grouped by common_feature_index"
        assert set(runs) == set(records)
        assert len(rows) / len(runs) > 5
        assert not all_cfi & set(records)
        all_cfi |= set(records)
        # a user owns several common records
        users = Counter(feats["101"][0][0] for feats in records.values())
        assert max(users.values()) > 1


def test_crosses_consistent_with_behaviour_lists(small):
    mapping: dict[str, dict[int, int]] = {f: {} for f in syn.CROSS_FIELDS}
    for split in syn.SPLITS:
        records = small[f"common_{split}"]
        for r in small[f"skeleton_{split}"]:
            f, common = r["f"], records[r["cfi"]]
            for cross, (item_field, list_field) in CROSS_OF.items():
                behaviour = dict(common.get(list_field, []))
                item_id = f[item_field][0][0]
                if item_id in behaviour:
                    assert cross in f
                    cross_id, value = f[cross][0]
                    assert value == behaviour[item_id]
                    assert mapping[cross].setdefault(item_id, cross_id) == cross_id
                else:
                    assert cross not in f
            behaviour = dict(common.get("150_14", []))
            hits = [fid for fid, _ in f["210"] if fid in behaviour]
            entries = f.get("853", [])
            assert len(entries) == len(hits)
            for node, (cross_id, value) in zip(hits, entries, strict=True):
                assert value == behaviour[node]
                assert mapping["853"].setdefault(node, cross_id) == cross_id
    for cross, m in mapping.items():
        assert len(set(m.values())) == len(m), f"{cross} ids must be injective"
        assert len(m) > 5


# ------------------------------------------------------------------------------------ truth


def test_truth_labels_and_rates(small):
    config = small["config"]
    for split in syn.SPLITS:
        truth, rows = small[f"truth_{split}"], small[f"skeleton_{split}"]
        assert list(truth.columns) == ["sample_id", "p_ctr", "p_cvr"]
        assert str(truth.sample_id.dtype) == "int64" and str(truth.p_ctr.dtype) == "float64"
        assert truth.sample_id.tolist() == [r["sid"] for r in rows]
        p, q = truth.p_ctr.to_numpy(), truth.p_cvr.to_numpy()
        assert ((p > 0) & (p < 1) & (q > 0) & (q < 1)).all()
        assert p.std() > 0.01 and q.std() > 0.01
        click = np.array([r["click"] for r in rows])
        conv = np.array([r["conv"] for r in rows])
        # labels are Bernoulli draws of the truth: counts within 5 standard deviations
        assert abs(click.sum() - p.sum()) < 5 * math.sqrt((p * (1 - p)).sum())
        qc = q[click == 1]
        assert abs(conv.sum() - qc.sum()) < 5 * math.sqrt((qc * (1 - qc)).sum()) + 1
        # and the truth is calibrated to the configured rates
        assert abs(p.mean() / config.ctr_rate - 1) < 0.15
        assert abs((p * q).sum() / p.sum() / config.cvr_rate - 1) < 0.25
        assert abs(click.mean() / config.ctr_rate - 1) < 0.25
        assert 0 < conv.sum() / click.sum() < 3 * config.cvr_rate


def test_oracle_auc(small):
    for split in syn.SPLITS:
        truth, rows = small[f"truth_{split}"], small[f"skeleton_{split}"]
        s = small["summary"].splits[split]
        click = np.array([r["click"] for r in rows])
        conv = np.array([r["conv"] for r in rows])
        p, q = truth.p_ctr.to_numpy(), truth.p_cvr.to_numpy()
        auc_ctr = roc_auc_score(click, p)
        auc_cvr = roc_auc_score(conv[click == 1], q[click == 1])
        auc_ctcvr = roc_auc_score(conv, p * q)
        assert auc_ctr > 0.7 and auc_ctcvr > 0.7
        assert auc_cvr > (0.6 if split == "train" else 0.5)  # test: few conversions
        assert abs(s.oracle_auc_ctr - auc_ctr) < 1e-3
        assert abs(s.oracle_auc_cvr - auc_cvr) < 1e-3
        assert abs(s.oracle_auc_ctcvr - auc_ctcvr) < 1e-3


def _first_order_table(rows, records) -> pd.DataFrame:
    table = {f: [r["f"][f][0][0] for r in rows] for f in SKELETON_SINGLE}
    for f in syn.PROFILE_FIELDS:
        table[f] = [records[r["cfi"]][f][0][0] for r in rows]
    return pd.DataFrame(table)


def test_interactions_matter(small):
    train = _first_order_table(small["skeleton_train"], small["common_train"])
    test = _first_order_table(small["skeleton_test"], small["common_test"])
    encoder = OneHotEncoder(handle_unknown="ignore").fit(train)
    x_train, x_test = encoder.transform(train), encoder.transform(test)
    # 1. the best additive (first-order) function of item, category, shop, brand, position and
    #    profile explains well under the full true CTR logit, even in sample
    p = small["truth_train"].p_ctr.to_numpy()
    logit = np.log(p / (1 - p))
    r2 = Ridge(alpha=1.0).fit(x_train, logit).score(x_train, logit)
    assert r2 < 0.75
    # 2. a first-order logistic regression on labels stays clearly below the oracle
    y_train = np.array([r["click"] for r in small["skeleton_train"]])
    y_test = np.array([r["click"] for r in small["skeleton_test"]])
    model = LogisticRegression(C=0.3, max_iter=300).fit(x_train, y_train)
    auc_lr = roc_auc_score(y_test, model.predict_proba(x_test)[:, 1])
    auc_oracle = roc_auc_score(y_test, small["truth_test"].p_ctr)
    assert auc_lr > 0.55
    assert auc_oracle - auc_lr > 0.03
    shares = small["summary"].ctr_logit_variance_shares
    assert sum(shares[k] for k in ("user_x_item", "age_x_category", "affinity")) > 0.4


# ------------------------------------------------------------------------------ determinism


def test_same_config_same_bytes_regardless_of_chunk_rows(tmp_path):
    a = syn.write_synthetic(tmp_path / "a", syn.SyntheticConfig(**TINY))
    b = syn.write_synthetic(tmp_path / "b", syn.SyntheticConfig(**dict(TINY, chunk_rows=333)))
    c = syn.write_synthetic(tmp_path / "c", syn.SyntheticConfig(**TINY))
    for name in (*syn.RAW_FILE_NAMES, *syn.TRUTH_FILE_NAMES):
        assert (
            sha(tmp_path / "a" / name) == sha(tmp_path / "b" / name) == sha(tmp_path / "c" / name)
        )
    assert a.fingerprint == c.fingerprint
    assert a.splits["train"].oracle_auc_ctr == b.splits["train"].oracle_auc_ctr


def test_different_seed_different_data(tmp_path):
    syn.write_synthetic(tmp_path / "a", syn.SyntheticConfig(**TINY))
    syn.write_synthetic(tmp_path / "b", syn.SyntheticConfig(**dict(TINY, seed=7)))
    for name in (*syn.RAW_FILE_NAMES, *syn.TRUTH_FILE_NAMES):
        assert sha(tmp_path / "a" / name) != sha(tmp_path / "b" / name)
    ta = pd.read_parquet(tmp_path / "a" / "truth_train.parquet")
    tb = pd.read_parquet(tmp_path / "b" / "truth_train.parquet")
    assert not np.allclose(ta.p_ctr, tb.p_ctr)


def test_rates_are_configurable(tmp_path):
    config = syn.SyntheticConfig(**dict(TINY, ctr_rate=0.15, cvr_rate=0.3, n_train_rows=8_000))
    summary = syn.write_synthetic(tmp_path, config)
    truth = pd.read_parquet(tmp_path / "truth_train.parquet")
    assert abs(truth.p_ctr.mean() / 0.15 - 1) < 0.1
    assert abs((truth.p_ctr * truth.p_cvr).sum() / truth.p_ctr.sum() / 0.3 - 1) < 0.15
    assert 0.1 < summary.splits["train"].ctr < 0.2


# ----------------------------------------------------------------------------------- config


def test_fingerprint_and_config_checks():
    base = syn.SyntheticConfig()
    assert base.fingerprint() == syn.SyntheticConfig().fingerprint()
    assert re.match(r"^[0-9a-f]{16}$", base.fingerprint())
    assert base.fingerprint() != syn.SyntheticConfig(seed=1).fingerprint()
    assert base.fingerprint() != syn.SyntheticConfig(n_train_rows=1000).fingerprint()
    assert syn.SyntheticConfig.from_mapping({"n_users": 10}) == syn.SyntheticConfig(n_users=10)
    assert syn.SyntheticConfig.from_mapping(None) == base
    with pytest.raises(ValueError, match="unknown synthetic data parameter"):
        syn.SyntheticConfig.from_mapping({"n_user": 10})
    with pytest.raises(ValueError):
        syn.SyntheticConfig(ctr_rate=1.5)
    with pytest.raises(ValueError):
        syn.SyntheticConfig(n_train_rows=0)
    with pytest.raises(ValueError):
        syn.SyntheticConfig(n_categories=3)
    assert len(syn.ALL_FIELDS) == 23 == len(set(syn.ALL_FIELDS))
    assert len(syn.RAW_FILE_NAMES) == 4


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    original = syn_processes.write_chunk

    def fail_on_test(config, world, calib, task, *args):
        if task.split_key == 1:
            raise KeyboardInterrupt
        return original(config, world, calib, task, *args)

    monkeypatch.setattr(syn_processes, "write_chunk", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        syn.write_synthetic(tmp_path, syn.SyntheticConfig(**TINY))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------- second world: keys beyond the default

# Recorded before the keys below existed: the default world must stay byte-for-byte the same.
TINY_DIGEST = "ddf24eefaf64df3fc40d5b711fc9c405a21863a64e8472a2d73f4d3b24cbc315"
TINY_FINGERPRINT = "8f6d621271069a53"
# The generator's defaults are the embedded world of conf/base (2M / 400k rows), whose
# fingerprint `make run`'s data has always had.
DEFAULT_FINGERPRINT = "46bbc16f26bf81c7"
WORLD2_CONF = Path(__file__).resolve().parents[2] / "conf" / "world2"


def data_digest(folder: Path) -> str:
    """sha256 of the four raw files' bytes and of the truth columns' values."""
    h = hashlib.sha256()
    for name in syn.RAW_FILE_NAMES:
        h.update((folder / name).read_bytes())
    for name in syn.TRUTH_FILE_NAMES:
        truth = pd.read_parquet(folder / name)
        for column in truth.columns:
            h.update(np.ascontiguousarray(truth[column].to_numpy()).tobytes())
    return h.hexdigest()


def ids_by_field(rows: list[dict], records: dict[str, dict]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for feats in [r["f"] for r in rows] + list(records.values()):
        for field, values in feats.items():
            out.setdefault(field, set()).update(fid for fid, _ in values)
    return out


def test_new_keys_at_default_leave_the_default_world_unchanged(tmp_path):
    assert syn.SyntheticConfig().fingerprint() == DEFAULT_FINGERPRINT
    config = syn.SyntheticConfig(**TINY)
    assert config.fingerprint() == TINY_FINGERPRINT
    explicit = syn.SyntheticConfig(
        **TINY, test_new_user_fraction=0, test_new_item_fraction=0.0, affinity_shape="linear"
    )
    assert explicit == config and explicit.fingerprint() == TINY_FINGERPRINT
    syn.write_synthetic(tmp_path, explicit)
    assert data_digest(tmp_path) == TINY_DIGEST
    for change in (
        dict(test_new_user_fraction=0.2),
        dict(test_new_item_fraction=0.2),
        dict(affinity_shape="saturating"),
    ):
        assert syn.SyntheticConfig(**TINY, **change).fingerprint() != TINY_FINGERPRINT, change


@pytest.mark.parametrize(
    "key, bad",
    [
        ("test_new_user_fraction", -0.1),
        ("test_new_user_fraction", 0.95),
        ("test_new_user_fraction", "half"),
        ("test_new_item_fraction", 1.0),
        ("test_new_item_fraction", True),
        ("affinity_shape", "quadratic"),
        ("affinity_shape", None),
    ],
)
def test_new_keys_are_validated(key, bad):
    with pytest.raises(ValueError, match=f"(?s)SyntheticConfig.*{key}"):
        syn.SyntheticConfig(**{key: bad})
    with pytest.raises(ValueError, match=key):
        syn.SyntheticConfig.from_mapping({key: bad})


NEW_IDS = dict(
    TINY,
    n_train_rows=12_000,
    n_test_rows=9_000,
    test_new_user_fraction=0.4,
    test_new_item_fraction=0.2,
)


def test_test_only_users_and_items(tmp_path):
    config = syn.SyntheticConfig(**NEW_IDS)
    summary = syn.write_synthetic(tmp_path / "new", config)
    world = build_world(config)
    new_users = set(world.user_ids[world.n_old_users :].tolist())
    new_items = set(world.item_ids[world.n_old_items :].tolist())
    assert len(new_users) == round(config.n_users * 0.4 / 0.6)
    assert len(new_items) == round(config.n_items * 0.2 / 0.8)

    split = {}
    for s in syn.SPLITS:
        rows = read_skeleton(tmp_path / "new" / f"sample_skeleton_{s}.csv")
        records = read_common(tmp_path / "new" / f"common_features_{s}.csv")
        split[s] = dict(rows=rows, records=records, ids=ids_by_field(rows, records))
    train, test = split["train"], split["test"]
    # 1. the training files hold none of the new ids, in any field of either file
    for ids in train["ids"].values():
        assert not ids & (new_users | new_items)
    # 2. the new ids are ids of their own: no other (field, value) of the test split uses them
    for field, ids in test["ids"].items():
        assert not ids & new_users or field == "101"
        assert not ids & new_items or field == "205"
    # 3. the test split has them at about the asked shares
    record_users = [feats["101"][0][0] for feats in test["records"].values()]
    share_users = np.mean([u in new_users for u in record_users])
    assert abs(share_users - 0.4) < 4 * math.sqrt(0.24 / len(record_users)), share_users
    row_items = [r["f"]["205"][0][0] for r in test["rows"]]
    share_items = np.mean([i in new_items for i in row_items])
    assert abs(share_items - 0.2) < 4 * math.sqrt(0.16 / len(row_items)), share_items
    # 4. new users' profiles and new items' attributes use the usual vocabularies
    for field in ("124", "125", "126", "129"):
        assert test["ids"][field] <= train["ids"][field]
    new_rows = [r for r in test["rows"] if r["f"]["205"][0][0] in new_items]
    seen_cat = np.mean([r["f"]["206"][0][0] in train["ids"]["206"] for r in new_rows])
    assert seen_cat > 0.9
    # 5. the summary's unseen shares are what the files show
    train_users = train["ids"]["101"]
    test_users = set(record_users)
    s = summary.splits["test"]
    assert s.users == len(test_users)
    assert s.unseen_user_share == round(len(test_users - train_users) / len(test_users), 4)
    assert s.unseen_user_record_share == round(
        np.mean([u not in train_users for u in record_users]), 4
    )
    assert s.unseen_item_impression_share == round(
        np.mean([i not in train["ids"]["205"] for i in row_items]), 4
    )
    assert (
        s.unseen_user_share >= share_users - 0.05 and s.unseen_item_impression_share >= share_items
    )
    assert summary.splits["train"].unseen_user_share is None
    # 6. the test-only pools leave the training period exactly as it was
    syn.write_synthetic(
        tmp_path / "old",
        syn.SyntheticConfig(**dict(NEW_IDS, test_new_user_fraction=0, test_new_item_fraction=0)),
    )
    for name in ("sample_skeleton_train.csv", "common_features_train.csv", "truth_train.parquet"):
        assert sha(tmp_path / "new" / name) == sha(tmp_path / "old" / name)


def _cross_entries(row: dict) -> tuple:
    return tuple(
        sorted(
            (field, fid, value)
            for field in syn.CROSS_FIELDS
            for fid, value in row["f"].get(field, [])
        )
    )


def test_saturating_affinity_is_nonlinear_in_the_written_values(tmp_path):
    """Same world with the linear and the saturating affinity: every other term, the features
    and the pilot are the same, so the difference of the true CTR logits is a function of the
    cross fields' entries alone. It is one (rows with the same entries have the same
    difference), but not one linear in the written value, entity by entity."""
    config = dict(SMALL, n_test_rows=2_000)
    syn.write_synthetic(tmp_path / "lin", syn.SyntheticConfig(**config))
    syn.write_synthetic(
        tmp_path / "sat", syn.SyntheticConfig(**config, affinity_shape="saturating")
    )
    rows = read_skeleton(tmp_path / "sat" / "sample_skeleton_train.csv")
    rows_lin = read_skeleton(tmp_path / "lin" / "sample_skeleton_train.csv")
    assert [r["f"] for r in rows] == [r["f"] for r in rows_lin]
    for name in ("common_features_train.csv", "common_features_test.csv"):
        assert sha(tmp_path / "sat" / name) == sha(tmp_path / "lin" / name)

    def logit(folder: Path) -> np.ndarray:
        p = pd.read_parquet(folder / "truth_train.parquet").p_ctr.to_numpy()
        return np.log(p) - np.log1p(-p)

    diff = logit(tmp_path / "sat") - logit(tmp_path / "lin")
    # 1. a function of the written cross entries
    by_entries: dict[tuple, list[float]] = {}
    for r, d in zip(rows, diff, strict=True):
        by_entries.setdefault(_cross_entries(r), []).append(d)
    assert max(np.ptp(v) for v in by_entries.values()) < 1e-6
    assert np.ptp(by_entries[()]) < 1e-6  # no cross entry: the intercepts' difference only
    # 2. rows with a single cross entry: per (field, id), is diff affine in the written value?
    single: dict[tuple, list[tuple[float, float]]] = {}
    for r, d in zip(rows, diff, strict=True):
        entries = _cross_entries(r)
        if len(entries) == 1:
            field, fid, value = entries[0]
            single.setdefault((field, fid), []).append((float(value), d))
    residual = within = 0.0
    n_fitted = 0
    for points in single.values():
        w, d = np.array(points).T
        if len(np.unique(w)) < 3:
            continue
        coef = np.polyfit(w, d, 1)
        residual += ((d - np.polyval(coef, w)) ** 2).sum()
        within += ((d - d.mean()) ** 2).sum()
        n_fitted += 1
    assert n_fitted > 20
    # linear entity by entity would leave nothing; the saturating shape leaves a good part
    assert residual / within > 0.05, residual / within
    # 3. heterogeneous: at one written value, the effect differs from entity to entity (a shape
    #    common to all entities would make diff the same for all of them)
    at_value: dict[str, list[float]] = {}
    for (field, _), points in single.items():
        for value, d in dict(points).items():
            at_value.setdefault(f"{field} {value}", []).append(d)
    common = max(at_value.values(), key=len)
    assert len(common) > 20
    assert np.std(common) > 0.2 * diff.std(), (np.std(common), diff.std())


def test_long_behaviour_lists(tmp_path):
    config = syn.SyntheticConfig(
        **dict(
            TINY,
            n_shops=3_000,
            n_brands=2_000,
            n_intentions=1_500,
            behaviour_events_mean=300.0,
            n_test_rows=1_000,
        )
    )
    summary = syn.write_synthetic(tmp_path, config)
    for split in syn.SPLITS:
        records = read_common(tmp_path / f"common_features_{split}.csv")
        lengths = {
            f: [len(feats.get(f, [])) for feats in records.values()] for f in syn.BEHAVIOUR_FIELDS
        }
        means = {f: round(float(np.mean(v)), 2) for f, v in lengths.items()}
        assert summary.splits[split].behaviour_list_mean == means
        assert 350 < sum(means.values()) < 800, means
        # every event is counted once in each list: the four lists' counts sum to the events
        events = []
        for feats in records.values():
            totals = {
                sum(round(math.expm1(float(v))) for _, v in feats.get(f, []))
                for f in syn.BEHAVIOUR_FIELDS
            }
            assert len(totals) == 1
            events.append(totals.pop())
        assert abs(np.mean(events) / config.behaviour_events_mean - 1) < 0.12


def test_world2_environment(tmp_path):
    import yaml

    params = yaml.safe_load((WORLD2_CONF / "parameters.yml").read_text())
    assert set(params) == {"synthetic"}
    config = syn.SyntheticConfig.from_mapping(params["synthetic"])
    assert (config.n_train_rows, config.n_test_rows) == (600_000, 300_000)
    assert (config.n_users, config.n_items) == (40_000, 60_000)
    assert config.affinity_shape == "saturating" and config.test_new_item_fraction > 0
    world_globals = yaml.safe_load((WORLD2_CONF / "globals.yml").read_text())
    assert world_globals == {
        "data_root": "data/world2",
        "raw_dir": "data/world2/01_raw/aliccp_synthetic",
    }
    # scaled down 20 times, the world keeps its shape
    scale = {
        k: getattr(config, k) // 20 for k in ("n_train_rows", "n_test_rows", "n_users", "n_items")
    }
    small = syn.SyntheticConfig(**{**config.to_dict(), **scale})
    summary = syn.write_synthetic(tmp_path, small)
    test = summary.splits["test"]
    assert 0.4 < test.unseen_user_share < 0.65
    assert 0.08 < test.unseen_item_impression_share < 0.2
    assert 350 < sum(test.behaviour_list_mean.values()) < 650
    assert abs(test.mean_p_ctr / config.ctr_rate - 1) < 0.2, test.mean_p_ctr


def test_one_definition_of_the_keys():
    """The generator's config is the project's parameters: same keys, defaults and checks."""
    from rec_pipeline.config import ConfigError, SyntheticParams, load_config

    assert issubclass(syn.SyntheticConfig, SyntheticParams)
    assert set(syn.SyntheticConfig.model_fields) == set(SyntheticParams.model_fields)
    assert SyntheticParams().build() == syn.SyntheticConfig()
    params = SyntheticParams(**TINY)
    assert params.build().fingerprint() == TINY_FINGERPRINT
    for bad in (dict(n_users=True), dict(n_users=2.0), dict(seed="1"), dict(ctr_rate=1.0)):
        with pytest.raises(ValueError):
            SyntheticParams(**bad)
    with pytest.raises(ConfigError, match="synthetic.n_train_rows"):
        load_config({"synthetic": {"n_train_rows": 0}})

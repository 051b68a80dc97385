"""Tests of rec_pipeline.metrics: exact AUC, log loss, calibration, correction, metric dict."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import auc as sk_trapezoid
from sklearn.metrics import log_loss, roc_auc_score

from rec_pipeline.metrics.auc import AucResult, auc_value, roc_auc, roc_curve_points
from rec_pipeline.metrics.calibration import (
    calibration_bins,
    correct_negative_sampling,
    logloss,
)
from rec_pipeline.metrics.evaluate import compute_metrics, flat_metrics, primary_auc

TOL = 1e-9


def _data(n: int, pos_rate: float, seed: int, shift: float = 0.5):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < pos_rate
    s = rng.standard_normal(n) + shift * y
    return s, y


def _both_paths(s, y):
    """AUC of NumPy arrays and of the same values given as torch tensors."""
    a = roc_auc(s, y)
    b = roc_auc(torch.as_tensor(np.asarray(s)), torch.as_tensor(np.asarray(y)))
    return a, b


# --------------------------------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,pos_rate", [(2, 0.5), (17, 0.3), (1000, 0.04), (50_000, 0.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_auc_random_matches_sklearn(n, pos_rate, seed):
    s, y = _data(n, pos_rate, seed)
    y[0], y[1] = True, False  # both classes
    ref = roc_auc_score(y, s)
    a, b = _both_paths(s, y)
    assert abs(a.value - ref) < TOL
    assert abs(b.value - ref) < TOL
    assert a.n == n and a.n_pos == int(y.sum()) and a.reason is None


@pytest.mark.parametrize(
    "quantise",
    [
        lambda s: np.round(s, 2),
        lambda s: np.round(s, 0),
        lambda s: torch.as_tensor(s).to(torch.bfloat16).float().numpy(),
        lambda s: (s > 0).astype(np.float64),
        lambda s: np.floor(s * 3) / 3,
    ],
    ids=["round2", "round0", "bf16", "binary", "thirds"],
)
def test_auc_heavily_tied_matches_sklearn(quantise):
    s, y = _data(20_000, 0.1, 3)
    s = quantise(1 / (1 + np.exp(-s)))
    assert np.unique(s).size < 5000  # really tied
    ref = roc_auc_score(y, s)
    a, b = _both_paths(s, y)
    assert abs(a.value - ref) < TOL
    assert abs(b.value - ref) < TOL


def test_auc_bf16_tensor_input():
    s, y = _data(10_000, 0.2, 4)
    t = torch.as_tensor(s).to(torch.bfloat16)
    ref = roc_auc_score(y, t.float().numpy())
    assert abs(roc_auc(t, torch.as_tensor(y)).value - ref) < TOL
    assert abs(roc_auc(t, y).value - ref) < TOL


def test_auc_all_tied_is_half():
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    a, b = _both_paths(np.full(7, 0.3), y)
    assert a.value == 0.5 and b.value == 0.5
    assert roc_auc_score(y, np.full(7, 0.3)) == 0.5


def test_auc_hand_computed_with_ties():
    # pairs (pos, neg): pos scores 0.8, 0.5; neg scores 0.5, 0.2, 0.1
    # 0.8 beats all 3; 0.5 ties 1 and beats 2 -> (3 + 2.5) / 6
    s = np.array([0.8, 0.5, 0.5, 0.2, 0.1])
    y = np.array([1, 1, 0, 0, 0])
    a, b = _both_paths(s, y)
    assert a.value == pytest.approx(5.5 / 6, abs=1e-15)
    assert b.value == pytest.approx(5.5 / 6, abs=1e-15)


@pytest.mark.parametrize(
    "labels", [[1], [0], [0, 0, 0], [1, 1]], ids=["n1pos", "n1neg", "neg", "pos"]
)
def test_auc_single_class_is_none_with_reason(labels):
    y = np.array(labels)
    s = np.linspace(0, 1, y.size)
    for r in _both_paths(s, y):
        assert isinstance(r, AucResult)
        assert r.value is None
        assert r.reason and ("only" in r.reason)
        assert r.n == y.size and r.n_pos == int(y.sum())
        assert not r.ok
    assert auc_value(s, y) is None


def test_auc_empty_and_nan():
    r = roc_auc(np.array([]), np.array([]))
    assert r.value is None and r.reason == "no rows" and r.n == 0
    r = roc_auc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
    assert r.value is None and "NaN" in r.reason
    r = roc_auc(torch.tensor([0.1, float("nan")]), torch.tensor([0, 1]))
    assert r.value is None and "NaN" in r.reason


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="binary"):
        roc_auc(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="length"):
        roc_auc(np.array([0.1, 0.2]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="binary"):
        roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 1.0]))


def test_auc_float32_vs_float64_and_label_dtypes():
    s, y = _data(30_000, 0.3, 5)
    s32 = s.astype(np.float32)
    ref32 = roc_auc_score(y, s32)
    ref64 = roc_auc_score(y, s)
    for labels in (y, y.astype(np.int8), y.astype(np.float32), y.astype(np.int64)):
        assert abs(roc_auc(s32, labels).value - ref32) < TOL
        assert abs(roc_auc(s, labels).value - ref64) < TOL
    # float32 rounding creates ties that float64 does not have; both are exact for their input
    assert abs(roc_auc(s32, y).value - roc_auc(s, y).value) < 1e-4


def test_auc_torch_and_numpy_inputs_agree():
    s, y = _data(25_000, 0.05, 6)
    ref = roc_auc_score(y, s)
    variants = [
        roc_auc(s, y),
        roc_auc(torch.from_numpy(s), torch.from_numpy(y)),
        roc_auc(torch.from_numpy(s), y),
        roc_auc(s.tolist(), y.tolist()),
        roc_auc(torch.from_numpy(s).requires_grad_(True), torch.from_numpy(y)),
        roc_auc(torch.from_numpy(s).reshape(-1, 1), torch.from_numpy(y)),
        roc_auc(torch.from_numpy(s), torch.from_numpy(y)),
    ]
    for r in variants:
        assert abs(r.value - ref) < TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_auc_cuda_matches_sklearn():
    s, y = _data(200_000, 0.04, 7)
    s = np.round(s, 2)
    ref = roc_auc_score(y, s)
    r = roc_auc(torch.as_tensor(s, device="cuda"), torch.as_tensor(y, device="cuda"))
    assert abs(r.value - ref) < TOL


def test_auc_two_million_rows():
    rng = np.random.default_rng(8)
    n = 2_000_000
    y = rng.random(n) < 0.039
    s = (1 / (1 + np.exp(-(rng.standard_normal(n) + 0.8 * y - 3)))).astype(np.float32)
    ref = roc_auc_score(y, s)
    assert abs(roc_auc(s, y).value - ref) < TOL
    assert abs(roc_auc(torch.from_numpy(s), torch.from_numpy(y)).value - ref) < TOL


def test_roc_curve_points_downsampled_and_consistent():
    s, y = _data(100_000, 0.02, 9, shift=1.0)
    fpr, tpr = roc_curve_points(s, y, max_points=200)
    assert fpr.size <= 202
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # the area under the downsampled curve is close to the exact AUC
    assert abs(sk_trapezoid(fpr, tpr) - roc_auc_score(y, s)) < 5e-3


def test_roc_curve_points_small_exact_with_ties():
    s = np.array([0.8, 0.5, 0.5, 0.2, 0.1])
    y = np.array([1, 1, 0, 0, 0])
    fpr, tpr = roc_curve_points(s, y)
    assert sk_trapezoid(fpr, tpr) == pytest.approx(5.5 / 6)
    f, t = roc_curve_points(s, np.zeros(5))
    assert f.size == 0 and t.size == 0


# --------------------------------------------------------------------------------------------------
# log loss, calibration, correction
# --------------------------------------------------------------------------------------------------


def test_logloss_matches_sklearn():
    rng = np.random.default_rng(10)
    p = rng.uniform(0.001, 0.999, 5000)
    y = (rng.random(5000) < p).astype(int)
    assert logloss(p, y) == pytest.approx(log_loss(y, p), abs=1e-12)
    assert logloss(p.astype(np.float32), y) == pytest.approx(
        log_loss(y, p.astype(np.float32).astype(np.float64)), abs=1e-9
    )
    assert logloss(torch.from_numpy(p), torch.from_numpy(y)) == pytest.approx(
        log_loss(y, p), abs=1e-12
    )


def test_logloss_is_stable_at_extremes():
    p = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([0, 1, 1, 0])
    v = logloss(p, y, eps=1e-7)
    assert math.isfinite(v)
    assert v == pytest.approx(-0.5 * (math.log(1e-7)), rel=1e-6)
    assert logloss(np.array([]), np.array([])) is None


def _brute_force_bins(p, y, edges):
    out = []
    nb = len(edges) - 1
    for i in range(nb):
        lo, hi = edges[i], edges[i + 1]
        members = [
            (pi, yi)
            for pi, yi in zip(p, y, strict=True)
            if (lo <= pi < hi) or (i == nb - 1 and pi == hi)
        ]
        if members:
            out.append(
                {
                    "lo": lo,
                    "hi": hi,
                    "n": len(members),
                    "mean_pred": sum(m[0] for m in members) / len(members),
                    "observed": sum(m[1] for m in members) / len(members),
                }
            )
    return out


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibration_bins_match_brute_force(strategy):
    rng = np.random.default_rng(11)
    p = rng.beta(1, 8, 3000)
    p[:200] = np.round(p[:200], 2)  # some ties
    y = (rng.random(3000) < p).astype(int)
    bins = calibration_bins(p, y, n_bins=7, strategy=strategy)
    edges = (
        np.linspace(0, 1, 8)
        if strategy == "uniform"
        else np.unique(np.quantile(p, np.linspace(0, 1, 8)))
    )
    ref = _brute_force_bins(p.tolist(), y.tolist(), edges.tolist())
    assert len(bins) == len(ref)
    for b, r in zip(bins, ref, strict=True):
        assert b["n"] == r["n"]
        for key in ("lo", "hi", "mean_pred", "observed"):
            assert b[key] == pytest.approx(r[key], abs=1e-12)
    assert sum(b["n"] for b in bins) == 3000
    json.dumps(bins)


def test_calibration_bins_edge_cases():
    assert calibration_bins([], [], 5) == []
    bins = calibration_bins(np.full(10, 0.2), np.arange(10) % 2, 5, "quantile")
    assert len(bins) == 1 and bins[0]["n"] == 10 and bins[0]["observed"] == 0.5
    bins = calibration_bins([0.1, 0.9], [0, 1], 4, "uniform", extra={"raw": [0.3, 0.7]})
    assert [b["raw"] for b in bins] == [0.3, 0.7]
    with pytest.raises(ValueError):
        calibration_bins([0.1], [0], 3, "bogus")


def test_correct_negative_sampling_formula():
    q = np.array([1e-6, 0.01, 0.1, 0.5, 0.9, 0.999999])
    keep = 0.1
    expected = np.array([float(x) / (float(x) + (1.0 - float(x)) / keep) for x in q])
    assert np.allclose(correct_negative_sampling(q, keep), expected, rtol=1e-14, atol=0)
    assert correct_negative_sampling(0.5, 0.25) == pytest.approx(
        0.5 / (0.5 + 0.5 / 0.25), rel=1e-15
    )
    # keep = 1 is the identity, bit for bit
    for x in (q, q.astype(np.float32), 0.37):
        out = correct_negative_sampling(x, 1.0)
        assert out is x
    # the correction lowers probabilities when negatives were dropped
    assert np.all(correct_negative_sampling(q, keep) <= q)
    with pytest.raises(ValueError):
        correct_negative_sampling(q, 0.0)
    with pytest.raises(ValueError):
        correct_negative_sampling(q, 1.5)


# --------------------------------------------------------------------------------------------------
# compute_metrics
# --------------------------------------------------------------------------------------------------


def _small_case():
    click = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    conv = np.array([1, 0, 0, 0, 0, 0, 1, 0])
    p_ctr = np.array([0.9, 0.8, 0.4, 0.3, 0.6, 0.1, 0.7, 0.2])
    p_cvr = np.array([0.5, 0.2, 0.1, 0.9, 0.1, 0.1, 0.4, 0.3])
    return click, conv, p_ctr, p_cvr


def test_compute_metrics_small_hand_case():
    click, conv, p_ctr, p_cvr = _small_case()
    m = compute_metrics(click, conv, p_ctr, p_cvr, esmm=True, keep_prob=1.0, n_bins=2)
    json.dumps(m)
    assert m["n_rows"] == 8
    ctr, cvr, ctcvr = (m["tasks"][t] for t in ("ctr", "cvr", "ctcvr"))
    # CTR: pos {0.9,0.8,0.4,0.7}, neg {0.3,0.6,0.1,0.2}: 0.4 beats 3 of 4, others all -> 15/16
    assert ctr["auc"] == pytest.approx(15 / 16)
    assert ctr["n"] == 8 and ctr["n_pos"] == 4
    # CVR on clicked rows only: p_cvr {0.5,0.2,0.1,0.4}, conv {1,0,0,1} -> 1.0
    assert cvr["auc"] == pytest.approx(1.0)
    assert cvr["n"] == 4 and cvr["n_pos"] == 2
    # CTCVR: products; positives 0.45 and 0.28 beat every negative (max 0.27) -> 1.0
    assert ctcvr["auc"] == pytest.approx(1.0)
    assert ctcvr["n"] == 8 and ctcvr["n_pos"] == 2
    assert m["auc_primary"] == pytest.approx(1.0 + 0.2 * 15 / 16 + 0.2 * 1.0)
    assert m["auc_primary_reason"] is None
    assert ctr["logloss"] == pytest.approx(log_loss(click, p_ctr))
    assert ctr["logloss_uncorrected"] == pytest.approx(ctr["logloss"])
    assert cvr["logloss"] == pytest.approx(log_loss(conv[click == 1], p_cvr[click == 1]))
    assert ctcvr["logloss"] == pytest.approx(log_loss(conv, p_ctr * p_cvr))
    assert sum(b["n"] for b in ctr["calibration"]) == 8
    assert sum(b["n"] for b in cvr["calibration"]) == 4
    assert ctr["oracle_auc"] is None and ctr["oracle_gap"] is None


def test_compute_metrics_cvr_uses_clicked_rows_only():
    click, conv, p_ctr, p_cvr = _small_case()
    # Garbage p_cvr on unclicked rows must not change any CVR number.
    p_cvr2 = p_cvr.copy()
    p_cvr2[click == 0] = np.array([0.99, 0.01, 0.5, 0.77])
    a = compute_metrics(click, conv, p_ctr, p_cvr, esmm=False, keep_prob=1.0, n_bins=3)
    b = compute_metrics(click, conv, p_ctr, p_cvr2, esmm=False, keep_prob=1.0, n_bins=3)
    assert a["tasks"]["cvr"] == b["tasks"]["cvr"]
    assert a["tasks"]["ctcvr"]["logloss"] != b["tasks"]["ctcvr"]["logloss"]


def test_compute_metrics_primary_formula_both_modes():
    click, conv, p_ctr, p_cvr = _small_case()
    m_esmm = compute_metrics(click, conv, p_ctr, p_cvr, esmm=True, keep_prob=1.0, n_bins=2)
    m_plain = compute_metrics(click, conv, p_ctr, p_cvr, esmm=False, keep_prob=1.0, n_bins=2)
    t = m_plain["tasks"]
    assert m_plain["auc_primary"] == pytest.approx((t["ctr"]["auc"] + t["cvr"]["auc"]) / 2)
    t = m_esmm["tasks"]
    assert m_esmm["auc_primary"] == pytest.approx(
        t["ctcvr"]["auc"] + 0.2 * t["ctr"]["auc"] + 0.2 * t["cvr"]["auc"]
    )
    assert primary_auc(0.7, 0.6, 0.65, esmm=True) == (pytest.approx(0.65 + 0.14 + 0.12), None)
    assert primary_auc(0.7, 0.6, None, esmm=False) == (pytest.approx(0.65), None)
    value, reason = primary_auc(0.7, None, 0.6, esmm=True)
    assert value is None and "auc_cvr" in reason


def test_compute_metrics_undefined_task_gives_none_primary():
    click = np.array([1, 0, 1, 0])
    conv = np.zeros(4, dtype=int)  # no conversion at all
    m = compute_metrics(
        click, conv, [0.6, 0.4, 0.7, 0.2], [0.1, 0.2, 0.3, 0.4], esmm=True, n_bins=2
    )
    json.dumps(m)
    assert m["tasks"]["ctr"]["auc"] == 1.0
    assert m["tasks"]["cvr"]["auc"] is None and m["tasks"]["cvr"]["auc_reason"]
    assert m["tasks"]["ctcvr"]["auc"] is None
    assert m["auc_primary"] is None and "auc_cvr" in m["auc_primary_reason"]
    flat = flat_metrics(m)
    assert "auc_cvr" not in flat and flat["auc_ctr"] == 1.0


def test_compute_metrics_negative_sampling_correction_and_truth():
    rng = np.random.default_rng(12)
    n = 20_000
    t_ctr = rng.uniform(0.01, 0.3, n)
    t_cvr = rng.uniform(0.01, 0.5, n)
    click = (rng.random(n) < t_ctr).astype(np.int8)
    conv = ((rng.random(n) < t_cvr) & (click == 1)).astype(np.int8)
    keep = 0.25
    q = t_ctr / (t_ctr + keep * (1 - t_ctr))  # what a model trained on sampled data would say
    p_cvr = np.clip(t_cvr + rng.normal(0, 0.05, n), 1e-4, 1 - 1e-4)
    m = compute_metrics(
        click,
        conv,
        q,
        p_cvr,
        esmm=True,
        keep_prob=keep,
        n_bins=5,
        truth={"p_ctr": t_ctr, "p_cvr": t_cvr},
    )
    json.dumps(m)
    ctr, cvr, ctcvr = (m["tasks"][t] for t in ("ctr", "cvr", "ctcvr"))
    p_corr = correct_negative_sampling(q, keep)
    assert np.allclose(p_corr, t_ctr)
    assert ctr["logloss"] == pytest.approx(log_loss(click, p_corr))
    assert ctr["logloss_uncorrected"] == pytest.approx(log_loss(click, q))
    assert ctr["logloss"] < ctr["logloss_uncorrected"]
    assert ctr["auc"] == pytest.approx(roc_auc_score(click, q))  # monotone correction
    # The CTCVR AUC ranks the model's own product, whatever the correction (docs/model.md, Metrics) ...
    assert ctcvr["auc"] == pytest.approx(roc_auc_score(conv, q * p_cvr))
    assert "auc_uncorrected" not in ctcvr
    # ... which here ranks differently from the corrected product, so the check has teeth.
    assert roc_auc_score(conv, p_corr * p_cvr) != pytest.approx(ctcvr["auc"], abs=1e-9)
    assert ctcvr["logloss"] == pytest.approx(log_loss(conv, p_corr * p_cvr))
    for b in ctr["calibration"]:
        assert b["mean_pred_uncorrected"] > b["mean_pred"]
    # oracle = AUC of the true probabilities on the same rows
    assert ctr["oracle_auc"] == pytest.approx(roc_auc_score(click, t_ctr))
    sel = click == 1
    assert cvr["oracle_auc"] == pytest.approx(roc_auc_score(conv[sel], t_cvr[sel]))
    assert ctcvr["oracle_auc"] == pytest.approx(roc_auc_score(conv, t_ctr * t_cvr))
    assert ctr["oracle_gap"] == pytest.approx(ctr["oracle_auc"] - ctr["auc"])
    assert abs(ctr["oracle_gap"]) < 1e-12  # the corrected model is the truth here
    flat = flat_metrics(m)
    for key in ("auc_ctr", "auc_cvr", "auc_ctcvr", "auc_primary", "logloss_ctr", "oracle_gap_cvr"):
        assert isinstance(flat[key], float)
    assert flat["logloss_uncorrected_ctcvr"] == pytest.approx(ctcvr["logloss_uncorrected"])


def test_compute_metrics_torch_inputs_match_numpy():
    rng = np.random.default_rng(13)
    n = 5000
    click = (rng.random(n) < 0.2).astype(np.int64)
    conv = ((rng.random(n) < 0.3) & (click == 1)).astype(np.int64)
    p_ctr = rng.random(n).astype(np.float32)
    p_cvr = rng.random(n).astype(np.float32)
    a = compute_metrics(click, conv, p_ctr, p_cvr, esmm=True, keep_prob=0.5, n_bins=4)
    b = compute_metrics(
        torch.from_numpy(click),
        torch.from_numpy(conv),
        torch.from_numpy(p_ctr),
        torch.from_numpy(p_cvr).to(torch.bfloat16).float(),
        esmm=True,
        keep_prob=0.5,
        n_bins=4,
    )
    c = compute_metrics(
        torch.from_numpy(click).bool(),
        torch.from_numpy(conv).bool(),
        torch.from_numpy(p_ctr),
        torch.from_numpy(p_cvr),
        esmm=True,
        keep_prob=0.5,
        n_bins=4,
    )
    assert flat_metrics(a) == pytest.approx(flat_metrics(c), abs=1e-12)
    assert flat_metrics(a)["auc_ctr"] == pytest.approx(flat_metrics(b)["auc_ctr"], abs=1e-12)
    with pytest.raises(ValueError, match="rows"):
        compute_metrics(click[:-1], conv, p_ctr, p_cvr, esmm=True)


def test_flat_metrics_of_flat_dict():
    assert flat_metrics({"auc_ctr": 0.7, "note": "x", "n": 3, "bad": None}) == {
        "auc_ctr": 0.7,
        "n": 3.0,
    }


def test_ctr_pos_weight_correction_divides_the_odds():
    from rec_pipeline.metrics.calibration import rescale_odds

    click = np.array([0, 1, 0, 1, 0, 0], np.int8)
    q = np.array([0.5, 0.8, 0.2, 0.9, 0.5, 0.1])
    m = compute_metrics(
        click, np.zeros(6), q, np.full(6, 0.1), esmm=True, keep_prob=0.5, ctr_pos_weight=4.0
    )
    # odds(p) = odds(q) * keep / w, in float64 by hand
    odds = q / (1 - q) * 0.5 / 4.0
    expect = odds / (1 + odds)
    got_mean = m["tasks"]["ctr"]["mean_pred"]
    assert abs(got_mean - expect.mean()) < 1e-12
    assert np.allclose(rescale_odds(q, 0.125), expect, rtol=0, atol=1e-15)
    assert m["ctr_pos_weight"] == 4.0
    # AUC does not depend on a monotone correction
    plain = compute_metrics(click, np.zeros(6), q, np.full(6, 0.1), esmm=True)
    assert m["tasks"]["ctr"]["auc"] == plain["tasks"]["ctr"]["auc"]
    with pytest.raises(ValueError):
        compute_metrics(click, np.zeros(6), q, q, esmm=True, ctr_pos_weight=0.0)


def test_fit_platt_matches_unregularised_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    from rec_pipeline.metrics.calibration import apply_platt, fit_platt

    rng = np.random.default_rng(3)
    z = rng.normal(-2.0, 1.5, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.6 * z - 0.8)))).astype(np.float64)
    p = 1 / (1 + np.exp(-z))  # an over-confident score: the truth is sigmoid(0.6 z - 0.8)
    a, b = fit_platt(p, y)
    ref = LogisticRegression(penalty=None, tol=1e-12, max_iter=1000).fit(z[:, None], y)
    assert a == pytest.approx(float(ref.coef_[0, 0]), abs=1e-5)
    assert b == pytest.approx(float(ref.intercept_[0]), abs=1e-5)
    q = apply_platt(p, (a, b))
    assert q.mean() == pytest.approx(y.mean(), rel=1e-6)  # the intercept's score equation
    assert log_loss(y, q) < log_loss(y, p)
    assert fit_platt(p, np.zeros_like(y)) == (1.0, 0.0)  # one class: nothing to fit
    # A constant score: only the intercept can move, to the observed rate's log-odds.
    a, b = fit_platt(np.full(1000, 0.3), (np.arange(1000) < 100).astype(float))
    assert apply_platt(np.array([0.3]), (a, b))[0] == pytest.approx(0.1, rel=1e-4)
    # A score that ranks backwards is left as it is (a must stay > 0 to keep the ranking).
    assert fit_platt(1 - p, y) == (1.0, 0.0)


def test_fit_platt_over_many_blocks_matches_one_block(monkeypatch):
    """The fit's passes run over fixed row blocks on threads: 20 blocks give the fit of one."""
    from rec_pipeline.metrics import calibration

    rng = np.random.default_rng(5)
    z = rng.normal(-2.5, 1.2, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(1.4 * z + 0.5)))).astype(np.int8)
    p = (1 / (1 + np.exp(-z))).astype(np.float32)
    whole = calibration.fit_platt(p, y)
    monkeypatch.setattr(calibration, "_PLATT_BLOCK", 1_000)
    blocks = calibration.fit_platt(p, y)
    assert blocks == pytest.approx(whole, rel=1e-12, abs=1e-12)
    assert blocks[0] == pytest.approx(1.4, abs=0.1)  # and it recovers the planted slope

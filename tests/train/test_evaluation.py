"""The one evaluation path: fp32 prediction, calibration, metrics and predictions agree with
references computed independently (scikit-learn, float64 NumPy)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from rec_pipeline.train.evaluation import (
    Correction,
    align_truth,
    evaluate_model,
    fit_calibration,
)


class ToySplit:
    """A split of ``n`` rows with 3 dense features, batched in order (the loader's interface)."""

    def __init__(self, n: int = 1500, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.device = torch.device("cpu")
        self.x = rng.standard_normal((n, 3)).astype(np.float32)
        click = rng.random(n) < 1 / (1 + np.exp(-(self.x[:, 0] - 1.5)))
        conv = click & (rng.random(n) < 1 / (1 + np.exp(-(self.x[:, 1] - 0.5))))
        self.click_host = click.astype(np.int8)
        self.conversion_host = conv.astype(np.int8)
        self.sample_id = rng.permutation(n).astype(np.int64) + 1000

    def __len__(self) -> int:
        return len(self.x)

    def iter_batches(self, batch_size: int):
        for start in range(0, len(self.x), batch_size):
            yield SimpleNamespace(x=torch.from_numpy(self.x[start : start + batch_size]))


class ToyModel(torch.nn.Module):
    """Two logits from one linear layer; dropout so that eval mode matters."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        with torch.no_grad():  # informative but miscalibrated logits
            self.linear.weight.copy_(torch.tensor([[0.8, 0.1, 0.2], [0.1, 0.7, -0.2]]))
            self.linear.bias.copy_(torch.tensor([-1.0, 0.0]))
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, batch):
        z = self.linear(self.drop(batch.x))  # [B, 2]
        return SimpleNamespace(logits={"ctr": z[:, 0], "cvr": z[:, 1]})


def _heads(model: ToyModel, data: ToySplit) -> tuple[np.ndarray, np.ndarray]:
    """The heads' probabilities in float64, computed by hand from the weights."""
    w = model.linear.weight.detach().double().numpy()
    b = model.linear.bias.detach().double().numpy()
    z = data.x.astype(np.float64) @ w.T + b
    return 1 / (1 + np.exp(-z[:, 0])), 1 / (1 + np.exp(-z[:, 1]))


def test_metrics_and_predictions_match_references_with_odds_correction():
    data, model = ToySplit(), ToyModel()
    model.train()
    keep, weight = 0.25, 2.0
    res = evaluate_model(
        model,
        data,
        batch_size=128,
        esmm=True,
        correction=Correction(keep_prob=keep, ctr_pos_weight=weight),
        n_bins=5,
        with_predictions=True,
    )
    assert model.training  # the caller's mode is restored
    p_ctr, p_cvr = _heads(model, data)
    click, conv = data.click_host == 1, data.conversion_host == 1
    tasks = res.metrics["tasks"]
    assert tasks["ctr"]["auc"] == pytest.approx(roc_auc_score(click, p_ctr), abs=1e-6)
    assert tasks["cvr"]["auc"] == pytest.approx(roc_auc_score(conv[click], p_cvr[click]), abs=1e-6)
    assert tasks["ctcvr"]["auc"] == pytest.approx(roc_auc_score(conv, p_ctr * p_cvr), abs=1e-6)
    primary = tasks["ctcvr"]["auc"] + 0.2 * tasks["ctr"]["auc"] + 0.2 * tasks["cvr"]["auc"]
    assert res.metrics["auc_primary"] == pytest.approx(primary, rel=1e-12)
    # Odds multiplied by keep / weight, in float64.
    f = keep / weight
    ctr_cal = p_ctr * f / (p_ctr * f + 1 - p_ctr)
    frame = res.predictions
    assert list(frame["sample_id"]) == list(data.sample_id)
    assert np.allclose(frame["p_ctr"], ctr_cal, rtol=1e-6)
    assert np.allclose(frame["p_cvr"], p_cvr, rtol=1e-6)
    assert np.allclose(frame["p_ctr_uncorrected"], p_ctr, rtol=1e-6)
    # The metrics use the same calibrated probabilities as the saved predictions.
    assert tasks["ctr"]["logloss"] == pytest.approx(log_loss(click, frame["p_ctr"]), rel=1e-9)
    assert tasks["ctcvr"]["logloss"] == pytest.approx(log_loss(conv, frame["p_ctcvr"]), rel=1e-9)
    assert tasks["ctr"]["logloss_uncorrected"] == pytest.approx(log_loss(click, p_ctr), rel=1e-6)
    assert tasks["ctr"]["mean_pred"] == pytest.approx(ctr_cal.mean(), rel=1e-6)


def test_platt_calibration_changes_probabilities_not_aucs():
    data, model = ToySplit(seed=1), ToyModel()
    plain = evaluate_model(model, data, batch_size=256, esmm=True)
    platt = {"ctr": [0.5, -1.0], "cvr": [2.0, 0.3]}
    res = evaluate_model(
        model,
        data,
        batch_size=256,
        esmm=True,
        correction=Correction(calibration=platt),
        with_predictions=True,
    )
    p_ctr, p_cvr = _heads(model, data)
    logit = np.log(p_ctr / (1 - p_ctr))
    assert np.allclose(res.predictions["p_ctr"], 1 / (1 + np.exp(-(0.5 * logit - 1.0))), rtol=1e-6)
    logit = np.log(p_cvr / (1 - p_cvr))
    assert np.allclose(res.predictions["p_cvr"], 1 / (1 + np.exp(-(2.0 * logit + 0.3))), rtol=1e-6)
    assert res.metrics["calibration_method"] == "platt"
    for task in ("ctr", "cvr", "ctcvr"):
        assert res.metrics["tasks"][task]["auc"] == plain.metrics["tasks"][task]["auc"]


def test_max_batches_truth_and_fit_calibration():
    data, model = ToySplit(seed=2), ToyModel()
    rng = np.random.default_rng(3)
    truth = pd.DataFrame(
        {
            "sample_id": data.sample_id,
            "p_ctr": rng.random(len(data)),
            "p_cvr": rng.random(len(data)),
        }
    ).sample(frac=1.0, random_state=4)  # another order: evaluation aligns it by sample_id
    res = evaluate_model(model, data, batch_size=100, esmm=False, max_batches=7, truth=truth)
    n = 700
    assert len(res.outputs) == n and res.metrics["n_rows"] == n
    click = data.click_host[:n] == 1
    by_id = truth.set_index("sample_id").loc[data.sample_id[:n]]
    oracle = roc_auc_score(click, by_id["p_ctr"])
    assert res.metrics["tasks"]["ctr"]["oracle_auc"] == pytest.approx(oracle, abs=1e-12)
    # Platt parameters: CTR on every row, CVR on the clicked rows only.
    params = fit_calibration(res.outputs)
    shifted = res.outputs.conversion.copy()
    shifted[~click] = 1 - shifted[~click]  # unclicked rows must not matter to CVR
    moved = fit_calibration(type(res.outputs)(**{**vars(res.outputs), "conversion": shifted}))
    assert moved["cvr"] == params["cvr"] != [1.0, 0.0]
    assert params["ctr"] != [1.0, 0.0]


@pytest.mark.parametrize("order", ["same", "shuffled"])
def test_align_truth_matches_a_lookup_by_sample_id(order):
    """The truth rows in the split's order, whether the table comes in that order (one
    comparison) or shuffled (sort and search); a split row the truth lacks gives no oracle."""
    rng = np.random.default_rng(4)
    sample_id = rng.choice(10**9, size=5_000, replace=False).astype(np.int64)
    truth = pd.DataFrame({"sample_id": sample_id, "p_ctr": rng.random(5_000)})
    truth["p_cvr"] = rng.random(5_000)
    if order == "shuffled":
        truth = truth.sample(frac=1.0, random_state=1).reset_index(drop=True)
    got = align_truth(truth, sample_id)
    by_id = {int(s): (c, v) for s, c, v in truth[["sample_id", "p_ctr", "p_cvr"]].itertuples(False)}
    assert got["p_ctr"].tolist() == [by_id[int(s)][0] for s in sample_id]
    assert got["p_cvr"].tolist() == [by_id[int(s)][1] for s in sample_id]
    assert align_truth(truth.iloc[1:], sample_id) is None

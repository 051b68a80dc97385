"""The trainer on real encoded data: it learns, it resumes exactly, it stores what it used."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from kedro_project import TINY, TRAINING, catalog, deep_merge, encoded

from rec_pipeline.config import load_config
from rec_pipeline.train.evaluation import Correction, evaluate_model
from rec_pipeline.train.loop import Trainer, model_from_checkpoint


@pytest.fixture(scope="module")
def data(encoded_project):
    params, meta, splits = encoded(encoded_project, ("train", "valid", "test"))
    truth = catalog(encoded_project, TRAINING).load("planted_truth_test")
    return params, meta, splits["train"], splits["valid"], splits["test"], truth


def _cfg(params: dict, **over):
    return load_config(deep_merge(params, over))


@pytest.mark.slow
def test_training_beats_a_constant_predictor(data):
    params, meta, train, valid, test, truth = data
    # The source's loss weights and table optimiser, so that both calibrations below have
    # something to undo (with them the raw CVR output is inflated well beyond the rate).
    cfg = _cfg(
        params,
        runtime={"epochs": 4, "valid_every": 20, "log_every": 20},
        loss={"static_pos_weight": {"ctr": 24.7, "ctcvr": 4800}},
        optim={"sparse": {"type": "adam", "lr": 0.002}},
    )
    result = Trainer(cfg, meta, train, valid).fit()
    model = model_from_checkpoint(result.checkpoint, "best")

    def scores(n_bins, truth=None, ctr_pos_weight=1.0, calibration=None):
        keep = meta["neg_keep_prob_train"]
        correction = Correction(keep, ctr_pos_weight, calibration)
        return evaluate_model(
            model,
            test,
            batch_size=4096,
            esmm=True,
            correction=correction,
            n_bins=n_bins,
            truth=truth,
        ).metrics

    metrics = scores(n_bins=5, truth=truth)
    ctr = metrics["tasks"]["ctr"]
    # Calibration: pos_weight 24.7 and keep 0.4 multiply the learnt odds by ~62; the corrected
    # probability is close to the observed click rate, the raw one several times off.
    w = result.checkpoint["best"]["pos_weight"]["ctr"]
    corrected = scores(ctr_pos_weight=w, n_bins=5)
    rate = corrected["tasks"]["ctr"]["pos_rate"]
    # (closed form, so only roughly: within 2x, where the raw output is far off)
    assert abs(corrected["tasks"]["ctr"]["mean_pred"] / rate - 1) < 1.0
    assert corrected["tasks"]["ctr"]["mean_pred_uncorrected"] > 3 * rate
    # Platt scaling fitted on validation: CTR and CVR probabilities match the observed test
    # rates (CVR's raw output is inflated by the CTCVR pos_weight), the AUCs are unchanged.
    platt = scores(n_bins=5, calibration=result.checkpoint["best"]["calibration"])
    for task in ("ctr", "cvr", "ctcvr"):
        block = platt["tasks"][task]
        assert abs(block["mean_pred"] / block["pos_rate"] - 1) < 0.3, (task, block)
        assert block["auc"] == metrics["tasks"][task]["auc"]
    cvr = platt["tasks"]["cvr"]
    assert cvr["mean_pred_uncorrected"] > 1.25 * cvr["pos_rate"]
    assert cvr["logloss"] < cvr["logloss_uncorrected"]
    # A constant scores AUC 0.5; the planted truth's oracle is ~0.78 on this data.
    assert ctr["auc"] > 0.62, ctr
    assert ctr["oracle_auc"] > ctr["auc"] - 0.02  # and no better than the oracle (sanity)
    assert metrics["tasks"]["ctcvr"]["auc"] > 0.6


@pytest.mark.slow
def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(data):
    params, meta, train, valid, _, _ = data
    # An explicit schedule length, so both runs see the same LR and pos_weight schedules.
    common = dict(
        optim={"lr_scheduler": {"total_steps": 30, "warmup_steps": 4}},
        runtime={"epochs": 10, "max_train_steps": 30, "valid_every": 10, "save_last": True},
    )
    full = Trainer(_cfg(params, **common), meta, train, valid).fit()
    half_cfg = _cfg(params, **deep_merge(common, {"runtime": {"max_train_steps": 13}}))
    half = Trainer(half_cfg, meta, train, valid).fit()
    assert half.checkpoint["last"]["step"] == 13  # mid-epoch: skipping batches is exercised
    resumed = Trainer(_cfg(params, **common), meta, train, valid, resume=half.checkpoint).fit()
    a, b = full.checkpoint["last"]["state_dict"], resumed.checkpoint["last"]["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The resumed run carries the history of the first part (which ended with a log at 13).
    steps = sorted(set(resumed.history.query("kind == 'train'")["step"]))
    assert steps == sorted({*full.history.query("kind == 'train'")["step"], 13})
    # A different seed gives different weights: the equality above is not vacuous.
    other = Trainer(
        _cfg(params, **deep_merge(common, {"runtime": {"seed": 1}})), meta, train, valid
    ).fit()
    other_state = other.checkpoint["last"]["state_dict"]
    assert any(not torch.equal(other_state[k], a[k]) for k in a)


def test_checkpoint_carries_config_and_metadata(data):
    params, meta, train, valid, _, _ = data
    cfg = _cfg(params, runtime={"max_train_steps": 3, "save_last": False})
    trainer = Trainer(cfg, meta, train, valid)
    ckpt = trainer.fit().checkpoint
    assert ckpt["last"] is None and ckpt["best"]["state_dict"]
    assert ckpt["metadata"]["vocab_fingerprint"] == meta["vocab_fingerprint"]
    assert load_config(ckpt["config"]) == cfg
    with pytest.raises(ValueError, match="save_last"):
        model_from_checkpoint(ckpt, "last")
    # Rebuilt from the checkpoint alone, the model predicts what the trained one did.
    model = model_from_checkpoint(ckpt, "best")
    assert ckpt["best"]["step"] == trainer.step  # the best weights are the final ones here
    batch = next(iter(valid.iter_batches(256)))
    trainer.model.eval()
    with torch.no_grad():
        want, got = trainer.model(batch).logits, model(batch).logits
    assert want.keys() == got.keys() == {"ctr", "cvr"}
    for task in want:
        torch.testing.assert_close(got[task], want[task], rtol=0, atol=0)


def test_cuda_request_falls_back_to_cpu_with_a_warning(caplog):
    from rec_pipeline.train.loop import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with caplog.at_level("WARNING"):
        assert resolve_device("cuda").type == "cpu"
    assert "no GPU is available" in caplog.text


def test_tiny_params_are_valid():
    # The tiny test configuration is itself a valid parameter set over the base one.
    import yaml
    from kedro_project import ROOT

    base = yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text())
    load_config(deep_merge(base, TINY))


def test_fp16_overflow_skips_the_sparse_and_dense_steps_together(data):
    """An inf in the embedding gradients (fp16 loss scaling overflowed) must not reach any
    weight: both optimisers skip the step and the scaler lowers its scale; a finite step then
    updates the tables with unscaled gradients."""
    params, meta, train, valid, _, _ = data
    cfg = _cfg(params, runtime={"grad_clip_norm": 1.0, "step_mode": "eager"})
    trainer = Trainer(cfg, meta, train, valid)
    assert trainer.opt.sparse is not None  # the tables go to SparseAdam
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    batch = next(iter(train.iter_batches(256)))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def backward(poison: bool) -> None:
        trainer.opt.zero_grad()
        out = trainer.model(batch)
        loss = out.logits["ctr"].float().mean() + out.logits["cvr"].float().mean()
        trainer.scaler.scale(loss).backward()
        if poison:
            table = trainer.model.embedding.skeleton_table
            grad = table.grad.coalesce()
            values = grad.values().clone()
            values[0, 0] = float("inf")
            table.grad = torch.sparse_coo_tensor(grad.indices(), values, grad.shape)

    backward(poison=True)
    trainer._apply_gradients()
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert trainer.scaler.get_scale() == 2.0**15
    backward(poison=False)
    trainer._apply_gradients()
    table = trainer.model.embedding.skeleton_table.detach()
    assert torch.isfinite(table).all()
    moved = (table - before["embedding.skeleton_table"]).abs().max()
    # Adam's first step moves a touched row by about lr, not by lr times the loss scale.
    assert 0 < moved <= 2 * cfg.optim.sparse.lr


def test_a_validation_without_conversions_is_named_when_no_best_is_chosen(data, caplog):
    """No conversion in the validation split: no CVR or CTCVR AUC, so no auc_primary picks a
    best checkpoint. The last weights are kept, and a warning says why and which key helps."""
    params, meta, train, valid, _, _ = data
    no_conversions = copy.copy(valid)
    no_conversions.conversion_host = np.zeros_like(valid.conversion_host)
    no_conversions.conversion = torch.zeros_like(valid.conversion)
    quiet = {"grad_diag_enabled": False, "log_health_metrics": False, "save_last": False}
    runtime = {"device": "cpu", "max_train_steps": 3, "best_metric": "auc_primary", **quiet}
    trainer = Trainer(_cfg(params, runtime=runtime), meta, train, no_conversions)
    with caplog.at_level(logging.WARNING, logger="rec_pipeline.train.loop"):
        result = trainer.fit()
    assert result.summary["best_step"] == 3  # the last weights
    assert "auc_primary" not in result.summary["best_metrics"]
    clicks = int(valid.click_host.sum())
    assert f"has {len(valid)} rows, {clicks} clicks, 0 conversions" in caplog.text
    assert "data.valid_fraction" in caplog.text


@pytest.mark.parametrize("shift", [1, -1], ids=["after", "before"])
def test_no_second_validation_next_to_an_epoch_end(data, shift):
    """Validations fall every ``valid_every`` steps, at each epoch end and at the last step,
    but a scheduled one less than half an interval from an epoch end or the last step (after
    or before it) is not run (it would score nearly the same weights)."""
    params, meta, train, valid, _, _ = data
    runtime = {"epochs": 2, "log_every": 1000, "save_last": False}
    probe = Trainer(_cfg(params, data={"batch_size": 512}, runtime=runtime), meta, train, valid)
    per_epoch = probe.steps_per_epoch
    every = per_epoch // 2 + shift  # 2 x every lands a few steps after / before the epoch end
    assert 0 < abs(2 * every - per_epoch) < every // 2
    cfg = _cfg(params, data={"batch_size": 512}, runtime={**runtime, "valid_every": every})
    history = Trainer(cfg, meta, train, valid).fit().history
    steps = sorted(set(history.query("kind == 'valid'")["step"]))
    forced = {per_epoch, 2 * per_epoch}
    near = every // 2
    scheduled = range(every, 2 * per_epoch + 1, every)
    kept = {m for m in scheduled if all(abs(m - f) >= near for f in forced - {m})}
    assert 2 * every not in kept  # the case this test is for
    assert steps == sorted(kept | forced)


@pytest.mark.parametrize("metric", ["auc_primary", "auc_ctr"])
def test_best_weights_are_those_of_the_best_validation_by_the_chosen_metric(data, metric):
    """``runtime.best_metric`` picks the validation whose AUC is highest (the first of equals),
    read back from the run's own validation history."""
    params, meta, train, valid, _, _ = data
    runtime = {"max_train_steps": 40, "valid_every": 5, "best_metric": metric}
    result = Trainer(
        _cfg(params, runtime={**runtime, "save_last": False}), meta, train, valid
    ).fit()
    rows = result.history.query("kind == 'valid' and name == @metric").sort_values("step")
    want = rows.loc[rows["value"].idxmax(), "step"]
    assert result.summary["best_step"] == want
    assert result.summary["best_metrics"][metric] == rows["value"].max()
    # The two metrics disagree somewhere in this run, so the choice is not vacuous.
    h = result.history
    both = h[h["kind"].eq("valid") & h["name"].isin(["auc_primary", "auc_ctr"])]
    steps = both.pivot(index="step", columns="name", values="value").idxmax()
    assert steps["auc_primary"] != steps["auc_ctr"]

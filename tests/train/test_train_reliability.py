"""Checkpoint round trip, resumed LR schedule, the non-finite guard and grad_clip_norm."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch
from kedro_project import deep_merge, encoded
from nan_losses import nan_loss_ctr

import rec_pipeline.train.loop as loop
from rec_pipeline.config import load_config
from rec_pipeline.train.checkpoint import Checkpoint, RNGState
from rec_pipeline.train.loop import NonFiniteError, Trainer


@pytest.fixture(scope="module")
def data(encoded_project):
    params, meta, splits = encoded(encoded_project)
    return params, meta, splits["train"], splits["valid"]


def _cfg(params: dict, **over):
    """The eager step's reliability (the static step's is in test_graph_step.py)."""
    runtime = {"device": "cpu", "step_mode": "eager", **over.pop("runtime", {})}
    return load_config(deep_merge(params, {"runtime": runtime, **over}))


def _weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------- checkpoint
def test_checkpoint_round_trips_through_weights_only_load(data):
    params, meta, train, valid = data
    cfg = _cfg(params, runtime={"max_train_steps": 5, "save_last": True, "valid_every": 3})
    result = Trainer(cfg, meta, train, valid).fit()
    buf = io.BytesIO()
    torch.save(result.checkpoint, buf)
    buf.seek(0)
    loaded = Checkpoint.from_dict(torch.load(buf, weights_only=True))
    assert loaded.state.step == 5 and loaded.state.steps_per_epoch > 5
    assert (loaded.state.epoch, loaded.state.batch_in_epoch) == (0, 5)
    assert _same(loaded.last.state_dict, result.checkpoint["last"]["state_dict"])
    # validations at steps 3 and 5 (the end): the best is whichever scored higher
    assert loaded.best.step == result.summary["best_step"] in (3, 5)
    assert "auc_primary" in loaded.best.metrics
    assert loaded.to_dict().keys() == result.checkpoint.keys()
    with pytest.raises(ValueError, match="format"):
        Checkpoint.from_dict({**result.checkpoint, "format": 99})
    # A format-1 checkpoint (resumable state inside "last") still resumes.
    state = result.checkpoint["state"]
    old_last = {**result.checkpoint["last"], **state, "rng_torch": state["rng"]["torch_cpu"]}
    old = {**result.checkpoint, "format": 1, "last": old_last}
    del old["state"]
    converted = Checkpoint.from_dict(old)
    assert converted.state.step == 5 and converted.state.schedule_total_steps is None
    assert torch.equal(converted.state.rng.torch_cpu, loaded.state.rng.torch_cpu)


def test_rng_state_restores_every_generator():
    import random

    state = RNGState.capture(torch.device("cpu"))
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    buf = io.BytesIO()
    torch.save(dataclasses.asdict(state), buf)
    buf.seek(0)
    RNGState(**torch.load(buf, weights_only=True)).restore(torch.device("cpu"))
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# ------------------------------------------------------------------------------ LR on resume
def _resume_lrs(data, schedule: str | None) -> tuple[float, list[float]]:
    params, meta, train, valid = data
    short = {"epochs": 1, "save_last": True, "valid_every": 1000}
    first = Trainer(_cfg(params, runtime=short), meta, train, valid).fit()
    longer = {**short, "epochs": 3}
    if schedule:
        longer["resume_schedule"] = schedule
    trainer = Trainer(_cfg(params, runtime=longer), meta, train, valid, resume=first.checkpoint)
    base = trainer.opt.dense.param_groups[0]["initial_lr"]
    lrs = [trainer.opt.dense.param_groups[0]["lr"] / base]
    for batch in train.iter_batches(256, shuffle=True, generator=np.random.default_rng(0)):
        if len(lrs) > 3:
            break
        trainer._train_step(batch)
        trainer.step += 1
        lrs.append(trainer.opt.dense.param_groups[0]["lr"] / base)
    return first.history.query("name == 'lr_dense'")["value"].iloc[-1] / base, lrs


def test_resume_continues_the_original_lr_schedule_by_default(data):
    params = data[0]
    min_ratio = params["optim"]["lr_scheduler"]["min_lr_ratio"]
    end_of_first, lrs = _resume_lrs(data, None)
    assert end_of_first == pytest.approx(min_ratio)
    # The first run's cosine reached its floor: more epochs continue at the floor.
    assert lrs == pytest.approx([min_ratio] * len(lrs))


def test_resume_schedule_rederive_rebuilds_it_over_the_new_run(data):
    min_ratio = data[0]["optim"]["lr_scheduler"]["min_lr_ratio"]
    _, lrs = _resume_lrs(data, "rederive")
    # A third of the way into a longer cosine: well above the floor from the first step on.
    assert all(lr > min_ratio + 0.3 for lr in lrs), lrs


# ------------------------------------------------------------------------------- non-finite
def test_nan_in_a_batch_value_stops_the_run_before_any_update(data):
    params, meta, train, valid = data
    trainer = Trainer(_cfg(params), meta, train, valid)
    batch = next(iter(train.iter_batches(256)))
    weights = batch.cm_weights.clone()
    weights[0] = float("nan")
    before = _weights(trainer)
    with pytest.raises(NonFiniteError, match=r"step 1: loss loss_total, loss_ctr") as err:
        trainer._train_step(dataclasses.replace(batch, cm_weights=weights))
    assert "gradient of" in str(err.value) and "runtime.on_nonfinite: stop" in str(err.value)
    assert _same(before, _weights(trainer))


def test_non_finite_gradient_is_named(data):
    params, meta, train, valid = data
    trainer = Trainer(_cfg(params), meta, train, valid)
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if n.startswith("mmoe"))
    param.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError, match=f"gradient of {name}"):
        trainer._train_step(next(iter(train.iter_batches(256))))


def test_skip_batch_leaves_the_weights_and_counts_it(data, monkeypatch):
    params, meta, train, valid = data
    monkeypatch.setattr(loop, "compute_losses", nan_loss_ctr(loop.compute_losses, {3}))
    cfg = _cfg(params, runtime={"max_train_steps": 6, "on_nonfinite": "skip_batch"})
    trainer = Trainer(cfg, meta, train, valid)
    batches = iter(train.iter_batches(256, shuffle=True, generator=np.random.default_rng(1)))
    for _ in range(3):
        assert trainer._train_step(next(batches)) is not None
        trainer.step += 1
    before = _weights(trainer)
    assert trainer._train_step(next(batches)) is None
    assert _same(before, _weights(trainer)) and trainer.nonfinite_skipped == 1
    # Through a whole fit: counted in the summary and the history, every weight finite.
    result = Trainer(cfg, meta, train, valid).fit()
    assert result.summary["nonfinite_skipped_batches"] == 1
    rows = result.history.query("kind == 'nonfinite'")
    assert rows[["step", "value"]].values.tolist() == [[4, 1.0]]
    state = result.checkpoint["best"]["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert all(math.isfinite(v) for v in result.history.query("kind == 'train'")["value"])


# ---------------------------------------------------------------------------- grad_clip_norm
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_grad_clip_norm_leaves_the_embedding_tables_either_way(data, sparse_grad):
    params, meta, train, valid = data
    over = {"runtime": {"grad_clip_norm": 1e-3}, "embedding": {"sparse_grad": sparse_grad}}
    if not sparse_grad:
        over["optim"] = {"sparse": {"allow_fallback_if_empty": True}}
    trainer = Trainer(_cfg(params, **over), meta, train, valid)
    tables = trainer.model.embedding.tables()
    assert tables and not any(p is t for p in trainer.clip_params for t in tables)
    batch = next(iter(train.iter_batches(256)))
    trainer.opt.zero_grad()
    out = trainer.model(batch)
    (out.logits["ctr"].float().sum() + out.logits["cvr"].float().sum()).backward()

    def dense(g):
        return g.to_dense() if g.is_sparse else g

    table_grads = [dense(t.grad).clone() for t in tables]
    trainer.opt.all = list  # clip only: no optimiser step
    trainer._apply_gradients()
    for t, g in zip(tables, table_grads, strict=True):
        assert torch.equal(dense(t.grad), g)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.clip_params]))
    assert total == pytest.approx(1e-3, rel=1e-3)

"""runtime.step_mode: graph, run eagerly on the CPU: the eager step's maths, the device-side
non-finite guard, and the settings it refuses."""

from __future__ import annotations

import pytest
import torch
from kedro_project import deep_merge, encoded
from nan_losses import nan_loss_ctr

import rec_pipeline.train.graph_step as graph_step
from rec_pipeline.config import ConfigError, load_config
from rec_pipeline.train.loop import NonFiniteError, Trainer

QUIET = {"grad_diag_enabled": False, "log_health_metrics": False, "save_last": False}


@pytest.fixture(scope="module")
def data(encoded_project):
    params, meta, splits = encoded(encoded_project)
    return params, meta, splits["train"], splits["valid"]


@pytest.fixture()
def one_thread():
    """One CPU thread: the two runs then differ only by the order of float additions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(data, mode: str, **runtime) -> Trainer:
    params, meta, train, valid = data
    over = {"runtime": {"device": "cpu", "step_mode": mode, **runtime}}
    return Trainer(load_config(deep_merge(params, over)), meta, train, valid)


def _poison(monkeypatch, steps: set[int]) -> None:
    """Make loss_ctr NaN at the given (0-based) steps of the static step."""
    monkeypatch.setattr(
        graph_step, "compute_losses", nan_loss_ctr(graph_step.compute_losses, steps)
    )


def test_graph_mode_trains_like_the_eager_step(data, one_thread):
    # Two epochs (60 steps each at this size) with a short last batch: static and eager steps.
    # Each trainer is built right before it trains: both draw the same dropout masks.
    runs, results = {}, {}
    for m in ("eager", "graph"):
        runs[m] = _trainer(data, m, max_train_steps=70, valid_every=35, **QUIET)
        results[m] = runs[m].fit()
    eager, graph = (runs[m].model.state_dict() for m in ("eager", "graph"))
    for name in eager:
        torch.testing.assert_close(graph[name], eager[name], rtol=1e-4, atol=1e-5)
    a, b = (results[m].summary["best_metrics"]["auc_primary"] for m in ("eager", "graph"))
    assert b == pytest.approx(a, abs=1e-4)
    train = {
        m: r.history.query("kind == 'train' and name != 'samples_per_s'")
        for m, r in results.items()
    }
    assert list(train["graph"]["name"]) == list(train["eager"]["name"])
    assert "loss_embedding_l2" in set(train["graph"]["name"])
    torch.testing.assert_close(
        torch.tensor(train["graph"]["value"].values),
        torch.tensor(train["eager"]["value"].values),
        rtol=1e-3,
        atol=1e-6,
    )


def test_graph_mode_keeps_the_diagnostics(data):
    result = _trainer(data, "graph", max_train_steps=4, log_every=2, grad_diag_every=2).fit()
    kinds = set(result.history["kind"])
    assert {"grad", "health", "train", "valid"} <= kinds


def test_a_non_finite_step_stops_with_the_weights_of_before_it(data, monkeypatch):
    clean = _trainer(data, "graph", max_train_steps=3, **QUIET)
    clean.fit()
    _poison(monkeypatch, {3})
    poisoned = _trainer(data, "graph", max_train_steps=6, log_every=100, **QUIET)
    with pytest.raises(NonFiniteError, match=r"step 4: loss loss_total, loss loss_ctr") as err:
        poisoned.fit()
    assert "nor at any later step" in str(err.value)
    for name, value in clean.model.state_dict().items():
        assert torch.equal(poisoned.model.state_dict()[name], value), name


def test_skip_batch_skips_on_the_device_and_counts(data, monkeypatch):
    _poison(monkeypatch, {2, 4})
    result = _trainer(
        data, "graph", max_train_steps=6, log_every=3, on_nonfinite="skip_batch", **QUIET
    ).fit()
    assert result.summary["nonfinite_skipped_batches"] == 2
    rows = result.history.query("kind == 'nonfinite'")
    assert rows[["step", "value"]].values.tolist() == [[3, 1.0], [6, 2.0]]
    state = result.checkpoint["best"]["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"runtime": {"devices": 2}}, "runtime.devices"),
        ({"runtime": {"amp_dtype": "fp16"}}, "runtime.amp_dtype"),
        ({"loss": {"pos_weight_dynamic": True}}, "loss.pos_weight_dynamic"),
        (
            {
                "embedding": {"sparse_grad": False},
                "optim": {"sparse": {"allow_fallback_if_empty": True}},
            },
            "embedding.sparse_grad",
        ),
    ],
)
def test_what_the_graph_step_cannot_do_is_refused_by_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(deep_merge({"runtime": {"step_mode": "graph"}}, over))

"""runtime.step_mode: graph, run eagerly on the CPU: the eager step's maths, the device-side
non-finite guard, and the settings it refuses."""

from __future__ import annotations

import pytest
import torch
from kedro_project import TRAINING, catalog, deep_merge, encoded
from nan_losses import nan_loss_ctr

import rec_pipeline.train.graph_step as graph_step
from rec_pipeline.config import ConfigError, load_config
from rec_pipeline.train.loop import NonFiniteError, Trainer
from rec_pipeline.train.pieces import PIECE

TABLES = ("embedding.skeleton_table", "embedding.common_table")
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


def _trainer(
    data, mode: str, batch_size: int | None = None, sparse: dict | None = None, **runtime
) -> Trainer:
    params, meta, train, valid = data
    over = {"runtime": {"device": "cpu", "step_mode": mode, **runtime}}
    if sparse is not None:
        over["optim"] = {"sparse": sparse}
    if batch_size is not None:
        over["data"] = {"batch_size": batch_size}
    return Trainer(load_config(deep_merge(params, over)), meta, train, valid)


def _poison(monkeypatch, steps: set[int]) -> None:
    """Make loss_ctr NaN at the given (0-based) steps of the static step."""
    monkeypatch.setattr(
        graph_step, "compute_losses", nan_loss_ctr(graph_step.compute_losses, steps)
    )


@pytest.mark.parametrize(
    "sparse", [None, {"type": "adagrad", "lr": 0.1}], ids=["sparse_adam", "sparse_adagrad"]
)
def test_graph_mode_trains_like_the_eager_step(data, one_thread, sparse):
    """Two epochs of 8 steps at batch 2,048 (7 static steps and a short eager one each, the
    second epoch's plan loaded into the same buffers), against the eager step; the tables by
    either rule of ``optim.sparse.type``.

    The two differ only in the order of float additions (fused against foreach AdamW, the row
    optimisers against torch's sparse ones), so their paths agree to rounding at first; Adam then amplifies it,
    since a rounding-sized change in a near-zero gradient can turn a coordinate's step by a
    whole learning rate. Hence the loss trajectory and the weights as a whole are compared, not
    each coordinate (the logged losses to 0.5 %: with ``embedding.init_std`` 0.03 the largest
    gap over these 16 steps is 0.19 %). A wrong batch, update or schedule step moves them by
    orders of magnitude more.
    """
    runs, results = {}, {}
    for m in ("eager", "graph"):
        runs[m] = _trainer(
            data,
            m,
            batch_size=2048,
            sparse=sparse,
            epochs=2,
            log_every=1,
            valid_every=8,
            **QUIET,
        )
        results[m] = runs[m].fit()
    assert runs["graph"].step == 16 and runs["graph"].steps_per_epoch == 8
    eager, graph = (runs[m].model.state_dict() for m in ("eager", "graph"))
    assert eager.keys() == graph.keys()
    moved = sum(float((graph[k].double() - eager[k].double()).pow(2).sum()) for k in eager)
    size = sum(float(eager[k].double().pow(2).sum()) for k in eager)
    assert (moved / size) ** 0.5 < 5e-3
    a, b = (results[m].summary["best_metrics"]["auc_primary"] for m in ("eager", "graph"))
    assert b == pytest.approx(a, abs=1e-3)
    train = {
        m: r.history.query("kind == 'train' and name != 'samples_per_s'")
        for m, r in results.items()
    }
    assert list(train["graph"]["name"]) == list(train["eager"]["name"])
    assert "loss_embedding_l2" in set(train["graph"]["name"])
    torch.testing.assert_close(
        torch.tensor(train["graph"]["value"].values),
        torch.tensor(train["eager"]["value"].values),
        rtol=5e-3,
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


def test_a_gradient_bad_in_every_piece_is_named_once(data):
    """The guard flags pieces of the dense gradients (train/pieces.py): a gradient non-finite
    throughout, in several pieces, is named once, and the step stops there."""
    trainer = _trainer(data, "graph", max_train_steps=2, log_every=100, **QUIET)
    name, big = max(trainer.model.named_parameters(), key=lambda item: item[1].numel())
    assert big.numel() > 2 * PIECE and any(big is p for p in trainer.clip_params)
    big.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(NonFiniteError, match="step 1: ") as err:
        trainer.fit()
    assert str(err.value).count(f"gradient of {name}") == 1


def test_one_non_finite_entry_of_a_table_gradient_is_named(data):
    """Eager step: a single inf among the tables' sparse gradient values stops the run and
    names the table: the check reads every gradient through one fused norm."""
    trainer = _trainer(data, "eager", max_train_steps=2, log_every=100, **QUIET)
    name, table = next((n, p) for n, p in trainer.model.named_parameters() if n in TABLES)

    def poison(grad):
        assert grad.is_sparse
        values = grad._values().clone()
        values[-1, 0] = float("inf")
        return torch.sparse_coo_tensor(grad._indices(), values, grad.shape)

    table.register_hook(poison)
    with pytest.raises(NonFiniteError, match=f"step 1: gradient of {name}"):
        trainer.fit()


def test_the_graph_step_sums_table_gradients_into_the_row_optimiser(data, monkeypatch):
    """Graph step: the pooling's backward fills the row optimiser's sums (the tables get no
    ``.grad``), and one inf in the pooled embeddings' gradient, which every table gradient
    entry is summed from, stops the run under that name."""
    trainer = _trainer(data, "graph", max_train_steps=2, log_every=100, **QUIET)
    sinks = trainer.opt.sparse.grad_sinks()
    assert trainer.graph.sinks is not None and len(sinks) == len(TABLES)
    pool = type(trainer.model.embedding).pool

    def poisoned_pool(self, batch, sinks=None, plans=None):
        assert sinks is not None and plans is not None
        stacked = pool(self, batch, sinks, plans)

        def poison(grad):
            grad = grad.clone()
            grad.view(-1)[-1] = float("inf")
            return grad

        stacked.register_hook(poison)
        return stacked

    monkeypatch.setattr(type(trainer.model.embedding), "pool", poisoned_pool)
    with pytest.raises(NonFiniteError, match="step 1: gradient of the pooled embeddings"):
        trainer.fit()
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if n in TABLES)


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


def test_the_objective_traces_as_one_graph_with_the_same_values(data):
    """``runtime.compile`` compiles GraphStep._objective: it must trace whole (no graph break,
    or the fusion is lost) and compute what it computes as written, values and gradients."""
    trainer = _trainer(data, "graph", batch_size=512, **QUIET)
    step = trainer.graph
    step.load(trainer.train_data.plan(torch.randperm(len(trainer.train_data)).numpy(), 512), 0)
    batch = step.batches.next()
    stacked = trainer.model.embedding.pool(batch).detach()
    compiled = torch.compile(step._objective, fullgraph=True, backend="aot_eager")
    runs = []
    for fn in (step._objective, compiled):
        torch.manual_seed(0)  # the same dropout masks
        x = stacked.clone().requires_grad_()
        total, names, values = fn(x, batch.click, batch.conversion, True)
        total.backward()
        runs.append((names, values.detach(), x.grad))
    (names_a, values_a, grad_a), (names_b, values_b, grad_b) = runs
    assert names_a == names_b and "loss_ctcvr_focal" in names_a
    assert float(values_a[names_a.index("loss_ctcvr_focal")]) > 0  # focal=True reached it
    torch.testing.assert_close(values_b, values_a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("rule", ["adam", "adagrad"])
def test_compiled_objective_trains_like_the_written_one_on_cuda(encoded_project, rule):
    """``runtime.compile: dense`` on a GPU: the captured step with the inductor-compiled
    objective and row optimiser (either rule) follows the uncompiled one (bf16 autocast both;
    fused kernels round differently), through the aux-focal term's switch, which is a value
    on the device: no second compilation or capture at it."""
    from rec_pipeline.data.batches import load_splits

    cat = catalog(encoded_project, TRAINING)
    params, meta = cat.load("parameters"), cat.load("metadata")
    results = {}
    for mode in ("off", "dense"):
        splits = load_splits(
            meta,
            {s: cat.load(f"encoded_{s}") for s in ("train", "valid")},
            cat.load("encoded_train_commons"),
            "cuda",
        )
        over = {
            "runtime": {"device": "cuda", "step_mode": "graph", "compile": mode, "epochs": 2},
            "data": {"batch_size": 1024},
            "loss": {"aux_focal": {"enabled": True, "warmup_steps": 5}},
            "optim": {"sparse": {"type": rule, "lr": 0.1 if rule == "adagrad" else 0.002}},
        }
        over["runtime"].update(QUIET, log_every=4)
        cfg = load_config(deep_merge(params, over))
        trainer = Trainer(cfg, meta, splits["train"], splits["valid"])
        captured = []  # the static batch slots of each capture (kept alive: distinct ids)
        real_capture = trainer.graph._capture

        def capture(real=real_capture, graph=trainer.graph, log=captured):
            log.append(graph.batches)
            real()

        trainer.graph._capture = capture
        results[mode] = trainer.fit()
        assert (trainer.graph.objective_fn is not None) == (mode == "dense")
        assert trainer.step > 5  # past the switch
        # Captured once per set of slots (again only where an epoch's slots grew).
        assert captured and len({id(b) for b in captured}) == len(captured)
    loss = {
        m: r.history.query("kind == 'train' and name == 'loss_total'")["value"].to_numpy()
        for m, r in results.items()
    }
    assert len(loss["off"]) == len(loss["dense"]) > 2
    assert abs(loss["dense"][-1] - loss["off"][-1]) < 0.05 * abs(loss["off"][-1])
    a, b = (results[m].summary["best_metrics"]["auc_primary"] for m in ("off", "dense"))
    assert b == pytest.approx(a, abs=0.01)


def _failing_compile(*args, **kw):
    raise RuntimeError("no C compiler")


@pytest.mark.parametrize("mode", ["auto", "dense"])
def test_a_failed_compile_falls_back_under_auto_and_raises_under_dense(data, mode, caplog):
    trainer = _trainer(data, "graph", batch_size=512, **QUIET)
    step = trainer.graph
    step.load(trainer.train_data.plan(torch.randperm(len(trainer.train_data)).numpy(), 512), 0)
    step.compile_mode, step.objective_fn = mode, _failing_compile
    if mode == "dense":
        with pytest.raises(RuntimeError, match="no C compiler"):
            step._warm_body()
        return
    step._warm_body()
    assert step.objective_fn is None
    assert int(step.batches.counter) == 1  # the failed step's batch was taken again, once
    assert int(step.steps) == 1  # and one update was made
    assert "compiling the training objective failed (RuntimeError: no C compiler)" in caplog.text


def test_the_clip_made_of_the_guards_norms_is_clip_grad_norm(data):
    """The static step clips with the norms its guard computed (of pieces of the gradients):
    the gradients ``clip_grad_norm_`` gives, in float64 (here with every gradient scaled
    down); fp32 sums in another order differ by a few ulps."""
    trainer = _trainer(data, "graph", max_train_steps=1, **QUIET)
    gen = torch.Generator().manual_seed(0)
    for p in trainer.clip_params:
        p.grad = torch.randn(p.shape, generator=gen)
    ref = [torch.nn.Parameter(p.detach().double()) for p in trainer.clip_params]
    for r, p in zip(ref, trainer.clip_params, strict=True):
        r.grad = p.grad.double()
    total = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    assert float(total) > 5.0  # the clip acts
    trainer.graph._flags(torch.zeros(2), None)
    assert len(trainer.graph.clip_norms) > len(trainer.clip_params)  # cut into pieces
    trainer.graph._clip(0.5)
    for r, p in zip(ref, trainer.clip_params, strict=True):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-5, atol=1e-9)

"""Data-parallel training on CPU processes (gloo): the gradient exchange against a brute-force
mean, identical replicas after training, and a Kedro run on 2 ranks against 1."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from kedro_project import TRAINING, latest, run

from rec_pipeline.train import distributed
from rec_pipeline.train.distributed import GradientExchange, gather_rows, launch

ROWS, COLS = 50, 3


def _rank_grads(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s dense gradient, and the rows and values of its sparse gradient."""
    g = torch.Generator().manual_seed(100 + rank)
    dense = torch.randn(4, 2, generator=g)
    rows = torch.randint(0, ROWS, (7 + 5 * rank,), generator=g)  # duplicates on purpose
    values = torch.randn(len(rows), COLS, generator=g)
    return dense, rows, values


def _exchange_worker(ranks) -> tuple[torch.Tensor, torch.Tensor]:
    dense_p = torch.nn.Parameter(torch.zeros(4, 2))
    table = torch.nn.Parameter(torch.zeros(ROWS, COLS))
    dense, rows, values = _rank_grads(ranks.rank)
    dense_p.grad = dense.clone()
    table.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (ROWS, COLS))
    GradientExchange([dense_p], [table]).all_reduce()
    (lengths,) = gather_rows(torch.tensor([ranks.rank] * (ranks.rank + 1)))
    assert lengths.tolist() == [0, 1, 1]  # every rank's rows, in rank order
    return dense_p.grad.clone(), table.grad.to_dense()


def test_gradient_exchange_is_the_mean_over_ranks():
    dense, table = launch(_exchange_worker, 2, "cpu")
    want_dense = (_rank_grads(0)[0] + _rank_grads(1)[0]) / 2
    want_table = torch.zeros(ROWS, COLS, dtype=torch.float64)
    for r in range(2):  # brute force: every row update, one at a time, in float64
        _, rows, values = _rank_grads(r)
        for i, v in zip(rows.tolist(), values.double(), strict=True):
            want_table[i] += v / 2
    torch.testing.assert_close(dense, want_dense)
    torch.testing.assert_close(table.double(), want_table, rtol=1e-6, atol=1e-6)


def _row_optimizer_worker(ranks, rule: str, rows: int, steps: int) -> torch.Tensor:
    """A row optimiser with the static step's exchange, fed this rank's gradients for
    ``steps`` steps."""
    from rec_pipeline.train.distributed import StaticExchange
    from rec_pipeline.train.row_optimizers import RowAdagrad, RowAdam

    table = torch.nn.Parameter(_start_table(rows))
    opt = (RowAdam if rule == "adam" else RowAdagrad)([table], lr=0.05, l2=0.01)
    opt.exchange = StaticExchange()
    for step in range(steps):
        idx, values = _step_grad(ranks.rank, step, rows)
        table.grad = torch.sparse_coo_tensor(idx.unsqueeze(0), values, table.shape)
        opt.step([(idx, torch.ones(len(idx), dtype=torch.float64))])
    return table.detach().clone()


def _start_table(rows: int) -> torch.Tensor:
    return torch.randn(rows, COLS, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _step_grad(rank: int, step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s lookups at ``step`` (lengths differ by rank) and their gradient rows."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    idx = torch.randint(0, rows, (7 + 5 * rank,), generator=g)  # duplicates on purpose
    return idx, torch.randn(len(idx), COLS, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("rule", ["adam", "adagrad"])
@pytest.mark.parametrize("rows", [50, 5], ids=["per-lookup", "whole-table"])
def test_row_optimizer_over_ranks_is_torchs_on_the_mean_gradient(rows, rule):
    """Both layouts of the row optimisers' exchange (50 rows: gathers of the lookups; 5 rows,
    fewer than the ranks' lookups: a sum of the table buffer) against torch's SparseAdam /
    Adagrad in one process on the two ranks' mean gradient, with the L2 term added to the
    touched rows by hand."""
    steps = 3
    got = launch(_row_optimizer_worker, 2, "cpu", rule, rows, steps)
    table = torch.nn.Parameter(_start_table(rows))
    ref = (
        torch.optim.SparseAdam([table], lr=0.05)
        if rule == "adam"
        else torch.optim.Adagrad([table], lr=0.05, eps=1e-10)
    )
    for step in range(steps):
        parts = [_step_grad(r, step, rows) for r in range(2)]
        idx = torch.cat([i for i, _ in parts])
        grad = torch.sparse_coo_tensor(
            idx.unsqueeze(0), torch.cat([v for _, v in parts]) / 2, table.shape
        ).coalesce()
        touched = grad.indices()[0]
        rows_grad = grad.values() + 2 * 0.01 * table.detach()[touched]
        table.grad = torch.sparse_coo_tensor(touched.unsqueeze(0), rows_grad, table.shape)
        ref.step()
    torch.testing.assert_close(got, table.detach(), rtol=1e-12, atol=1e-12)


def _replicas_worker(ranks, folder: str, mode: str = "eager") -> list[float]:
    from torch.nn.utils import parameters_to_vector

    from rec_pipeline.train.loop import Trainer

    cfg, meta, train, valid = _tiny_problem(f"{folder}/rank{ranks.rank}", ranks.device, mode)
    trainer = Trainer(cfg, meta, train, valid if ranks.is_main else None, ranks=ranks)
    trainer.fit()
    vec = parameters_to_vector(trainer.model.parameters()).double()
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(ranks.world)]
    dist.all_gather(sums, torch.stack([vec.sum(), (vec * vec).sum()]))
    return [float(x) for s in sums for x in s]


def _nan_on_one_rank_worker(ranks, folder: str, on_nonfinite: str):
    """The static step on two ranks where only rank 1's loss is NaN at step 2: (batches
    skipped, the weights' sum and sum of squares on each rank), or rank 0's stop message."""
    from nan_losses import nan_loss_ctr
    from torch.nn.utils import parameters_to_vector

    import rec_pipeline.train.graph_step as graph_step
    from rec_pipeline.config import load_config
    from rec_pipeline.train.loop import NonFiniteError, Trainer

    if ranks.rank == 1:
        graph_step.compute_losses = nan_loss_ctr(graph_step.compute_losses, {2})
    cfg, meta, train, valid = _tiny_problem(f"{folder}/rank{ranks.rank}", ranks.device, "graph")
    params = cfg.model_dump()
    params["runtime"]["on_nonfinite"] = on_nonfinite
    trainer = Trainer(
        load_config(params), meta, train, valid if ranks.is_main else None, ranks=ranks
    )
    if on_nonfinite == "stop":  # four steps, then both ranks read the guard's record
        gen = np.random.default_rng(0)
        trainer.graph.load(
            train.epoch_plan(32, shuffle=True, generator=gen, shard=(ranks.rank, 2)), 0
        )
        for _ in range(4):
            trainer.graph.run()
            trainer.step += 1
        with pytest.raises(NonFiniteError) as exc:
            trainer.graph.poll(0)
        return str(exc.value)
    trainer.fit()
    vec = parameters_to_vector(trainer.model.parameters()).double()
    sums = [torch.zeros(2, dtype=torch.float64) for _ in range(ranks.world)]
    dist.all_gather(sums, torch.stack([vec.sum(), (vec * vec).sum()]))
    return trainer.nonfinite_skipped, [float(x) for s in sums for x in s]


def test_static_step_skips_a_batch_on_every_rank_when_one_rank_goes_bad(tmp_path):
    """One rank's NaN skips the step on every rank: no rank updates with it, and the
    replicas stay identical."""
    skipped, sums = launch(_nan_on_one_rank_worker, 2, "cpu", str(tmp_path), "skip_batch")
    assert skipped == 1
    assert sums[:2] == sums[2:]
    assert all(map(math.isfinite, sums))


def test_static_step_stops_every_rank_naming_the_culprit_of_any(tmp_path):
    """The guard's flags are combined over the ranks: rank 0, whose own loss was finite, stops
    at the same step and names rank 1's non-finite loss."""
    message = launch(_nan_on_one_rank_worker, 2, "cpu", str(tmp_path), "stop")
    assert "Non-finite values at step 3" in message
    assert "loss loss_ctr" in message


def _tiny_problem(tmp: str, device, mode: str = "eager"):
    """A small random split in the encoded layout, trained for a few steps."""
    import numpy as np
    import pyarrow as pa

    from rec_pipeline.config import load_config
    from rec_pipeline.data.batches import Jagged, SplitData
    from rec_pipeline.data.metadata import DatasetMetadata, FieldSpec
    from rec_pipeline.data.shards import ShardSet, ShardWriter

    rng = np.random.default_rng(0)
    n, groups = 512, 64

    def lists(k, hi):
        return pa.array([rng.integers(1, hi, rng.integers(1, k + 1)).tolist() for _ in range(n)])

    samples = {
        "sample_id": pa.array(np.arange(n, dtype=np.int64)),
        "click": pa.array((rng.random(n) < 0.3).astype(np.int8)),
        "conversion": pa.array(np.zeros(n, np.int8)),
        "common_row": pa.array(rng.integers(0, groups, n).astype(np.int32)),
        "id_205": lists(1, 30),
        "w_205": pa.array([[1.0]] * n, pa.list_(pa.float32())),
    }
    commons = {
        "id_101": pa.array([[int(u)] for u in rng.integers(1, 20, groups)]),
        "w_101": pa.array([[1.0]] * groups, pa.list_(pa.float32())),
    }
    for name, cols in (("s", samples), ("c", commons)):
        w = ShardWriter(f"{tmp}/{name}")
        w.reset()
        w.write(pa.table(cols))
    common, _ = Jagged.from_shards(ShardSet(f"{tmp}/c"), ["101"])
    train = SplitData(ShardSet(f"{tmp}/s"), common, ["205"], device)
    fields = (
        FieldSpec("f0_205", "205", "skeleton", 30),
        FieldSpec("f1_101", "101", "common", 20),
    )
    meta = DatasetMetadata(fields=fields, splits={"train": {"ctr": 0.3, "cvr": 0.1}})
    cfg = load_config(
        {
            "data": {"batch_size": 32, "fields": {"skeleton": ["205"], "common": ["101"]}},
            "runtime": {
                "device": "cpu",
                "epochs": 1,
                "progress_bar": False,
                "log_every": 4,
                "step_mode": mode,
            },
        }
    )
    return cfg, meta, train, train


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_replicas_stay_identical(tmp_path, mode):
    """Every rank ends with the same weights: the tables exchange their touched rows (SparseAdam
    in the eager step, RowAdam's exchange in the static one)."""
    sums = launch(_replicas_worker, 2, "cpu", str(tmp_path), mode)
    assert sums[:2] == sums[2:]


@pytest.mark.slow
def test_two_ranks_reach_the_test_aucs_of_one(project):
    """Same samples (2 x 128 per step against 1 x 256), same seed: test AUCs within 0.03 (three
    seeds of one rank spread over 0.028 in primary on this data; benchmarks/README.md)."""
    run(project, "data", TRAINING)
    scores = {}
    for devices in (1, 2):
        params = {
            **TRAINING,
            "data": {"batch_size": 256 // devices},
            "runtime": {**TRAINING["runtime"], "device": "cpu", "devices": devices, "seed": 1},
        }
        run(project, "training", params)
        run(project, "evaluation", params)
        path = latest(project / "data/08_reporting/evaluation_metrics.json")
        scores[devices] = json.loads(path.read_text())
    one, two = scores[1], scores[2]
    assert two["auc_primary"] == pytest.approx(one["auc_primary"], abs=0.03)
    for task in ("ctr", "cvr", "ctcvr"):
        assert two["tasks"][task]["auc"] == pytest.approx(one["tasks"][task]["auc"], abs=0.03)
    # Each training run saved one checkpoint version (the parent's, not one per rank).
    assert len(list((project / "data/06_models/model_checkpoint.pt").iterdir())) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_captured_step_in_a_one_rank_nccl_group_trains_and_ends(tmp_path):
    """Every collective of the static step captured in the CUDA graph and replayed (a group of
    one), and the group torn down: the run returns, its weights finite and the same on all."""
    sums = launch(_replicas_worker, 1, "cuda", str(tmp_path), "graph")
    assert all(map(math.isfinite, sums))


def _stuck_teardown_worker(ranks) -> str:
    """Finishes its work, then its group's teardown never returns (as NCCL's can)."""
    dist.destroy_process_group = lambda: time.sleep(30)
    return f"result of rank {ranks.rank}"


def test_ranks_stuck_in_teardown_are_ended_and_the_result_returned(monkeypatch):
    monkeypatch.setattr(distributed, "TEARDOWN_GRACE_S", 1.0)
    t0 = time.monotonic()
    assert launch(_stuck_teardown_worker, 2, "cpu") == "result of rank 0"
    assert time.monotonic() - t0 < 20  # not the 30 s the teardown would take


def _sleeping_worker(ranks) -> str:
    time.sleep(2.5)
    return "awake"


def test_ranks_dump_their_stacks_when_asked(monkeypatch, capfd):
    monkeypatch.setenv(distributed.DUMP_STACKS_ENV, "1")
    assert launch(_sleeping_worker, 2, "cpu") == "awake"
    err = capfd.readouterr().err
    assert err.count("_sleeping_worker") >= 2  # each rank's stack, naming where it waits


def _failing_worker(ranks) -> None:
    if ranks.rank == 1:
        raise RuntimeError("rank 1 cannot go on")
    dist.barrier()  # rank 0 would wait here for ever


def test_a_failing_rank_ends_the_run_with_its_error():
    with pytest.raises(Exception, match="rank 1 cannot go on"):
        launch(_failing_worker, 2, "cpu")

"""RowAdam against torch's SparseAdam (float64), its table layout, padding, L2 and found_inf."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rec_pipeline.train.compiling as compiling
import rec_pipeline.train.row_adam as row_adam
from rec_pipeline.train.row_adam import RowAdam

ROWS, COLS = 50, 5


def _lookups(gen: torch.Generator, n: int) -> torch.Tensor:
    """n lookups with many duplicates (a skewed draw over a few rows)."""
    return (torch.rand(n, generator=gen, dtype=torch.float64) ** 3 * 20).long()


def _loss(table: torch.Tensor, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    looked = F.embedding(rows, table, sparse=True)  # [N, C]
    return ((looked - target) ** 2).sum()


def _train(opt_kind: str, steps: int = 6, l2: float = 0.0, pad: int = 0, compile_: bool = False):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(ROWS, COLS, generator=gen, dtype=torch.float64)
    table = torch.nn.Parameter(start.clone())
    if opt_kind == "sparse_adam":
        opt = torch.optim.SparseAdam([table], lr=0.05, betas=(0.8, 0.9), eps=1e-8)
    else:
        opt = RowAdam([table], lr=0.05, betas=(0.8, 0.9), eps=1e-8, l2=l2)
        if compile_:
            opt.compile(fallback=False)
    for _ in range(steps):
        rows = _lookups(gen, 40)
        target = torch.randn(40, COLS, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        loss = _loss(table, rows, target)
        if opt_kind == "sparse_adam" and l2:
            distinct = torch.unique(rows)
            loss = loss + l2 * F.embedding(distinct, table, sparse=True).pow(2).sum()
        loss.backward()
        if opt_kind == "sparse_adam":
            opt.step()
            continue
        mask = torch.ones(40, dtype=torch.float64)
        if pad:  # padding lookups repeat a touched row and count for nothing
            rows = torch.cat([rows, rows[-1:].repeat(pad), torch.tensor([ROWS - 1])])
            mask = torch.cat([mask, torch.zeros(pad + 1, dtype=torch.float64)])
        opt.step([(rows, mask)])
    return start, table.detach(), opt


@pytest.mark.parametrize("layout", ["rows", "table"])
def test_row_adam_equals_sparse_adam(layout, monkeypatch):
    # The layout is chosen by bytes; force each one.
    monkeypatch.setattr(row_adam, "TABLE_PASSES", 10**9 if layout == "rows" else 0)
    _, expected, ref = _train("sparse_adam")
    _, got, opt = _train("row_adam")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    state, ref_state = opt.state[opt.param_groups[0]["params"][0]], next(iter(ref.state.values()))
    torch.testing.assert_close(state["exp_avg"], ref_state["exp_avg"])
    torch.testing.assert_close(state["exp_avg_sq"], ref_state["exp_avg_sq"])
    assert float(state["step"]) == ref_state["step"] == 6


@pytest.mark.parametrize("layout", ["rows", "table"])
def test_padding_lookups_change_nothing(layout, monkeypatch):
    monkeypatch.setattr(row_adam, "TABLE_PASSES", 10**9 if layout == "rows" else 0)
    start, plain, _ = _train("row_adam")
    _, padded, _ = _train("row_adam", pad=7)
    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)
    # Row ROWS - 1 is never drawn by a real lookup (only by padding): it never moves.
    assert torch.equal(padded[ROWS - 1], start[ROWS - 1])


@pytest.mark.parametrize("layout", ["rows", "table"])
def test_l2_is_the_gradient_of_the_penalty_on_distinct_touched_rows(layout, monkeypatch):
    monkeypatch.setattr(row_adam, "TABLE_PASSES", 10**9 if layout == "rows" else 0)
    _, expected, _ = _train("sparse_adam", l2=0.3)
    _, got, _ = _train("row_adam", l2=0.3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_penalty_counts_each_distinct_real_row_once():
    table = torch.nn.Parameter(torch.randn(ROWS, COLS, dtype=torch.float64))
    opt = RowAdam([table], l2=0.1)
    rows = torch.tensor([3, 3, 7, 9, 9, 9, 11])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    expected = sum(float(table.detach()[r].pow(2).sum()) for r in (3, 7, 9))  # 11: padding only
    assert float(opt.penalty([(rows, mask)])) == pytest.approx(expected, rel=1e-12)


def test_found_inf_skips_the_whole_update():
    table = torch.nn.Parameter(torch.randn(ROWS, COLS, dtype=torch.float64))
    opt = RowAdam([table], lr=0.1)
    rows = torch.tensor([1, 2, 2])
    for skip in (0.0, 1.0):
        opt.zero_grad()
        _loss(table, rows, torch.zeros(3, COLS, dtype=torch.float64)).backward()
        opt.found_inf = torch.tensor(skip)
        before = table.detach().clone()
        state = {k: v.clone() for k, v in opt.state[table].items()} if opt.state[table] else {}
        opt.step([(rows, torch.ones(3, dtype=torch.float64))])
        if skip:
            assert torch.equal(table.detach(), before)
            assert all(torch.equal(opt.state[table][k], v) for k, v in state.items())
        else:
            assert not torch.equal(table.detach(), before)
    assert float(opt.state[table]["step"]) == 1.0


def test_a_sparse_adam_state_loads_into_row_adam():
    _, _, ref = _train("sparse_adam", steps=2)
    table = torch.nn.Parameter(torch.zeros(ROWS, COLS, dtype=torch.float64))
    opt = RowAdam([table], lr=0.05)
    opt.load_state_dict(ref.state_dict())
    opt.zero_grad()
    _loss(table, torch.tensor([0]), torch.ones(1, COLS, dtype=torch.float64)).backward()
    opt.step([(torch.tensor([0]), torch.ones(1, dtype=torch.float64))])
    assert float(opt.state[table]["step"]) == 3.0


@pytest.mark.parametrize("layout", ["rows", "table"])
def test_compiled_row_adam_equals_sparse_adam(layout, monkeypatch):
    """``RowAdam.compile`` (the captured step's runtime.compile): the traced update is the same
    maths, padding and L2 included (traced whole, run unfused here; fused on a GPU)."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    monkeypatch.setattr(row_adam, "TABLE_PASSES", 10**9 if layout == "rows" else 0)
    _, expected, _ = _train("sparse_adam", l2=0.01)
    _, got, opt = _train("row_adam", l2=0.01, pad=7, compile_=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert opt._update_rows.__name__ == "call"  # the compiled wrapper ran


def test_a_failed_compilation_runs_the_function_as_written_when_allowed(caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    def add_one(x):
        return x + 1

    for fallback in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(compiling, "BACKEND", broken_backend)
            fn = compiling.compiled(add_one, "add_one", fallback)
        if not fallback:
            with pytest.raises(Exception, match="no compiler here"):
                fn(torch.zeros(3))
            continue
        assert fn(torch.zeros(3)).tolist() == [1.0, 1.0, 1.0]
        assert "compiling add_one failed" in caplog.text

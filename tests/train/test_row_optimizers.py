"""RowAdam against torch's SparseAdam and RowAdagrad against torch's Adagrad (float64): both
layouts, padding, L2, found_inf, compiled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rec_pipeline.train.compiling as compiling
import rec_pipeline.train.row_optimizers as row_optimizers
from rec_pipeline.train.row_optimizers import RowAdagrad, RowAdam

ROWS, COLS = 50, 5


def _lookups(gen: torch.Generator, n: int) -> torch.Tensor:
    """n lookups with many duplicates (a skewed draw over a few rows)."""
    return (torch.rand(n, generator=gen, dtype=torch.float64) ** 3 * 20).long()


def _loss(table: torch.Tensor, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    looked = F.embedding(rows, table, sparse=True)  # [N, C]
    return ((looked - target) ** 2).sum()


def _batches(steps: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The start table ``[ROWS, COLS]`` and ``steps`` (lookups [40], targets [40, COLS])."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(ROWS, COLS, generator=gen, dtype=torch.float64)
    draws = []
    for _ in range(steps):
        rows = _lookups(gen, 40)
        draws.append((rows, torch.randn(40, COLS, generator=gen, dtype=torch.float64)))
    return start, draws


#: Each rule's torch reference and its row-wise form, with the same hyperparameters.
REFERENCE = {
    "adam": lambda t: torch.optim.SparseAdam([t], lr=0.05, betas=(0.8, 0.9), eps=1e-8),
    "adagrad": lambda t: torch.optim.Adagrad([t], lr=0.3, eps=1e-8, initial_accumulator_value=0.1),
}
ROW_FORM = {
    "adam": lambda t, l2: RowAdam([t], lr=0.05, betas=(0.8, 0.9), eps=1e-8, l2=l2),
    "adagrad": lambda t, l2: RowAdagrad(
        [t], lr=0.3, eps=1e-8, initial_accumulator_value=0.1, l2=l2
    ),
}
STATE = {"adam": ("exp_avg", "exp_avg_sq"), "adagrad": ("sum",)}


def _train(
    rule: str,
    row: bool,
    steps: int = 6,
    l2: float = 0.0,
    pad: int = 0,
    compile_: bool = False,
    before_steps=None,
    fixed_shapes: bool = True,
):
    """``steps`` steps of squared error on skewed lookups, by the torch reference of ``rule``
    (the L2 penalty in the loss, over ``unique`` rows) or by its row-wise form (``row``)."""
    start, batches = _batches(steps)
    table = torch.nn.Parameter(start.clone())
    if not row:
        opt = REFERENCE[rule](table)
    else:
        opt = ROW_FORM[rule](table, l2)
        if compile_:
            opt.compile(fallback=False)
        if before_steps is not None:
            before_steps(opt)
    for rows, target in batches:
        opt.zero_grad()
        loss = _loss(table, rows, target)
        if not row and l2:
            distinct = torch.unique(rows)
            loss = loss + l2 * F.embedding(distinct, table, sparse=True).pow(2).sum()
        loss.backward()
        if not row:
            opt.step()
            continue
        mask = torch.ones(40, dtype=torch.float64)
        if pad:  # padding lookups repeat a touched row and count for nothing
            rows = torch.cat([rows, rows[-1:].repeat(pad), torch.tensor([ROWS - 1])])
            mask = torch.cat([mask, torch.zeros(pad + 1, dtype=torch.float64)])
        opt.step([(rows, mask)], fixed_shapes=fixed_shapes)
    return start, table.detach(), opt


RULES = pytest.mark.parametrize("rule", ["adam", "adagrad"])
LAYOUTS = pytest.mark.parametrize("layout", ["rows", "table"])


def _force(monkeypatch, layout: str) -> None:
    """The layout is chosen by bytes; force one."""
    monkeypatch.setattr(row_optimizers, "TABLE_PASSES", 10**9 if layout == "rows" else 0)


@RULES
@LAYOUTS
def test_the_row_form_equals_torchs_sparse_update(rule, layout, monkeypatch):
    _force(monkeypatch, layout)
    _, expected, ref = _train(rule, row=False)
    _, got, opt = _train(rule, row=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    state, ref_state = opt.state[opt.param_groups[0]["params"][0]], next(iter(ref.state.values()))
    for name in STATE[rule]:
        torch.testing.assert_close(state[name], ref_state[name])
    assert float(state["step"]) == float(ref_state["step"]) == 6


@RULES
@LAYOUTS
def test_padding_lookups_change_nothing(rule, layout, monkeypatch):
    _force(monkeypatch, layout)
    start, plain, _ = _train(rule, row=True)
    _, padded, _ = _train(rule, row=True, pad=7)
    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)
    # Row ROWS - 1 is never drawn by a real lookup (only by padding): it never moves.
    assert torch.equal(padded[ROWS - 1], start[ROWS - 1])


@RULES
@LAYOUTS
def test_l2_is_the_gradient_of_the_penalty_on_distinct_touched_rows(rule, layout, monkeypatch):
    _force(monkeypatch, layout)
    _, expected, _ = _train(rule, row=False, l2=0.3)
    _, got, _ = _train(rule, row=True, l2=0.3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@LAYOUTS
def test_last_penalty_counts_each_distinct_real_row_once_before_the_update(layout, monkeypatch):
    _force(monkeypatch, layout)
    table = torch.nn.Parameter(torch.randn(ROWS, COLS, dtype=torch.float64))
    before = table.detach().clone()
    opt = RowAdam([table], l2=0.1)
    rows = torch.tensor([3, 3, 7, 9, 9, 9, 11])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    _loss(table, rows, torch.zeros(7, COLS, dtype=torch.float64)).backward()
    opt.step([(rows, mask)])
    expected = sum(float(before[r].pow(2).sum()) for r in (3, 7, 9))  # 11: padding only
    assert float(opt.last_penalty) == pytest.approx(expected, rel=1e-6)  # fp32
    assert not torch.equal(table.detach()[3], before[3])  # the rows moved after it


def test_no_penalty_without_l2():
    table = torch.nn.Parameter(torch.randn(ROWS, COLS, dtype=torch.float64))
    opt = RowAdam([table])
    _loss(table, torch.tensor([1, 2]), torch.zeros(2, COLS, dtype=torch.float64)).backward()
    opt.step([(torch.tensor([1, 2]), torch.ones(2, dtype=torch.float64))])
    assert opt.last_penalty is None


@RULES
@LAYOUTS
@pytest.mark.parametrize("flagged", [False, True])
def test_a_gradient_sink_gives_the_same_update_as_the_sparse_gradient(
    rule, layout, flagged, monkeypatch
):
    """The sums a backward adds into :meth:`grad_sinks` (``.grad`` left empty) step the table
    exactly as the sparse gradient they sum, with the touched flags set by the step or, before
    it, by the lookups (``flagged``)."""
    _force(monkeypatch, layout)
    _, expected, _ = _train(rule, row=True, l2=0.3)
    start, batches = _batches(6)
    table = torch.nn.Parameter(start.clone())
    opt = ROW_FORM[rule](table, 0.3)
    ((sink, flags),) = opt.grad_sinks()
    assert sink.shape == table.shape and flags.shape == (ROWS + 1,)
    for rows, target in batches:
        opt.zero_grad()
        with torch.no_grad():  # the loss's gradient, summed into rows by hand
            sink.index_add_(0, rows, 2 * (table[rows] - target))
            if flagged:
                flags[rows] = 1.0
        assert table.grad is None
        # With the flags set, the masks may be left out (the flags tell the touched rows).
        mask = None if flagged else torch.ones(40, dtype=torch.float64)
        opt.step([(rows, mask)], flagged=flagged)
        assert not flags.any()  # the step clears what it read
    torch.testing.assert_close(table.detach(), expected, rtol=1e-12, atol=1e-12)


def test_lookups_without_masks_need_the_flags_set():
    table = torch.nn.Parameter(torch.randn(ROWS, COLS, dtype=torch.float64))
    opt = ROW_FORM["adam"](table, 0.0)
    with pytest.raises(ValueError, match="without a mask"):
        opt.step([(torch.tensor([1, 2]), None)])


@RULES
def test_found_inf_skips_the_whole_update(rule):
    table = torch.nn.Parameter(torch.randn(ROWS, COLS, dtype=torch.float64))
    opt = ROW_FORM[rule](table, 0.0)
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


@RULES
def test_a_torch_state_loads_into_the_row_form_and_continues_it(rule):
    """Two steps by torch, then its state in the row form for the rest: the same table as six
    steps by torch (a checkpoint moves between the eager and the captured step)."""
    _, expected, _ = _train(rule, row=False, steps=6)
    start, batches = _batches(6)
    table = torch.nn.Parameter(start.clone())
    ref = REFERENCE[rule](table)
    for rows, target in batches[:2]:
        ref.zero_grad()
        _loss(table, rows, target).backward()
        ref.step()
    opt = ROW_FORM[rule](table, 0.0)
    opt.load_state_dict(ref.state_dict())
    for rows, target in batches[2:]:
        opt.zero_grad()
        _loss(table, rows, target).backward()
        opt.step([(rows, torch.ones(len(rows), dtype=torch.float64))])
    assert float(opt.state[table]["step"]) == 6.0
    torch.testing.assert_close(table.detach(), expected, rtol=1e-12, atol=1e-12)


@RULES
@LAYOUTS
def test_the_compiled_row_form_equals_torchs_sparse_update(rule, layout, monkeypatch):
    """``compile`` (the captured step's runtime.compile): the traced update is the same maths,
    padding and L2 included (traced whole, run unfused here; fused on a GPU)."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    _force(monkeypatch, layout)
    _, expected, _ = _train(rule, row=False, l2=0.01)
    _, got, opt = _train(rule, row=True, l2=0.01, pad=7, compile_=True)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert opt._update_rows.__name__ == "call"  # the compiled wrapper ran


@RULES
@LAYOUTS
def test_lookups_of_other_shapes_run_the_updates_as_written_after_compile(
    rule, layout, monkeypatch
):
    """An epoch's short last batch (``fixed_shapes=False``) must not reach the compiled updates,
    which would compile again for its shapes: here they raise if called, and the steps still
    give the reference's table."""
    _force(monkeypatch, layout)

    def compiled_updates_raise(opt):
        def refuse(*args, **kwargs):
            raise AssertionError("the compiled update ran for lookups of other shapes")

        opt._update_rows = opt._update_table = refuse

    _, expected, _ = _train(rule, row=False, l2=0.01)
    _, got, _ = _train(
        rule,
        row=True,
        l2=0.01,
        pad=7,
        compile_=True,
        before_steps=compiled_updates_raise,
        fixed_shapes=False,
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(AssertionError, match="compiled update ran"):
        _train(rule, row=True, compile_=True, before_steps=compiled_updates_raise)


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

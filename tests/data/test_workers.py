"""The ordered map over worker processes, and the pool that maps share inside ``shared_workers``."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext
from pathlib import Path

import pytest
from kedro.pipeline import Pipeline, node

from rec_pipeline.data import workers
from rec_pipeline.data.workers import ordered_map, shared_workers, worker_state
from rec_pipeline.hooks import WORKER_POOL_TAG, WorkerPoolHook

# -- run in the worker processes (importable by name, as spawned processes need) --------------


def _pid(i: int) -> tuple[int, int]:
    return i, os.getpid()


def _fresh_state(tag: str) -> tuple[str, str, int]:
    return tag, uuid.uuid4().hex, os.getpid()


def _state(i: int):
    return i, worker_state()


def _fail_on(i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f"task {i} failed")
    return i


def _slow_mark(i: int, folder: str) -> int:
    Path(folder, f"{i}.start").touch()
    time.sleep(0.2)
    Path(folder, f"{i}.end").touch()
    return i


# -- tests ----------------------------------------------------------------------------------


def test_results_come_in_task_order():
    out = list(ordered_map(_pid, [(i,) for i in range(20)], 2))
    assert [i for i, _ in out] == list(range(20))
    assert os.getpid() not in {pid for _, pid in out}


def test_maps_in_a_block_share_the_processes_and_the_block_stops_them():
    with shared_workers():
        first = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(12)], 2)}
        second = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(12)], 2)}
        assert len(first) == 2
        assert second <= first  # no process started for the second map
    after = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(12)], 2)}
    assert not after & first  # the block's processes are gone; this map started its own
    assert workers._SHARED is None


def test_each_map_sees_its_own_initializer_state_once_per_process():
    with shared_workers():
        for tag in ("a", "b"):
            out = list(ordered_map(_state, [(i,) for i in range(12)], 2, _fresh_state, (tag,)))
            states = [s for _, s in out]
            assert {s[0] for s in states} == {tag}
            # one initializer call per process: one state per pid
            by_pid = {}
            for _, state, pid in states:
                by_pid.setdefault(pid, set()).add(state)
            assert all(len(s) == 1 for s in by_pid.values())
        # a map without an initializer does not see the last map's state
        assert {s for _, s in ordered_map(_state, [(i,) for i in range(8)], 2)} == {None}


def test_a_failed_task_raises_and_the_shared_pool_still_works():
    with shared_workers():
        with pytest.raises(ValueError, match="task 3 failed"):
            list(ordered_map(_fail_on, [(i, 3) for i in range(10)], 2))
        assert list(ordered_map(_fail_on, [(i, -1) for i in range(10)], 2)) == list(range(10))


@pytest.mark.parametrize("shared", [False, True])
def test_closing_early_leaves_no_task_running(tmp_path, shared):
    with shared_workers() if shared else nullcontext():
        it = ordered_map(_slow_mark, [(i, str(tmp_path)) for i in range(12)], 2)
        assert next(it) == 0
        it.close()
        started = {p.stem for p in tmp_path.glob("*.start")}
        ended = {p.stem for p in tmp_path.glob("*.end")}
        assert started == ended
        assert len(started) < 12  # the tasks not yet started were cancelled


def test_a_map_outliving_its_block_finishes_then_stops_the_pool():
    with shared_workers():
        it = ordered_map(_pid, [(i,) for i in range(20)], 2)
        assert next(it)[0] == 0
    assert workers._SHARED is None
    assert workers._RETIRED  # still running a map
    assert [i for i, _ in it] == list(range(1, 20))
    assert not workers._RETIRED and not workers._IN_USE


def test_a_failed_pool_is_replaced():
    with shared_workers():
        first = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(8)], 2)}
        with pytest.raises(BrokenProcessPool):
            list(ordered_map(os._exit, [(1,) for _ in range(4)], 2))
        again = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(8)], 2)}
        assert not again & first
    assert not workers._RETIRED and not workers._IN_USE


def test_nested_blocks_keep_the_outer_pool():
    with shared_workers():
        with shared_workers():
            inner = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(12)], 2)}
        outer = {pid for _, pid in ordered_map(_pid, [(i,) for i in range(12)], 2)}
        assert outer <= inner


def test_the_kedro_hook_stops_the_pool_after_the_last_tagged_node():
    def step(x):
        return x

    pipeline = Pipeline(
        [
            node(step, "a", "b", name="first", tags=[WORKER_POOL_TAG]),
            node(step, "b", "c", name="second", tags=[WORKER_POOL_TAG]),
            node(step, "c", "d", name="train"),
        ]
    )
    hook = WorkerPoolHook()
    hook.before_pipeline_run({}, pipeline, None)
    assert workers._SHARED is not None
    hook.after_node_run(pipeline.nodes[0])
    assert workers._SHARED is not None
    # Kedro drains a generator node's outputs after its after_node_run hooks: a map still
    # running then finishes on the pool, which stops after it.
    running = ordered_map(_pid, [(i,) for i in range(12)], 2)
    next(running)
    hook.after_node_run(pipeline.nodes[1])
    assert workers._SHARED is None  # before the untagged node runs
    assert len(list(running)) == 11
    assert not workers._RETIRED and not workers._IN_USE
    hook.after_pipeline_run({}, None, pipeline, None)
    assert workers._SHARED is None


def test_the_kedro_hook_stops_the_pool_on_error():
    pipeline = Pipeline([node(lambda x: x, "a", "b", name="first", tags=[WORKER_POOL_TAG])])
    hook = WorkerPoolHook()
    hook.before_pipeline_run({}, pipeline, None)
    assert workers._SHARED is not None
    hook.on_pipeline_error(RuntimeError(), {}, pipeline, None)
    assert workers._SHARED is None

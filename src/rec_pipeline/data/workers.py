"""Worker processes of the chunked data steps (``data.workers``): how many, an ordered map over
them, and a pool that several steps share.

Starting a pool is not free: each spawned process imports numpy, pyarrow, pandas and numba
before its first task (~2 s of wall for 16 processes at once on the 16-core GPU machine), and a
whole chain maps five times (generate, parse, count, encode, sample). Inside
:func:`shared_workers` those maps run on one pool, started at the first and stopped when the
block ends.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

R = TypeVar("R")


def worker_count(setting: int | str, chunks: int) -> int:
    """Processes for a job of ``chunks`` chunks: ``setting`` (``auto``: the cores), 1 below
    four chunks (starting processes would cost more than they save)."""
    if chunks < 4:
        return 1
    return (os.cpu_count() or 1) if setting == "auto" else int(setting)


# The pools of the open shared_workers block (by worker count), None outside one; the depth
# lets blocks nest (the outermost one owns the pools).
_SHARED: dict[int, ProcessPoolExecutor] | None = None
_DEPTH = 0


@contextmanager
def shared_workers() -> Iterator[None]:
    """Within this block, the maps of this process (:func:`ordered_map`) with the same worker
    count run on one pool of processes: started at the first, stopped (and its processes'
    memory given back) when the outermost block ends. Outside a block every map starts and
    stops its own pool."""
    global _SHARED, _DEPTH
    if _DEPTH == 0:
        _SHARED = {}
    _DEPTH += 1
    try:
        yield
    finally:
        _DEPTH -= 1
        if _DEPTH == 0:
            pools, _SHARED = _SHARED, None
            for pool in pools.values():
                pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    fn: Callable[..., R],
    args: Iterable[tuple],
    workers: int,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> Iterator[R]:
    """``fn(*a)`` for each ``a`` of ``args``, in ``workers`` spawned processes, yielded in the
    order of ``args``.

    At most ``2 * workers`` calls are in flight, so memory stays bounded however long ``args``
    is. The processes are spawned, not forked: the caller may hold threads. ``initializer``
    (optional) runs once in each process, before its first call of this map, and what it
    returns is what :func:`worker_state` gives ``fn`` there (what every call shares, so only
    ``args`` travel); ``initargs`` go with every call, so keep them small (a path, settings).
    A process holds one map's state at a time. When the iterator ends, is closed or raises, no
    call of this map is still running.
    """
    if _SHARED is None:
        with _pool(workers) as pool:
            yield from _map(pool, fn, args, workers, initializer, initargs)
        return
    pool = _SHARED.get(workers)
    if pool is None:
        pool = _SHARED[workers] = _pool(workers)
    try:
        yield from _map(pool, fn, args, workers, initializer, initargs)
    except BrokenProcessPool:
        _SHARED.pop(workers, None)  # a later map starts a fresh pool
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


_MAPS = itertools.count()


def _map(pool, fn, args, workers, initializer, initargs) -> Iterator:
    token = (os.getpid(), next(_MAPS))  # this map, among every map of any process
    pending: deque = deque()
    tasks = iter(args)
    try:
        while True:
            for a in itertools.islice(tasks, 2 * workers - len(pending)):
                pending.append(pool.submit(_call, token, initializer, initargs, fn, a))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        wait(pending)  # those already running: the caller may remove what they use


# In a worker process: the map whose call ran last here, and what its initializer returned.
_WORKER_MAP: Any = None
_WORKER_STATE: Any = None


def worker_state() -> Any:
    """In a worker process: what the initializer of the running map returned there."""
    return _WORKER_STATE


def _call(token, initializer, initargs, fn, a):
    global _WORKER_MAP, _WORKER_STATE
    if token != _WORKER_MAP:
        # The last map's state goes first (it may hold memory or an open file), and a failed
        # initializer is retried by the next call.
        _WORKER_MAP = _WORKER_STATE = None
        if initializer is not None:
            _WORKER_STATE = initializer(*initargs)
        _WORKER_MAP = token
    return fn(*a)

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
import threading
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
# lets blocks nest (the outermost one owns the pools). A pool stops when its block has ended and
# no map runs on it any more: a map may outlive its block (a Kedro node's generator is drained
# after the node's hooks have run), so the last map to leave a retired pool stops it.
_LOCK = threading.Lock()
_SHARED: dict[int, ProcessPoolExecutor] | None = None
_DEPTH = 0
_IN_USE: dict[ProcessPoolExecutor, int] = {}  # maps running on each shared pool
_RETIRED: set[ProcessPoolExecutor] = set()  # pools to stop once their maps are done


@contextmanager
def shared_workers() -> Iterator[None]:
    """Within this block, the maps of this process (:func:`ordered_map`) with the same worker
    count run on one pool of processes: started by the first, stopped (and its processes'
    memory given back) when the outermost block ends, or when the last map still running on it
    then ends. Outside a block every map starts and stops its own pool."""
    global _SHARED, _DEPTH
    with _LOCK:
        if _DEPTH == 0:
            _SHARED = {}
        _DEPTH += 1
    try:
        yield
    finally:
        idle = []
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                for pool in _SHARED.values():
                    if _IN_USE.get(pool):
                        _RETIRED.add(pool)  # stopped by its last map
                    else:
                        idle.append(pool)
                _SHARED = None
        for pool in idle:
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
    with _LOCK:
        pool = None if _SHARED is None else _SHARED.get(workers)
        if _SHARED is not None and pool is None:
            pool = _SHARED[workers] = _pool(workers)
        if pool is not None:
            _IN_USE[pool] = _IN_USE.get(pool, 0) + 1
    if pool is None:  # outside a block: a pool of its own
        with _pool(workers) as own:
            yield from _map(own, fn, args, workers, initializer, initargs)
        return
    try:
        yield from _map(pool, fn, args, workers, initializer, initargs)
    except BrokenProcessPool:
        with _LOCK:  # a later map starts a fresh pool
            if _SHARED is not None and _SHARED.get(workers) is pool:
                del _SHARED[workers]
            _RETIRED.add(pool)
        raise
    finally:
        with _LOCK:
            _IN_USE[pool] -= 1
            stop = not _IN_USE[pool] and pool in _RETIRED
            if not _IN_USE[pool]:
                del _IN_USE[pool]
            if stop:
                _RETIRED.discard(pool)
        if stop:
            pool.shutdown(wait=True, cancel_futures=True)


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

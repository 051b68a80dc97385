"""Worker processes of the chunked data steps (``data.workers``): how many, and an ordered map
over them."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

R = TypeVar("R")


def worker_count(setting: int | str, chunks: int) -> int:
    """Processes for a job of ``chunks`` chunks: ``setting`` (``auto``: the cores), 1 below
    four chunks (starting processes would cost more than they save)."""
    if chunks < 4:
        return 1
    return (os.cpu_count() or 1) if setting == "auto" else int(setting)


def ordered_map(
    fn: Callable[..., R],
    args: Iterable[tuple],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[R]:
    """``fn(*a)`` for each ``a`` of ``args``, in ``workers`` spawned processes, yielded in the
    order of ``args``.

    At most ``2 * workers`` calls are in flight, so memory stays bounded however long ``args``
    is. The processes are spawned, not forked: the caller may hold threads. ``initializer``
    (optional) sets up each process once (with what every call shares, so only ``args`` travel).
    """
    ctx = multiprocessing.get_context("spawn")
    pending: deque = deque()
    tasks = iter(args)
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=initializer, initargs=initargs
    ) as pool:
        while True:
            for a in itertools.islice(tasks, 2 * workers - len(pending)):
                pending.append(pool.submit(fn, *a))
            if not pending:
                return
            yield pending.popleft().result()

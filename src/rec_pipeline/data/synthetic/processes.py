"""The chunks of a run, in order: written by this process, or by ``workers`` processes at once.

A worker writes each chunk's text to two part files of its own. As the chunks come back, in
chunk order, this process gives each part its place in the split's file (the end of the parts
before it) and a few threads copy the parts there (``os.copy_file_range``: a copy inside the
kernel, at an offset, without the GIL), so copies overlap with one another and with this
process's statistics; the files are the same bytes whatever the number of workers. Each worker
holds the world once, mapped from a file this process writes (:mod:`.shared`), and one block's
text at a time; at most ``2 * workers`` chunks' parts wait on disk for a worker or for a copy.
The parts and the world file live in a hidden folder inside the output folder (one file system,
so the copies stay in the kernel), removed when the run ends, failed or not, once the workers
have stopped and the copies are done.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

from rec_pipeline.data.synthetic.chunks import ChunkResult, ChunkTask, write_chunk
from rec_pipeline.data.synthetic.params import SyntheticConfig
from rec_pipeline.data.synthetic.shared import load_shared, save_shared
from rec_pipeline.data.synthetic.truth import Calibration
from rec_pipeline.data.synthetic.world import World
from rec_pipeline.data.workers import ordered_map, worker_count, worker_state


def chunk_results(
    folder: Path,
    config: SyntheticConfig,
    world: World,
    calib: Calibration,
    tasks: Sequence[ChunkTask],
    text_files: Sequence[tuple[BinaryIO, BinaryIO]],
) -> Iterator[ChunkResult]:
    """Each task's result, in task order; its text goes to ``text_files[task.split_key]``
    (skeleton, common) and is all there once the iterator is exhausted or closed."""
    workers = worker_count(config.workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            yield write_chunk(config, world, calib, task, *text_files[task.split_key])
        return
    with tempfile.TemporaryDirectory(dir=folder, prefix=".synthetic-parts-") as parts:
        world_file = Path(parts) / "world"
        save_shared(world, world_file)
        results = ordered_map(
            _write_chunk_in_worker,
            ((task,) for task in tasks),
            workers,
            _init_worker,
            (config, world_file, calib, Path(parts)),
        )
        # The workers stop and the copies end before their folder goes.
        with closing(results), PartCopier(2 * workers) as copier:
            for task, result in zip(tasks, results, strict=True):
                assert result.parts is not None
                for out, part in zip(text_files[task.split_key], result.parts, strict=True):
                    copier.append(out, part)
                yield result


class PartCopier:
    """Appends part files to files on a few threads: each part is given its offset (the end of
    the parts appended to that file before it) at once, copied there, then deleted.

    At most ``backlog`` copies wait; a copy's error is raised by a later append or on leaving,
    where every copy is waited for.
    """

    # Copies at a time: one runs at ~4 GB/s between cached pages, so a few keep up with 16
    # workers (~2-3 GB/s together) when the disk slows some of them down.
    THREADS = 4

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.ends: dict[int, int] = {}
        self.pending: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(self.THREADS)

    def append(self, out: BinaryIO, part: Path) -> None:
        fd = out.fileno()
        offset = self.ends.get(fd, 0)
        size = part.stat().st_size
        self.ends[fd] = offset + size
        self.pending.append(self.pool.submit(_copy_part, part, fd, offset, size))
        while len(self.pending) > self.backlog:
            self.pending.popleft().result()

    def __enter__(self) -> PartCopier:
        return self

    def __exit__(self, *exc) -> None:
        with self.pool:
            while self.pending:
                self.pending.popleft().result()


def _copy_part(part: Path, fd: int, offset: int, size: int) -> None:
    """Copy the part file into ``fd`` at ``offset``, then delete it."""
    with open(part, "rb") as src:
        done = 0
        while done < size:
            done += os.copy_file_range(src.fileno(), fd, size - done, done, offset + done)
    part.unlink()


def _init_worker(config: SyntheticConfig, world_file: Path, calib: Calibration, parts: Path):
    """A worker process's share of the run."""
    return config, load_shared(world_file), calib, parts


def _write_chunk_in_worker(task: ChunkTask) -> ChunkResult:
    config, world, calib, parts = worker_state()
    paths = tuple(parts / f"{task.split_key}-{task.index:06d}.{kind}" for kind in ("sk", "cf"))
    with open(paths[0], "wb") as skeleton, open(paths[1], "wb") as common:
        result = write_chunk(config, world, calib, task, skeleton, common)
    result.parts = paths
    return result

"""The chunks of a run, in order: written by this process, or by ``workers`` processes at once.

A worker writes each chunk's text to two part files of its own; the parent appends them, in
chunk order, to the split's files (an in-kernel copy, ``os.sendfile``) and deletes them, so the
files are the same bytes whatever the number of workers. Each worker holds the world once, mapped
from a file the parent writes (:mod:`.shared`), and one block's text at a time; at most
``2 * workers`` chunks' part files wait on disk. The parts and the world file live in a hidden
folder inside the output folder (same file system, so the copy stays in the kernel), removed
when the run ends, failed or not, after the workers have stopped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

from rec_pipeline.data.synthetic.chunks import ChunkResult, ChunkTask, write_chunk
from rec_pipeline.data.synthetic.params import SyntheticConfig
from rec_pipeline.data.synthetic.shared import load_shared, save_shared
from rec_pipeline.data.synthetic.truth import Calibration
from rec_pipeline.data.synthetic.world import World
from rec_pipeline.data.workers import ordered_map, worker_count


def chunk_results(
    folder: Path,
    config: SyntheticConfig,
    world: World,
    calib: Calibration,
    tasks: Sequence[ChunkTask],
    text_files: Sequence[tuple[BinaryIO, BinaryIO]],
) -> Iterator[ChunkResult]:
    """Each task's result, in task order, its text already at the end of
    ``text_files[task.split_key]`` (skeleton, common) when it is yielded."""
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
        with closing(results):  # the workers stop before their folder goes
            for task, result in zip(tasks, results, strict=True):
                assert result.parts is not None
                for out, part in zip(text_files[task.split_key], result.parts, strict=True):
                    _append(out, part)
                yield result


def _append(out: BinaryIO, part: Path) -> None:
    """Append the part file to ``out`` in the kernel, then delete it."""
    out.flush()
    with open(part, "rb") as src:
        size, offset = os.fstat(src.fileno()).st_size, 0
        while offset < size:
            offset += os.sendfile(out.fileno(), src.fileno(), offset, size - offset)
    part.unlink()


# A worker process's share of the run, set once by _init_worker.
_WORKER: tuple[SyntheticConfig, World, Calibration, Path]


def _init_worker(config: SyntheticConfig, world_file: Path, calib: Calibration, parts: Path):
    global _WORKER
    _WORKER = (config, load_shared(world_file), calib, parts)


def _write_chunk_in_worker(task: ChunkTask) -> ChunkResult:
    config, world, calib, parts = _WORKER
    paths = tuple(parts / f"{task.split_key}-{task.index:06d}.{kind}" for kind in ("sk", "cf"))
    with open(paths[0], "wb") as skeleton, open(paths[1], "wb") as common:
        result = write_chunk(config, world, calib, task, skeleton, common)
    result.parts = paths
    return result

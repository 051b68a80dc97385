"""Vocabulary counts: the raw ids of the training split's parsed rows, counted per field.

Validation groups are left out (they must look unseen). Over shard folders the count runs shard
by shard, in worker processes when asked: each counts runs of consecutive shards and sends back
only their distinct ids and counts (a fraction of the rows), merged here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rec_pipeline.data.encode import CFI, COMMON_PREFIX, SKELETON_PREFIX, list_parts
from rec_pipeline.data.sampling import valid_group_mask
from rec_pipeline.data.shards import ShardSet
from rec_pipeline.data.vocab import IdCounter
from rec_pipeline.data.workers import ordered_map, worker_count, worker_state

# Runs of consecutive shards counted per worker process (see count_training_shards).
GROUPS_PER_WORKER = 4


def count_training_ids(
    samples: Iterable[pa.Table],
    commons: Iterable[pa.Table],
    skeleton: Sequence[str],
    common: Sequence[str],
    *,
    valid_fraction: float,
    seed: int,
) -> IdCounter:
    """Count raw ids of training-split rows only (validation groups excluded).

    Skeleton ids are counted per impression; common ids once per training common record (a
    record's features are one observation of its user, however many impressions point at it).
    """
    counter = IdCounter()
    for table in samples:
        train = ~valid_group_mask(table.column(CFI), valid_fraction, seed)
        table = table.filter(pa.array(train))
        for f in skeleton:
            counter.add(SKELETON_PREFIX + f, list_parts(table, f"id_{f}")[1])
    for table in commons:
        train = ~valid_group_mask(table.column(CFI), valid_fraction, seed)
        table = table.filter(pa.array(train))
        for f in common:
            counter.add(COMMON_PREFIX + f, list_parts(table, f"id_{f}")[1])
    return counter


def count_training_shards(
    samples: ShardSet,
    commons: ShardSet,
    skeleton: Sequence[str],
    common: Sequence[str],
    *,
    valid_fraction: float,
    seed: int,
    workers: int | str = 1,
) -> IdCounter:
    """:func:`count_training_ids` of parsed shard folders, shard by shard; with ``workers`` > 1
    in that many processes, each counting runs of whole shards and sending back their distinct
    ids and counts, which are merged here (the counts are the same whatever the number)."""
    count = (list(skeleton), list(common), valid_fraction, seed)
    tasks = [(str(p), "samples") for p in samples.files]
    tasks += [(str(p), "commons") for p in commons.files]
    n_workers = worker_count(workers, len(tasks))
    if n_workers > 1:
        # A few runs of consecutive shards per worker, each merged there: this process then
        # merges tens of partial counts, not one per shard (thousands at Ali-CCP's size).
        runs = np.array_split(np.arange(len(tasks)), min(len(tasks), GROUPS_PER_WORKER * n_workers))
        groups = [([tasks[i] for i in run],) for run in runs]
        partials = ordered_map(_count_group_in_worker, groups, n_workers, _init_counter, count)
    else:
        partials = (_count_shard(count, *t) for t in tasks)
    counter = IdCounter()
    for partial in partials:
        counter.merge(partial)
    return counter


def _count_shard(count: tuple, path: str, kind: str) -> IdCounter:
    skeleton, common, valid_fraction, seed = count
    fields = skeleton if kind == "samples" else common
    # The ids and the record keys only: the weight lists are as large and are not counted.
    table = [pq.read_table(path, columns=[CFI, *(f"id_{f}" for f in fields)])]
    samples, commons = (table, []) if kind == "samples" else ([], table)
    return count_training_ids(
        samples, commons, skeleton, common, valid_fraction=valid_fraction, seed=seed
    )


def _init_counter(*count) -> tuple:
    """A worker process's count_training_shards arguments."""
    return count


def _count_group_in_worker(group: list[tuple[str, str]]) -> IdCounter:
    counter = IdCounter()
    for path, kind in group:
        counter.merge(_count_shard(worker_state(), path, kind))
    return counter

"""Chunks of a split: runs of consecutive blocks, each drawn, labelled and written on its own.

A chunk needs only the world, the calibration and its :class:`ChunkTask` (its records' users and
impression counts, cut from the split's plan), so any process can write any chunk and the
split's files are the chunks' texts in chunk order. A chunk is ``chunk_rows`` rows or a little
more (whole blocks), which makes it the truth file's row group too, as it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from rec_pipeline.data.aliccp.format import BEHAVIOUR_FIELDS
from rec_pipeline.data.aliccp.writer import text_bytes
from rec_pipeline.data.synthetic.blocks import block_at, plan_split
from rec_pipeline.data.synthetic.lines import cfi_values, common_lines, hex16, skeleton_lines
from rec_pipeline.data.synthetic.params import BLOCK_COMMONS, SyntheticConfig
from rec_pipeline.data.synthetic.sampling import log_sigmoid, sigmoid
from rec_pipeline.data.synthetic.truth import Calibration, SparseHistogram, sparse_histogram
from rec_pipeline.data.synthetic.world import World

TRUTH_SCHEMA = pa.schema(
    [("sample_id", pa.int64()), ("p_ctr", pa.float64()), ("p_cvr", pa.float64())]
)

# Score ranges of the oracle AUC histograms: CTR logit, CVR logit, log P(click and conversion).
AUC_RANGES = {"ctr": (-30.0, 20.0), "cvr": (-30.0, 20.0), "ctcvr": (-60.0, 0.0)}


@dataclass(frozen=True)
class ChunkTask:
    """A run of consecutive blocks of one split: all a process needs to write them."""

    split_key: int  # 0 train, 1 test
    index: int  # chunk number within the split
    first_block: int  # index of its first block within the split (seeds the blocks' streams)
    first_sample_id: int
    users: np.ndarray  # user of each of its common records
    sizes: np.ndarray  # impressions of each of its common records


@dataclass
class ChunkStats:
    """What the split's summary needs of one chunk, small enough to travel between processes."""

    rows: int
    common_records: int
    clicks: int
    conversions: int
    skeleton_feats: int
    common_feats: int
    list_ids: dict[str, int]  # ids of each behaviour list, summed over the records
    p_ctr_sums: list[float]  # per block, so the split's sum is added in one order
    users: tuple[np.ndarray, np.ndarray]  # distinct users of the records, records of each
    items: tuple[np.ndarray, np.ndarray]  # distinct items of the rows, rows of each
    auc: dict[str, SparseHistogram]  # keys of AUC_RANGES; cvr over clicked rows only


@dataclass
class ChunkResult:
    truth: pa.Table  # sample_id, p_ctr, p_cvr of every row: one row group of the truth file
    stats: ChunkStats
    # Where a worker process left the chunk's skeleton and common text; None when the chunk was
    # written straight into the split's files.
    parts: tuple[Path, Path] | None = None


def plan_chunks(
    config: SyntheticConfig, world: World, split_key: int, n_rows: int, first_sample_id: int
) -> list[ChunkTask]:
    """The split's chunks: blocks taken in order until they reach ``chunk_rows`` rows.

    Memory: the plan holds two integers per common record of the split (16 MB per million).
    """
    sizes, users = plan_split(config, world, split_key, n_rows)
    block_rows = np.add.reduceat(sizes, np.arange(0, len(sizes), BLOCK_COMMONS))
    tasks: list[ChunkTask] = []
    first, rows, next_id = 0, 0, first_sample_id
    for b, n in enumerate(block_rows.tolist()):
        rows += n
        if rows >= config.chunk_rows or b == len(block_rows) - 1:
            sl = slice(first * BLOCK_COMMONS, (b + 1) * BLOCK_COMMONS)
            tasks.append(ChunkTask(split_key, len(tasks), first, next_id, users[sl], sizes[sl]))
            first, rows, next_id = b + 1, 0, next_id + rows
    return tasks


def write_chunk(
    config: SyntheticConfig,
    world: World,
    calib: Calibration,
    task: ChunkTask,
    skeleton_out: BinaryIO,
    common_out: BinaryIO,
) -> ChunkResult:
    """Draw the chunk's blocks, label them, write their text to the two files; return the
    truth and the statistics. Memory: one block's text at a time, the chunk's truth."""
    truth, p_ctr_sums, users, items = [], [], [], []
    scores: dict[str, list] = {k: [] for k in AUC_RANGES}
    labels: dict[str, list] = {k: [] for k in AUC_RANGES}
    list_ids = dict.fromkeys(BEHAVIOUR_FIELDS, 0)
    clicks = conversions = skeleton_feats = common_feats = 0
    next_id = task.first_sample_id
    for start in range(0, len(task.sizes), BLOCK_COMMONS):
        index = task.first_block + start // BLOCK_COMMONS
        sl = slice(start, start + BLOCK_COMMONS)
        block, rng = block_at(config, world, task.split_key, index, task.users[sl], task.sizes[sl])
        n = len(block.rec)
        z_ctr, z_cvr = calib.logits(block)
        p_ctr, p_cvr = sigmoid(z_ctr), sigmoid(z_cvr)
        click = rng.random(n) < p_ctr
        conversion = click & (rng.random(n) < p_cvr)
        sample_ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        first_rec = index * BLOCK_COMMONS
        cfi = hex16(cfi_values(config, task.split_key, first_rec, len(block.users)))
        row_labels = click.astype(np.int64) + conversion
        skeleton, n_skeleton_feats = skeleton_lines(world, block, sample_ids, row_labels, cfi)
        common, n_common_feats = common_lines(world, block, cfi)
        skeleton_out.write(text_bytes(skeleton))
        common_out.write(text_bytes(common))
        truth.append(
            pa.Table.from_arrays(
                [pa.array(sample_ids), pa.array(p_ctr), pa.array(p_cvr)], schema=TRUTH_SCHEMA
            )
        )
        clicks += int(click.sum())
        conversions += int(conversion.sum())
        skeleton_feats += n_skeleton_feats
        common_feats += n_common_feats
        p_ctr_sums.append(float(p_ctr.sum()))
        users.append(block.users)
        items.append(block.item)
        for f in BEHAVIOUR_FIELDS:
            list_ids[f] += len(block.beh_entity[f])
        for key, score, label in (
            ("ctr", z_ctr, click),
            ("cvr", z_cvr[click], conversion[click]),
            ("ctcvr", log_sigmoid(z_ctr) + log_sigmoid(z_cvr), conversion),
        ):
            scores[key].append(score)
            labels[key].append(label)
    stats = ChunkStats(
        rows=next_id - task.first_sample_id,
        common_records=len(task.users),
        clicks=clicks,
        conversions=conversions,
        skeleton_feats=skeleton_feats,
        common_feats=common_feats,
        list_ids=list_ids,
        p_ctr_sums=p_ctr_sums,
        users=np.unique(np.concatenate(users), return_counts=True),
        items=np.unique(np.concatenate(items), return_counts=True),
        auc={
            k: sparse_histogram(
                np.concatenate(scores[k]), np.concatenate(labels[k]), *AUC_RANGES[k]
            )
            for k in AUC_RANGES
        },
    )
    return ChunkResult(pa.concat_tables(truth), stats)

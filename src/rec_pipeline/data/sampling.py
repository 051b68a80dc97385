"""The train/valid group split and the negative sampling of training rows.

Both are pure functions of their inputs and a seed, so a rerun reproduces the same rows.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_pipeline.data.shards import COMPRESSION, PartFile, ShardSet, staging_folder, write_part
from rec_pipeline.data.stats import SplitStats
from rec_pipeline.data.workers import ordered_map, worker_count

# Column of the unsampled training rows that holds each row's negative-sampling draw.
KEEP_DRAW = "keep_draw"

log = logging.getLogger(__name__)


def _hash_key(seed: int) -> str:
    # pandas' hash_array takes a 16-character key; derive it from the seed.
    return f"{seed % 10**16:016d}"


def valid_group_mask(keys: pa.Array | pa.ChunkedArray, fraction: float, seed: int) -> np.ndarray:
    """bool [N]: True where the row's common_feature_index falls in the validation groups.

    A group goes to validation when a seeded hash of its key, mapped to [0, 1), is below
    ``fraction``: every row of a group lands on the same side, in any file order and any chunking.
    Keys are hashed once per distinct value (a chunk holds few groups: the files are grouped).
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    encoded = pc.dictionary_encode(keys)
    uniques = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    if len(uniques) == 0:
        return np.zeros(len(keys), dtype=bool)
    h = pd.util.hash_array(uniques, hash_key=_hash_key(seed), categorize=False)
    is_valid = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction
    return is_valid[encoded.indices.to_numpy(zero_copy_only=False)]


def negative_draws(click: np.ndarray, seed: int, chunk: int) -> np.ndarray:
    """float64 [N]: a uniform draw in [0, 1) per click=0 row, 0.0 for click=1 rows.

    Drawn once at encoding time and stored with the training rows, so that sampling keeps the
    rows whose draw is below the keep probability: a rerun with a new probability needs no
    re-encoding, and a smaller probability keeps a subset of a larger one's rows. The generator
    is seeded by (seed, chunk index), so the draws do not depend on how many chunks were
    processed before in this process.
    """
    draws = np.zeros(len(click), dtype=np.float64)
    neg = click == 0
    draws[neg] = np.random.default_rng([seed, chunk]).random(int(neg.sum()))
    return draws


def keep_mask(click: np.ndarray, draws: np.ndarray, keep_prob: float) -> np.ndarray:
    """bool [N]: every click=1 row, and the click=0 rows whose draw is below ``keep_prob``."""
    if keep_prob >= 1.0:
        return np.ones(len(click), dtype=bool)
    return (click != 0) | (draws < keep_prob)


@dataclass
class _ShardSample:
    """One shard's kept rows (a table, or the part file a worker wrote) and its counts."""

    rows: pa.Table | PartFile
    counts: dict[str, int]
    kept: SplitStats


def _sample_table(table: pa.Table, keep_prob: float) -> tuple[pa.Table, dict[str, int], SplitStats]:
    click = table.column("click").to_numpy()
    keep = keep_mask(click, table.column(KEEP_DRAW).to_numpy(), keep_prob)
    out = table.filter(pa.array(keep)).drop_columns([KEEP_DRAW])
    kept = SplitStats()
    kept.add_labels(out.column("click").to_numpy(), out.column("conversion").to_numpy())
    counts = {
        "rows_in": table.num_rows,
        "negatives_seen": int((click == 0).sum()),
        "negatives_kept": int(((click == 0) & keep).sum()),
    }
    return out, counts, kept


def _sample_shard(path: str, keep_prob: float, staging: str, compression: str) -> _ShardSample:
    """In a worker: sample shard ``path`` and write its kept rows to a part file in ``staging``."""
    out, counts, kept = _sample_table(pq.read_table(path), keep_prob)
    part = write_part(out, Path(staging) / f"sampled-{Path(path).stem}.parquet", compression)
    return _ShardSample(part, counts, kept)


def keep_prob_for(keep_prob: float, at_least: int | None, negatives: int) -> float:
    """The rate training negatives are kept at: ``keep_prob``, raised (up to 1) so that about
    ``at_least`` of the split's ``negatives`` stay; ``at_least=None`` leaves it as given.

    Sampling negatives buys speed on large logs; on a small one the rows it drops are the
    information the model lacks, so the floor is a count of negatives rather than a share.
    """
    if at_least is None or negatives <= 0:
        return float(keep_prob)
    return max(float(keep_prob), min(1.0, at_least / negatives))


def training_keep_prob(keep_prob: float, at_least: int | None, encode_report: dict) -> float:
    """:func:`keep_prob_for` the encoded training split (its non-click rows, from the encode
    report), logged when the floor raises the rate."""
    stats = encode_report["splits"]["train_all"]
    negatives = int(stats["rows"]) - int(stats["clicks"])
    rate = keep_prob_for(keep_prob, at_least, negatives)
    if rate > keep_prob:
        log.info(
            "Keeping training negatives at %.3f, above data.neg_keep_prob_train=%s, so that "
            "data.neg_keep_at_least=%d of the %d stay",
            rate,
            keep_prob,
            at_least,
            negatives,
        )
    return rate


def sample_negatives(
    shards: ShardSet | Iterable[pa.Table],
    keep_prob: float,
    *,
    staging: Path | None = None,
    workers: int | str = 1,
    compression: str = COMPRESSION,
) -> Iterator[tuple[pa.Table | PartFile, dict]]:
    """Negative sampling of encoded training shards (with their :data:`KEEP_DRAW` column).

    Yields each shard's kept rows, in order and without the draw column, and the running
    report: the keep probability, rows and negatives seen and kept, and the kept rows' labels.
    With a :class:`ShardSet`, a ``staging`` folder and ``workers`` > 1, shards are sampled in
    that many processes that write their kept rows as part files themselves (only paths and
    counts travel); the rows, their order and the report are the same whatever the number.
    """
    if isinstance(shards, ShardSet):
        files = shards.files
        n = 1 if staging is None else worker_count(workers, len(files))
        if n > 1:
            yield from _sample_in_workers(files, keep_prob, Path(staging), n, compression)
            return
        shards = shards.iter_tables()
    done = (_ShardSample(*_sample_table(t, keep_prob)) for t in shards)
    yield from _with_report(done, keep_prob)


def _sample_in_workers(files, keep_prob, staging, workers, compression):
    folder = staging_folder(staging, "sample-")
    try:
        tasks = [(str(f), keep_prob, str(folder), compression) for f in files]
        done = ordered_map(_sample_shard, tasks, workers)
        yield from _with_report(done, keep_prob)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _with_report(done: Iterable[_ShardSample], keep_prob: float) -> Iterator[tuple]:
    """Each shard's rows with the report of every shard so far."""
    kept = SplitStats()
    counts = {"rows_in": 0, "negatives_seen": 0, "negatives_kept": 0}
    for shard in done:
        kept.merge(shard.kept)
        for k, v in shard.counts.items():
            counts[k] += v
        labels = {k: v for k, v in kept.as_dict().items() if k != "fields"}
        yield shard.rows, {"keep_prob": float(keep_prob), **counts, "kept": labels}

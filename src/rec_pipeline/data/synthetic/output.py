"""Writing a synthetic run: the four raw files, the truth, the summary and the marker, safely."""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rec_pipeline.data.aliccp.format import BEHAVIOUR_FIELDS, RAW_FILE_NAMES, SPLIT_FILES, SPLITS
from rec_pipeline.data.synthetic.chunks import AUC_RANGES, TRUTH_SCHEMA, ChunkStats, plan_chunks
from rec_pipeline.data.synthetic.params import (
    GENERATOR_VERSION,
    MARKER_NAME,
    TRUTH_FILE_NAMES,
    SyntheticConfig,
)
from rec_pipeline.data.synthetic.processes import chunk_results
from rec_pipeline.data.synthetic.summary import SplitSummary, SyntheticSummary
from rec_pipeline.data.synthetic.truth import AucHistogram, Calibration, calibrate
from rec_pipeline.data.synthetic.world import World, build_world

# The package, not this module: the marker names the generator as its users import it.
_GENERATOR = __package__


def write_synthetic(folder: Path, config: SyntheticConfig) -> SyntheticSummary:
    """Write the four raw files, ``truth_{train,test}.parquet`` and the marker into ``folder``.

    Files are written under hidden temporary names (``.<name>.partial``) and renamed only once
    all of them are complete; the marker ``_synthetic.json`` (fingerprint, config, summary, file
    names) is written last, so an interrupted run never leaves files that look complete. Files
    of the same names already in ``folder`` are replaced (whether that is allowed is the
    caller's decision). Memory: the world tables plus one chunk of about ``chunk_rows`` rows, in
    this process and in each of the ``workers`` processes (:mod:`.processes`), which share one
    copy of the world.

    Speed, measured on one core (``taskset -c 0``), world, calibration, both text files, truth
    and oracle statistics included: default config (400k rows) in 1.7 s, 235k rows/s; 1M train
    + 100k test rows (640 MB) in 4.0 s, 270k rows/s (~16M rows per minute), 455 MB peak RSS at
    ``chunk_rows=200_000``. Long behaviour lists cost in proportion to the text: world2 (900k
    rows, ~520 list ids per record, 1 GB) in 12 s, 3.6M rows of it (4.4 GB) in 69 s at
    833 MB peak RSS (on a shared machine). Several processes: benchmarks/README.md,
    "Generation" (``python -m benchmarks.bench_generate``).
    """
    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world = build_world(config)
    calib = calibrate(config, world)
    splits, counts = _write_splits(folder, config, world, calib)
    _unseen_shares(splits["test"], counts["train"], counts["test"])
    seconds = time.perf_counter() - start
    summary = SyntheticSummary(
        fingerprint=config.fingerprint(),
        splits=splits,
        ctr_intercept=calib.ctr_intercept,
        cvr_intercept=calib.cvr_intercept,
        ctr_logit_variance_shares=calib.ctr_shares,
        cvr_logit_variance_shares=calib.cvr_shares,
        ctr_cvr_logit_corr=calib.corr,
        bytes_written=sum(sum(s.bytes.values()) for s in splits.values()),
        seconds=round(seconds, 3),
        rows_per_second=round((config.n_train_rows + config.n_test_rows) / seconds, 1),
    )
    _write_marker(folder, config, summary)
    return summary


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker :func:`write_synthetic` left in ``folder``, or None when there is none."""
    path = Path(folder) / MARKER_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_splits(
    folder: Path, config: SyntheticConfig, world: World, calib: Calibration
) -> tuple[dict[str, SplitSummary], dict[str, dict[str, np.ndarray]]]:
    """Write both splits under temporary names, then rename them all (or remove them all)."""
    names = {split: (*SPLIT_FILES[split], f"truth_{split}.parquet") for split in SPLITS}
    temps = {split: tuple(folder / f".{n}.partial" for n in names[split]) for split in SPLITS}
    tasks = []
    first_id = 1
    for key, n_rows in enumerate((config.n_train_rows, config.n_test_rows)):
        tasks += plan_chunks(config, world, key, n_rows, first_id)
        first_id += n_rows
    stats = [_SplitStats.empty(world) for _ in SPLITS]
    try:
        with ExitStack() as stack:
            text = [
                tuple(stack.enter_context(open(p, "wb")) for p in temps[split][:2])
                for split in SPLITS
            ]
            # Probabilities and consecutive ids gain nothing from dictionaries: without them the
            # writer is ~13x faster (4.5 against 57 ms per 200k rows) and the files ~17 % smaller.
            truth = [
                stack.enter_context(
                    pq.ParquetWriter(temps[split][2], TRUTH_SCHEMA, use_dictionary=False)
                )
                for split in SPLITS
            ]
            results = chunk_results(folder, config, world, calib, tasks, text)
            with closing(results):
                for task, result in zip(tasks, results, strict=True):
                    truth[task.split_key].write_table(result.truth)
                    stats[task.split_key].add(result.stats)
        (folder / MARKER_NAME).unlink(missing_ok=True)
        for split in SPLITS:
            for tmp, name in zip(temps[split], names[split], strict=True):
                os.replace(tmp, folder / name)
    except BaseException:
        for split in SPLITS:
            for tmp in temps[split]:
                tmp.unlink(missing_ok=True)
        raise
    splits, counts = {}, {}
    for split, split_stats in zip(SPLITS, stats, strict=True):
        splits[split] = split_stats.summary()
        splits[split].bytes = {n: (folder / n).stat().st_size for n in names[split]}
        counts[split] = {"users": split_stats.user_records, "items": split_stats.item_rows}
    return splits, counts


def _write_marker(folder: Path, config: SyntheticConfig, summary: SyntheticSummary) -> None:
    payload = {
        "generator": _GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "fingerprint": summary.fingerprint,
        "config": config.to_dict(),
        "files": {"raw": list(RAW_FILE_NAMES), "truth": list(TRUTH_FILE_NAMES)},
        "summary": summary.to_dict(),
    }
    tmp_marker = folder / f".{MARKER_NAME}.partial"
    tmp_marker.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_marker, folder / MARKER_NAME)


@dataclass
class _SplitStats:
    """Running counts of a split, and the oracle AUC histograms, added chunk by chunk."""

    user_records: np.ndarray
    item_rows: np.ndarray
    auc: dict[str, AucHistogram] = field(
        default_factory=lambda: {k: AucHistogram() for k in AUC_RANGES}
    )
    list_ids: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BEHAVIOUR_FIELDS, 0))
    sums: SplitSummary = field(default_factory=SplitSummary)
    skeleton_feats: int = 0
    common_feats: int = 0
    sum_p: float = 0.0

    @classmethod
    def empty(cls, world: World) -> _SplitStats:
        return cls(
            np.zeros(len(world.user_ids), dtype=np.int64),
            np.zeros(len(world.item_ids), dtype=np.int64),
        )

    def add(self, chunk: ChunkStats) -> None:
        s = self.sums
        s.rows += chunk.rows
        s.common_records += chunk.common_records
        s.clicks += chunk.clicks
        s.conversions += chunk.conversions
        self.skeleton_feats += chunk.skeleton_feats
        self.common_feats += chunk.common_feats
        for f, n in chunk.list_ids.items():
            self.list_ids[f] += n
        for block_sum in chunk.p_ctr_sums:
            self.sum_p += block_sum
        users, records = chunk.users
        self.user_records[users] += records
        items, rows = chunk.items
        self.item_rows[items] += rows
        for key, histogram in self.auc.items():
            histogram.add(chunk.auc[key])

    def summary(self) -> SplitSummary:
        s = self.sums
        s.ctr = s.clicks / s.rows
        s.cvr = s.conversions / s.clicks if s.clicks else None
        s.ctcvr = s.conversions / s.rows
        s.mean_p_ctr = self.sum_p / s.rows
        s.oracle_auc_ctr = self.auc["ctr"].auc()
        s.oracle_auc_cvr = self.auc["cvr"].auc()
        s.oracle_auc_ctcvr = self.auc["ctcvr"].auc()
        s.skeleton_features_per_row = self.skeleton_feats / s.rows
        s.common_features_per_record = self.common_feats / s.common_records
        s.users = int((self.user_records > 0).sum())
        s.items = int((self.item_rows > 0).sum())
        s.behaviour_list_mean = {
            f: round(v / s.common_records, 2) for f, v in self.list_ids.items()
        }
        return s


def _unseen_shares(summary: SplitSummary, train: dict, test: dict) -> None:
    """Fill the test split's shares of users and items that the training split never shows."""
    new_user = (test["users"] > 0) & (train["users"] == 0)
    new_item = (test["items"] > 0) & (train["items"] == 0)
    summary.unseen_user_share = round(float(new_user.sum() / max(summary.users, 1)), 4)
    summary.unseen_user_record_share = round(
        float(test["users"][new_user].sum() / max(summary.common_records, 1)), 4
    )
    summary.unseen_item_share = round(float(new_item.sum() / max(summary.items, 1)), 4)
    summary.unseen_item_impression_share = round(
        float(test["items"][new_item].sum() / max(summary.rows, 1)), 4
    )

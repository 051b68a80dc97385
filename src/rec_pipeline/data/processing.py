"""The data-processing steps of the Kedro pipeline run in one call, without Kedro: raw folder ->
parsed shards -> vocabularies -> encoded shards -> sampled training rows -> metadata. For
benchmarks and scripts; the pipeline itself runs the same steps as nodes through the catalog."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rec_pipeline.config import DataConfig, VocabConfig
from rec_pipeline.data.aliccp import SPLIT_FILES
from rec_pipeline.data.counting import count_training_shards
from rec_pipeline.data.encode import ENCODE_OUTPUTS, encode_splits
from rec_pipeline.data.metadata import DatasetMetadata, describe
from rec_pipeline.data.parsing import PARSE_OUTPUTS, parse_raw_files
from rec_pipeline.data.raw import RawFiles
from rec_pipeline.data.sampling import sample_negatives, training_keep_prob
from rec_pipeline.data.shards import ShardSet, ShardWriter
from rec_pipeline.data.vocab import Vocabulary, vocabulary_frame
from rec_pipeline.data.workers import shared_workers

# Where the worker processes write their part files before they are moved into place.
STAGING = "_staging"
# Written with the encoding: what it was made from. A folder is reused only for the same.
SETTINGS = "encode_settings.json"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessedData:
    """Shard folders under ``folder`` (``encoded_<name>``, ``sampled/encoded_train``), the
    metadata, and each stage's wall time in seconds."""

    folder: Path
    metadata: DatasetMetadata
    seconds: dict[str, float]

    def encoded(self, name: str) -> ShardSet:
        if name == "train":
            return ShardSet(self.folder / "sampled" / "encoded_train")
        return ShardSet(self.folder / f"encoded_{name}")


def write_shards(folder: Path, names: Sequence[str], chunks: Iterable[tuple]) -> object:
    """Write a generator node's yielded tables (or move its part files) as shard folders
    ``folder/<name>``, as the catalog does; returns the item that follows them in the last chunk
    (its report)."""
    writers = [ShardWriter(Path(folder) / n) for n in names]
    for w in writers:
        w.reset()
    report = None
    for outs in chunks:
        for w, table in zip(writers, outs[: len(names)], strict=True):
            w.write(table)
        report = outs[len(names)] if len(outs) > len(names) else None
    return report


@shared_workers()  # the stages' maps run on one pool of processes
def encode_folder(raw: RawFiles, data: DataConfig, vocab: VocabConfig, folder: Path) -> dict:
    """Parse, count vocabularies and encode into ``folder``; returns the stage times. Written
    last, ``encode_report.json`` marks a complete folder."""
    f, folder, seconds = data.fields, Path(folder), {}
    t0 = time.perf_counter()
    names = [f"parsed_{n}" for n in PARSE_OUTPUTS] + ["quarantine"]
    staging = folder / STAGING
    chunk = data.chunk_mb << 20
    parse = parse_raw_files(raw, f.skeleton, f.common, chunk, staging, data.workers, data.tokenizer)
    write_shards(folder, names, parse)
    parsed = {n: ShardSet(folder / f"parsed_{n}") for n in PARSE_OUTPUTS}
    seconds["parse"] = (t1 := time.perf_counter()) - t0
    counter = count_training_shards(
        parsed["train_samples"],
        parsed["train_commons"],
        f.skeleton,
        f.common,
        valid_fraction=data.valid_fraction,
        seed=data.seed,
        workers=data.workers,
    )
    kw = dict(min_count=vocab.min_count, max_size=vocab.max_size, hash_buckets=vocab.hash_buckets)
    vocabularies = vocabulary_frame(counter, f.names(), **kw)
    vocabularies.to_parquet(folder / "vocabularies.parquet")
    seconds["vocabularies"] = (t2 := time.perf_counter()) - t1
    lookup = Vocabulary(vocabularies, vocab.hash_buckets)
    enc = encode_splits(
        parsed,
        f.skeleton,
        f.common,
        lookup,
        valid_fraction=data.valid_fraction,
        seed=data.seed,
        staging=staging,
        workers=data.workers,
    )
    report = write_shards(folder, [f"encoded_{n}" for n in ENCODE_OUTPUTS], enc)
    seconds["encode"] = time.perf_counter() - t2
    (folder / "encode_report.json").write_text(json.dumps(report, default=str))
    return seconds


def encoding_settings(raw: RawFiles, data: DataConfig, vocab: VocabConfig) -> dict:
    """What an encoding depends on: each raw file (path, size, modification time), the split's
    seed and validation share, the fields, the chunk size and the vocabulary keys. Not the
    worker count (the shards' bytes are the same for any) nor the sampling keys (sampling runs
    on the encoding)."""
    files = {}
    for path in [f(split) for split in SPLIT_FILES for f in (raw.skeleton, raw.common)]:
        real = path.resolve()
        st = real.stat()
        files[path.name] = [str(real), st.st_size, st.st_mtime_ns]
    keep = ("seed", "valid_fraction", "fields", "chunk_mb")
    return {
        "raw": files,
        "data": {k: v for k, v in data.model_dump(mode="json").items() if k in keep},
        "vocab": vocab.model_dump(mode="json"),
    }


def _reusable(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds a complete encoding made from ``settings``."""
    if not (folder / "encode_report.json").exists():
        return False
    path = folder / SETTINGS
    made_from = json.loads(path.read_text()) if path.exists() else {}
    if made_from == settings:
        return True
    differ = sorted(
        f"{part}.{k}"
        for part, now in settings.items()
        for k in set(now) | set(made_from.get(part, {}))
        if now.get(k) != made_from.get(part, {}).get(k)
    )
    log.info("Encoding %s again: made from other settings (%s).", folder, ", ".join(differ))
    return False


@shared_workers()
def process_folder(
    raw: RawFiles, data: DataConfig, vocab: VocabConfig, folder: Path
) -> ProcessedData:
    """Every data-processing step into ``folder``. An encoding complete there and made from the
    same raw files and settings (:func:`encoding_settings`) is reused: only negative sampling
    and the metadata are made again. Otherwise the folder is encoded anew."""
    folder = Path(folder)
    seconds = {}
    settings = encoding_settings(raw, data, vocab)
    if not _reusable(folder, settings):
        (folder / "encode_report.json").unlink(missing_ok=True)
        seconds = encode_folder(raw, data, vocab, folder)
        (folder / SETTINGS).write_text(json.dumps(settings, indent=1))
    t0 = time.perf_counter()
    train_all = ShardSet(folder / "encoded_train_all")
    report = json.loads((folder / "encode_report.json").read_text())
    keep = training_keep_prob(data.neg_keep_prob_train, data.neg_keep_at_least, report)
    sampled = sample_negatives(train_all, keep, staging=folder / STAGING, workers=data.workers)
    sampling = write_shards(folder / "sampled", ["encoded_train"], sampled)
    seconds["sampling"] = time.perf_counter() - t0
    vocabularies = pd.read_parquet(folder / "vocabularies.parquet")
    metadata = describe(vocabularies, report, sampling, data, vocab)
    return ProcessedData(folder, metadata, seconds)

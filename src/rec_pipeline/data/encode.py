"""Feature encoding: parsed shards (raw int64 ids) -> encoded shards (vocabulary rows).

Parsed and encoded tables share one layout, kept normalised as in the raw files:

* samples: ``sample_id`` int64, ``click`` int8, ``conversion`` int8, a link to the common record
  (``common_feature_index`` bytes when parsed; ``common_row`` int32, the row in the split's
  encoded commons, when encoded), and per skeleton field ``f``: ``id_f`` list<int> and ``w_f``
  list<float32> (an absent field is an empty list).
* commons: ``common_feature_index`` and ``id_f`` / ``w_f`` per common field.

Multi-hot lists and their weights are kept whole. Everything is vectorised per column: the only
Python loops run over fields and shards, never rows.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rec_pipeline.data.sampling import KEEP_DRAW, negative_draws, valid_group_mask
from rec_pipeline.data.shards import COMPRESSION, PartFile, ShardSet, staging_folder, write_part
from rec_pipeline.data.stats import FieldStats, SplitStats
from rec_pipeline.data.vocab import Vocabulary
from rec_pipeline.data.workers import ordered_map, worker_count, worker_state

SKELETON_PREFIX, COMMON_PREFIX = "f0_", "f1_"
CFI = "common_feature_index"


def list_parts(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [N+1] starting at 0, flat values [nnz]) of a list column."""
    col = table.column(column)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return offsets - offsets[0], values


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, value_type)
    )


def encoded_schema(fields: Sequence[str], kind: str, *, with_draw: bool = False) -> pa.Schema:
    """Layout of encoded samples or commons; ``with_draw`` adds the sampling draw column."""
    cols: list[pa.Field] = (
        [
            pa.field("sample_id", pa.int64()),
            pa.field("click", pa.int8()),
            pa.field("conversion", pa.int8()),
            pa.field("common_row", pa.int32()),
        ]
        if kind == "samples"
        else [pa.field(CFI, pa.binary())]
    )
    for f in fields:
        cols += [
            pa.field(f"id_{f}", pa.list_(pa.int32())),
            pa.field(f"w_{f}", pa.list_(pa.float32())),
        ]
    if with_draw:
        cols.append(pa.field(KEEP_DRAW, pa.float64()))
    return pa.schema(cols)


def _encode_fields(
    table: pa.Table,
    raw_fields: Sequence[str],
    prefix: str,
    vocab: Vocabulary,
    stats: dict[str, FieldStats],
) -> dict[str, pa.Array]:
    out: dict[str, pa.Array] = {}
    for f in raw_fields:
        offsets, raw = list_parts(table, f"id_{f}")
        w_offsets, weights = list_parts(table, f"w_{f}")
        idx = vocab.lookup(prefix + f, raw)
        lengths = np.diff(offsets)
        st = stats.setdefault(prefix + f, FieldStats())
        st.values += int(raw.size)
        st.oov += int((idx == 0).sum())
        st.rows_present += int((lengths > 0).sum())
        st.max_len = max(st.max_len, int(lengths.max(initial=0)))
        out[f"id_{f}"] = _list_array(offsets, idx, pa.int32())
        out[f"w_{f}"] = _list_array(w_offsets, weights.astype(np.float32), pa.float32())
    return out


class CommonIndex:
    """common_feature_index -> row in the split's encoded commons (in write order).

    A record id written twice resolves to its first row; the repeats are counted.
    """

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._index: pd.Index | None = None
        self._rows: np.ndarray | None = None

    def extend(self, keys: pa.Array | pa.ChunkedArray) -> None:
        self._chunks.append(np.asarray(keys.to_pylist(), dtype=object))
        self._index = None

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks)

    def build(self) -> pd.Index:
        """The lookup index over every record read so far (made once, then reused)."""
        if self._index is None:
            allk = np.concatenate(self._chunks) if self._chunks else np.empty(0, dtype=object)
            first = ~pd.Index(allk).duplicated(keep="first")
            self._index = pd.Index(allk[first])
            self._rows = np.flatnonzero(first)
        return self._index

    def rows(self, keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 [N] rows, -1 where the record is missing (looked up once per distinct key)."""
        index = self.build()
        if isinstance(keys, pa.ChunkedArray):
            keys = keys.combine_chunks()
        enc = pc.dictionary_encode(keys)
        pos = index.get_indexer(np.asarray(enc.dictionary.to_pylist(), dtype=object))
        rows = np.where(pos >= 0, self._rows[np.maximum(pos, 0)], -1) if len(index) else pos
        return rows[enc.indices.to_numpy(zero_copy_only=False)].astype(np.int64)

    @property
    def duplicates(self) -> int:
        return len(self) - len(self.build())


def encode_commons(
    table: pa.Table, common: Sequence[str], vocab: Vocabulary, stats: SplitStats
) -> pa.Table:
    cols = {CFI: table.column(CFI).cast(pa.binary())}
    cols.update(_encode_fields(table, common, COMMON_PREFIX, vocab, stats.fields))
    stats.rows += table.num_rows
    return pa.table(cols, schema=encoded_schema(common, "commons"))


@dataclass
class SampleEncoding:
    """Counts of what happened to the sample rows of one raw file (before any sampling)."""

    rows_in: int = 0
    missing_common: int = 0
    missing_examples: list[int] = field(default_factory=list)

    def merge(self, other: SampleEncoding) -> None:
        """Add the counts of ``other`` (a later chunk of the same file)."""
        self.rows_in += other.rows_in
        self.missing_common += other.missing_common
        room = max(0, 20 - len(self.missing_examples))
        self.missing_examples.extend(other.missing_examples[:room])


def encode_samples(
    table: pa.Table,
    skeleton: Sequence[str],
    vocab: Vocabulary,
    commons: CommonIndex,
    stats: SplitStats,
    enc: SampleEncoding,
    *,
    keep: np.ndarray | None = None,
    draws: np.ndarray | None = None,
) -> pa.Table:
    """Encode one parsed shard. ``keep`` (bool [N]) selects rows first (the split); ``draws``
    (float64 [N]), when given, is kept as the ``keep_draw`` column for negative sampling."""
    if keep is not None:
        table = table.filter(pa.array(keep))
        draws = None if draws is None else draws[keep]
    rows = commons.rows(table.column(CFI))
    missing = rows < 0
    if missing.any():
        enc.missing_common += int(missing.sum())
        ids = table.column("sample_id").to_numpy()[missing]
        enc.missing_examples.extend(ids[: max(0, 20 - len(enc.missing_examples))].tolist())
        table = table.filter(pa.array(~missing))
        rows = rows[~missing]
        draws = None if draws is None else draws[~missing]
    click = table.column("click").to_numpy().astype(np.int8)
    conversion = table.column("conversion").to_numpy().astype(np.int8)
    stats.add_labels(click, conversion)
    cols: dict[str, pa.Array] = {
        "sample_id": table.column("sample_id").cast(pa.int64()),
        "click": pa.array(click),
        "conversion": pa.array(conversion),
        "common_row": pa.array(rows.astype(np.int32)),
    }
    cols.update(_encode_fields(table, skeleton, SKELETON_PREFIX, vocab, stats.fields))
    if draws is not None:
        cols[KEEP_DRAW] = pa.array(draws, pa.float64())
    schema = encoded_schema(skeleton, "samples", with_draw=draws is not None)
    return pa.table(cols, schema=schema)


def split_train_rows(
    table: pa.Table, *, valid_fraction: float, seed: int, chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid) bool masks [N] and the negative-sampling draws float64 [N] of a parsed
    training shard. Validation takes whole common-record groups and is never sampled."""
    valid = valid_group_mask(table.column(CFI), valid_fraction, seed)
    draws = negative_draws(table.column("click").to_numpy(), seed, chunk)
    return ~valid, valid, draws


# Outputs of one encoding pass, in the order :func:`encode_splits` yields them. ``train_all`` is
# every training row (with its sampling draw); negative sampling makes ``train`` from it.
ENCODE_OUTPUTS = ("train_all", "valid", "test", "train_commons", "test_commons")


@dataclass
class _Context:
    """What encoding a parsed shard needs; sent once to each worker process."""

    skeleton: Sequence[str]
    common: Sequence[str]
    vocab: Vocabulary
    indexes: dict[str, CommonIndex]
    valid_fraction: float
    seed: int
    staging: Path
    compression: str


@dataclass
class _EncodedChunk:
    """One parsed shard, encoded: a part file per output split and their counts (``file``:
    the sample rows' fate, ``None`` for a commons shard)."""

    parts: dict[str, PartFile]
    stats: dict[str, SplitStats]
    file: SampleEncoding | None


def _encode_chunk(ctx: _Context, path: str, source: str, kind: str, chunk: int) -> _EncodedChunk:
    """Encode parsed shard ``chunk`` of the ``source`` split's ``kind`` (commons or samples),
    writing each output split's rows to a part file in the staging folder.

    Training samples are split into train_all (with the sampling draws of chunk ``chunk``) and
    valid; test samples and commons are encoded as they are.
    """
    table = pq.read_table(path)
    out = _EncodedChunk({}, {}, None)

    def write(split: str, encoded: pa.Table) -> None:
        name = ctx.staging / f"{split}-{chunk:06d}.parquet"
        out.parts[split] = write_part(encoded, name, ctx.compression)

    if kind == "commons":
        st = out.stats[f"{source}_commons"] = SplitStats()
        write(f"{source}_commons", encode_commons(table, ctx.common, ctx.vocab, st))
        return out
    enc = out.file = SampleEncoding(rows_in=table.num_rows)

    def encode(split: str, **kw) -> None:
        st = out.stats[split] = SplitStats()
        index = ctx.indexes[source]
        write(split, encode_samples(table, ctx.skeleton, ctx.vocab, index, st, enc, **kw))

    if source == "test":
        encode("test")
        return out
    train, valid, draws = split_train_rows(
        table, valid_fraction=ctx.valid_fraction, seed=ctx.seed, chunk=chunk
    )
    encode("train_all", keep=train, draws=draws)
    encode("valid", keep=valid)
    return out


def _init_encoder(path: str) -> _Context:
    """A worker process's context (see _encoded_chunks)."""
    with open(path, "rb") as fh:
        return pickle.load(fh)


def _encode_chunk_in_worker(path: str, source: str, kind: str, chunk: int) -> _EncodedChunk:
    return _encode_chunk(worker_state(), path, source, kind, chunk)


def _encoded_chunks(ctx: _Context, tasks: list[tuple], workers: int) -> Iterator[_EncodedChunk]:
    """Every task's shard encoded, in task order; with ``workers`` > 1 in that many processes
    (only shard paths go to them, only part-file names and counts come back)."""
    if workers <= 1:
        for task in tasks:
            yield _encode_chunk(ctx, *task)
        return
    # The context (the vocabulary and the common-record indexes: ~150 MB at Ali-CCP's size) is
    # pickled once into a file that each worker reads, not into every worker's start-up pipe:
    # the parent's write to that pipe blocks until the child has started and read it all, so
    # the workers would start one after another.
    path = ctx.staging / "encode-context.pickle"
    with open(path, "wb") as fh:
        pickle.dump(ctx, fh, protocol=pickle.HIGHEST_PROTOCOL)
    yield from ordered_map(_encode_chunk_in_worker, tasks, workers, _init_encoder, (str(path),))


class _EncodePass:
    """State of one pass over the parsed splits: running statistics, counts and common indexes."""

    def __init__(self, skeleton: Sequence[str], common: Sequence[str], vocab: Vocabulary):
        self.skeleton, self.common, self.vocab = skeleton, common, vocab
        self.stats = {s: SplitStats() for s in ENCODE_OUTPUTS}
        self.files = {"train_file": SampleEncoding(), "test_file": SampleEncoding()}
        self.indexes = {"train": CommonIndex(), "test": CommonIndex()}
        samples = encoded_schema(skeleton, "samples").empty_table()
        commons = encoded_schema(common, "commons").empty_table()
        self.empty = {o: commons if o.endswith("commons") else samples for o in ENCODE_OUTPUTS}
        self.empty["train_all"] = encoded_schema(skeleton, "samples", with_draw=True).empty_table()

    def emit(self, parts: dict[str, PartFile]) -> tuple:
        return (*[parts.get(o, self.empty[o]) for o in ENCODE_OUTPUTS], self.report())

    def add(self, done: _EncodedChunk, source: str) -> None:
        """Count an encoded chunk of the ``source`` split in."""
        if done.file is not None:
            self.files[f"{source}_file"].merge(done.file)
        for split, st in done.stats.items():
            self.stats[split].merge(st)

    def report(self) -> dict:
        return {
            "splits": {k: v.as_dict() for k, v in self.stats.items()},
            "files": {
                k: {
                    "sample_rows": e.rows_in,
                    "missing_common_record": e.missing_common,
                    "missing_common_examples": e.missing_examples,
                }
                for k, e in self.files.items()
            },
            "duplicate_common_records": {k: v.duplicates for k, v in self.indexes.items()},
        }


def encode_context(
    parsed: dict[str, ShardSet],
    skeleton: Sequence[str],
    common: Sequence[str],
    vocab: Vocabulary,
    valid_fraction: float,
    seed: int,
    staging: Path,
    compression: str = COMPRESSION,
) -> tuple[_EncodePass, _Context]:
    """A pass's running state, and the context that encoding any of ``parsed``'s shards needs
    (with the common-record indexes built from the commons' keys; parts go to ``staging``)."""
    run = _EncodePass(skeleton, common, vocab)
    for split, index in run.indexes.items():
        for path in parsed[f"{split}_commons"].files:
            index.extend(pq.read_table(path, columns=[CFI]).column(CFI))
        index.build()  # once here, not in every worker
    ctx = _Context(
        list(skeleton), list(common), vocab, run.indexes, valid_fraction, seed, staging, compression
    )
    return run, ctx


def encode_splits(
    parsed: dict[str, ShardSet],
    skeleton: Sequence[str],
    common: Sequence[str],
    vocab: Vocabulary,
    *,
    valid_fraction: float,
    seed: int,
    staging: Path,
    workers: int | str = 1,
    compression: str = COMPRESSION,
) -> Iterator[tuple]:
    """Encode parsed shards (``parsed[train_samples|train_commons|test_samples|test_commons]``).

    Splits train into train/valid by common record, looks ids up in ``vocab`` and yields, shard
    by shard, one item per :data:`ENCODE_OUTPUTS` entry (the shard's part file, an empty table
    where it feeds none) and the running report. Commons go first, then the sample rows, joined
    to the commons through indexes built beforehand from the commons' keys alone. The shards are
    encoded by ``workers`` processes when more than one, each writing its part files into a
    fresh folder under ``staging`` (on the shard folders' filesystem, removed at the end: each
    yielded part must be moved away before the next item is asked for); the rows, their order
    and the counts are the same whatever the number.
    """
    folder = staging_folder(staging, "encode-")
    try:
        run, ctx = encode_context(
            parsed, skeleton, common, vocab, valid_fraction, seed, folder, compression
        )
        tasks = [
            (str(path), source, kind, chunk)
            for kind in ("commons", "samples")
            for source in ("train", "test")
            for chunk, path in enumerate(parsed[f"{source}_{kind}"].files)
        ]
        for task, done in zip(
            tasks, _encoded_chunks(ctx, tasks, worker_count(workers, len(tasks))), strict=True
        ):
            run.add(done, task[1])
            yield run.emit(done.parts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

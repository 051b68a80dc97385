"""Tensor-resident data: encoded shards loaded once into (device) tensors, batches by gather.

Each side (skeleton samples, common records) becomes one row-major jagged tensor set:
``ids`` [nnz] (per-field vocabulary row), ``fields`` [nnz] (field position on that side),
``weights`` [nnz] and ``row_ptr`` [N+1], values of a row sorted by field. A batch is a gather of
B sample rows plus the U distinct common records they point at, each pooled once by the model.

A pass over a split is planned once (:class:`BatchPlan`): the row order, each batch's distinct
common records and every batch's value counts are computed on the device in a few vectorised ops
and copied to the host once. A step is then slices of the plan and gathers with sizes already
known on the host: no host-to-device copy and no device sync inside the training loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import numpy as np
import pyarrow.parquet as pq
import torch

from rec_pipeline.data.encode import list_parts
from rec_pipeline.data.metadata import DatasetMetadata
from rec_pipeline.data.shards import ShardSet

#: Threads reading and interleaving shards when a split is loaded (one shard each).
LOAD_THREADS = min(os.cpu_count() or 1, 16)


@dataclass
class Batch:
    """One training/evaluation batch (B rows, U distinct common records).

    sk_ids, sk_fields, sk_weights, sk_rows: [Ns] skeleton values, sorted by (row, field);
    sk_rows in [0, B). cm_ids, cm_fields, cm_weights, cm_rows: [Nc] values of the U distinct
    common records, cm_rows in [0, U). cm_inverse [B]: row b's record. click, conversion [B]
    float32; index [B] row positions in the split.
    """

    sk_ids: torch.Tensor
    sk_fields: torch.Tensor
    sk_weights: torch.Tensor
    sk_rows: torch.Tensor
    cm_ids: torch.Tensor
    cm_fields: torch.Tensor
    cm_weights: torch.Tensor
    cm_rows: torch.Tensor
    cm_inverse: torch.Tensor
    click: torch.Tensor
    conversion: torch.Tensor
    index: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.click.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Jagged:
    """Row-major jagged values on one device: row r holds ``row_ptr[r]:row_ptr[r+1]``."""

    ids: torch.Tensor  # int32 [nnz]
    fields: torch.Tensor  # int16 [nnz]
    weights: torch.Tensor  # float32 [nnz]
    row_ptr: torch.Tensor  # int64 [N+1]
    lengths: torch.Tensor  # int64 [N]

    @property
    def num_rows(self) -> int:
        return int(self.lengths.shape[0])

    @staticmethod
    def from_shards(shards: ShardSet, field_names: Sequence[str], extra: Sequence[str] = ()):
        """Interleave per-field list columns into one jagged set; returns (Jagged, extra cols).

        Shards are read and interleaved by a pool of threads (Parquet decoding and NumPy's
        copies release the GIL), one shard each, in shard order, and joined by the same threads:
        at Ali-CCP's size a split holds hundreds of millions of values, which one thread takes
        most of a minute to lay out.
        """
        cols = [c for f in field_names for c in (f"id_{f}", f"w_{f}")] + list(extra)

        def load(path):
            table = pq.read_table(path, columns=cols)
            return _interleave(table, field_names), [table.column(c).to_numpy() for c in extra]

        files = shards.files
        with ThreadPoolExecutor(max_workers=max(1, min(len(files), LOAD_THREADS))) as pool:
            loaded = list(pool.map(load, files))
            parts = [p for p, _ in loaded]
            extras = {
                c: _join([cols_[i] for _, cols_ in loaded], pool) if loaded else np.empty(0)
                for i, c in enumerate(extra)
            }
            del loaded
            if parts:
                ids, flds, w, lengths = (_join([p[i] for p in parts], pool) for i in range(4))
            else:
                ids, flds, w, lengths = (
                    np.empty(0, t) for t in (np.int32, np.int16, np.float32, np.int64)
                )
        row_ptr = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=row_ptr[1:])
        jagged = Jagged(
            ids=torch.from_numpy(ids),
            fields=torch.from_numpy(flds),
            weights=torch.from_numpy(w),
            row_ptr=torch.from_numpy(row_ptr),
            lengths=torch.from_numpy(lengths),
        )
        return jagged, extras

    def to(self, device: torch.device | str) -> Jagged:
        return replace(
            self,
            ids=self.ids.to(device),
            fields=self.fields.to(device),
            weights=self.weights.to(device),
            row_ptr=self.row_ptr.to(device),
            lengths=self.lengths.to(device),
        )

    def gather(self, rows: torch.Tensor, total: int):
        """Values of ``rows`` [R] as (ids, fields, weights, local row) [total].

        ``total`` (the values in those rows) comes from the plan, so no op here waits for the
        device: ``repeat_interleave`` is told its output size.
        """
        device = self.ids.device
        lens = self.lengths[rows]
        out_start = torch.cumsum(lens, 0) - lens
        local = torch.repeat_interleave(
            torch.arange(rows.shape[0], device=device), lens, output_size=total
        )
        src = self.row_ptr[rows][local] + torch.arange(total, device=device) - out_start[local]
        return self.ids[src].long(), self.fields[src].long(), self.weights[src], local


@dataclass
class BatchPlan:
    """Index structures of one pass over a split, on the split's device.

    Batch i takes rows ``rows[bounds[i]:bounds[i+1]]``; its distinct common records are
    ``uniq[ubounds[i]:ubounds[i+1]]`` and row r's record is ``uniq[ubounds[i] + inverse[r]]``.
    ``sk_total`` / ``cm_total`` are each batch's skeleton / common value counts (host).
    """

    rows: torch.Tensor  # int64 [n]
    inverse: torch.Tensor  # int64 [n]
    uniq: torch.Tensor  # int64 [sum U]
    bounds: np.ndarray  # int64 [n_batches + 1]
    ubounds: np.ndarray  # int64 [n_batches + 1]
    sk_total: np.ndarray  # int64 [n_batches]
    cm_total: np.ndarray  # int64 [n_batches]

    def __len__(self) -> int:
        return len(self.bounds) - 1


def _join(parts: list[np.ndarray], pool: ThreadPoolExecutor) -> np.ndarray:
    """``np.concatenate(parts)``, each part copied into place by one of the pool's threads: at
    Ali-CCP's size a split's parts hold hundreds of millions of values, too many for one
    thread to copy while the others wait."""
    ends = np.cumsum([p.size for p in parts])
    out = np.empty(int(ends[-1]), parts[0].dtype)

    def copy(k: int) -> None:
        np.copyto(out[ends[k] - parts[k].size : ends[k]], parts[k])

    list(pool.map(copy, range(len(parts))))
    return out


def _interleave(table, field_names: Sequence[str]):
    """Per-field list columns of one shard -> row-major (ids, fields, weights, row lengths)."""
    n = table.num_rows
    lens = np.zeros((n, len(field_names)), np.int64)
    offs = []
    for j, f in enumerate(field_names):
        o, v = list_parts(table, f"id_{f}")
        w = list_parts(table, f"w_{f}")[1]  # same offsets as the ids
        lens[:, j] = np.diff(o)
        offs.append((o, v, w))
    row_len = lens.sum(1)
    row_start = np.cumsum(row_len) - row_len
    total = int(row_len.sum())
    ids = np.empty(total, np.int32)
    flds = np.empty(total, np.int16)
    w_out = np.empty(total, np.float32)
    before = np.zeros(n, np.int64)  # values of earlier fields in each row
    for j, (o, v, w) in enumerate(offs):
        lj = lens[:, j]
        if v.size:
            # destination = row start + earlier fields' values + position within this field
            dest = np.repeat(row_start + before - o[:-1], lj) + np.arange(v.size)
            ids[dest] = v
            flds[dest] = j
            w_out[dest] = w
        before += lj
    return ids, flds, w_out, row_len


class SplitData:
    """One split's samples (and the commons they point at) held as tensors on a device."""

    def __init__(
        self,
        samples: ShardSet,
        commons: Jagged,
        skeleton_fields: Sequence[str],
        device: torch.device | str = "cpu",
    ):
        sk, extra = Jagged.from_shards(
            samples, skeleton_fields, extra=("sample_id", "click", "conversion", "common_row")
        )
        self.device = torch.device(device)
        self.skeleton = sk.to(self.device)
        self.commons = commons if commons.ids.device == self.device else commons.to(self.device)
        self.sample_id = extra["sample_id"].astype(np.int64)
        self.click_host = extra["click"].astype(np.int8)
        self.conversion_host = extra["conversion"].astype(np.int8)
        self.click = torch.from_numpy(self.click_host.astype(np.float32)).to(self.device)
        self.conversion = torch.from_numpy(self.conversion_host.astype(np.float32)).to(self.device)
        self.common_row = torch.from_numpy(extra["common_row"].astype(np.int64)).to(self.device)

    def __len__(self) -> int:
        return len(self.sample_id)

    def plan(self, order: np.ndarray, batch_size: int) -> BatchPlan:
        """Plan a pass over ``order`` (int64 [n] row positions, host) in batches of ``batch_size``.

        The distinct common records of every batch come from one ``unique`` over
        (batch, record) keys; all per-batch sizes come back to the host in one copy.
        """
        dev = self.device
        n = len(order)
        bounds = np.append(np.arange(0, n, batch_size, dtype=np.int64), n)
        nb = len(bounds) - 1
        rows = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64)).to(dev)
        batch_of = torch.repeat_interleave(
            torch.arange(nb, device=dev), torch.from_numpy(np.diff(bounds)).to(dev), output_size=n
        )
        n_commons = max(self.commons.num_rows, 1)
        keys = batch_of * n_commons + self.common_row[rows]
        ukeys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        ubatch, uniq = ukeys // n_commons, ukeys % n_commons
        ubounds = torch.searchsorted(ubatch, torch.arange(nb + 1, device=dev))
        inverse = inverse - ubounds[batch_of]
        sk_total = torch.zeros(nb, dtype=torch.int64, device=dev).index_add_(
            0, batch_of, self.skeleton.lengths[rows]
        )
        cm_total = torch.zeros(nb, dtype=torch.int64, device=dev).index_add_(
            0, ubatch, self.commons.lengths[uniq]
        )
        host = torch.cat([ubounds, sk_total, cm_total]).cpu().numpy()
        return BatchPlan(
            rows=rows,
            inverse=inverse,
            uniq=uniq,
            bounds=bounds,
            ubounds=host[: nb + 1],
            sk_total=host[nb + 1 : 2 * nb + 1],
            cm_total=host[2 * nb + 1 :],
        )

    def planned_batch(self, plan: BatchPlan, i: int) -> Batch:
        """Batch ``i`` of a plan: slices and gathers, no copy from the host."""
        a, b = int(plan.bounds[i]), int(plan.bounds[i + 1])
        ua, ub = int(plan.ubounds[i]), int(plan.ubounds[i + 1])
        rows = plan.rows[a:b]
        sk_ids, sk_fields, sk_w, sk_rows = self.skeleton.gather(rows, int(plan.sk_total[i]))
        cm_ids, cm_fields, cm_w, cm_rows = self.commons.gather(
            plan.uniq[ua:ub], int(plan.cm_total[i])
        )
        return Batch(
            sk_ids=sk_ids,
            sk_fields=sk_fields,
            sk_weights=sk_w,
            sk_rows=sk_rows,
            cm_ids=cm_ids,
            cm_fields=cm_fields,
            cm_weights=cm_w,
            cm_rows=cm_rows,
            cm_inverse=plan.inverse[a:b],
            click=self.click[rows],
            conversion=self.conversion[rows],
            index=rows,
        )

    def batch(self, rows_host: np.ndarray) -> Batch:
        """One batch of the given rows (int64 [B], host)."""
        rows_host = np.asarray(rows_host, dtype=np.int64)
        return self.planned_batch(self.plan(rows_host, max(len(rows_host), 1)), 0)

    def iter_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_last: bool = False,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[Batch]:
        """Batches in order (evaluation) or by a seeded permutation (training).

        ``start`` skips that many batches of the same order (resuming mid-epoch). ``shard``
        ``(rank, world)``: this rank's rows ``order[rank::world]``, cut to ``n // world`` so
        that every rank takes the same number of steps (data-parallel training).
        """
        plan = self.epoch_plan(
            batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last, shard=shard
        )
        if plan is None:
            return
        for i in range(start, len(plan)):
            yield self.planned_batch(plan, i)

    def epoch_plan(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: np.random.Generator | None = None,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> BatchPlan | None:
        """The plan of one pass as :meth:`iter_batches` takes it (None: no rows)."""
        rank, world = shard
        n = len(self)
        order = generator.permutation(n) if shuffle else np.arange(n)
        if world > 1:
            n = n // world
            order = order[rank::world][:n]
        if drop_last:
            order = order[: n - n % batch_size]
        if len(order) == 0:
            return None
        return self.plan(order, batch_size)


def load_commons(shards: ShardSet, common_fields: Sequence[str], device="cpu") -> Jagged:
    jagged, _ = Jagged.from_shards(shards, common_fields)
    return jagged.to(device)


def load_splits(
    metadata: DatasetMetadata | dict,
    samples: dict[str, ShardSet],
    commons: ShardSet,
    device: torch.device | str = "cpu",
) -> dict[str, SplitData]:
    """Several splits of one raw file (e.g. train and valid), sharing one commons table."""
    metadata = DatasetMetadata.coerce(metadata)
    skeleton, common = metadata.raw_ids("skeleton"), metadata.raw_ids("common")
    table = load_commons(commons, common, device)
    return {name: SplitData(s, table, skeleton, device) for name, s in samples.items()}

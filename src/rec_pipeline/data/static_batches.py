"""Fixed-shape training batches, gathered on the device from a device-side batch counter.

A CUDA graph replays kernels with the shapes and addresses they were captured with, so the batch
a captured step reads must always have the same shapes and live in the same buffers. Here an
epoch's :class:`~rec_pipeline.data.batches.BatchPlan` is copied once into fixed buffers, and
:meth:`StaticBatches.next` builds batch ``counter`` of it with fixed sizes, then advances the
counter, all with device ops: the host does nothing per step.

Fixed sizes (B batch rows, Ns / Nc value slots per side):

* sample rows: exactly B (only full batches are static; an epoch's short last batch is an
  ordinary :class:`Batch`);
* distinct common records: B slots (U <= B), the slots past U have no values;
* values: ``Ns`` / ``Nc`` slots, at least the epoch's largest batch. A slot past the batch's
  values is padding: it repeats the batch's last real value (so it looks up a row the batch
  already touches) with weight 0 and row index B, the model's padding bag-row, so it changes
  neither the pooled embeddings nor the gradient, and ``FusedFieldEmbedding.lookups`` marks it
  as no lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rec_pipeline.data.batches import Batch, BatchPlan, Jagged, SplitData

#: Value slots are rounded up to a multiple of this, with this much headroom over the epoch's
#: largest batch, so that later epochs (other permutations) usually fit the same shapes.
SLOT_MULTIPLE = 1024
SLOT_HEADROOM = 1.05


@dataclass(frozen=True)
class StaticSizes:
    """The fixed shapes: B rows, Ns skeleton and Nc common value slots."""

    rows: int
    sk_values: int
    cm_values: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.rows, self.sk_values, self.cm_values)

    def holds(self, other: StaticSizes) -> bool:
        return (
            self.rows == other.rows
            and self.sk_values >= other.sk_values
            and self.cm_values >= other.cm_values
        )


def full_batches(plan: BatchPlan, batch_size: int) -> int:
    """How many of the plan's batches (from the first) have exactly ``batch_size`` rows."""
    return int(np.sum(np.diff(plan.bounds) == batch_size))


def needed_sizes(plan: BatchPlan, batch_size: int, n_full: int) -> StaticSizes:
    """Sizes that hold every full batch of ``plan``, rounded up with headroom."""

    def slots(totals: np.ndarray) -> int:
        top = int(totals[:n_full].max()) if n_full else 0
        want = max(int(np.ceil(top * SLOT_HEADROOM)), 1)
        return -(-want // SLOT_MULTIPLE) * SLOT_MULTIPLE

    return StaticSizes(batch_size, slots(plan.sk_total), slots(plan.cm_total))


def gather_fixed(jagged: Jagged, rows: Tensor, lengths: Tensor, slots: Tensor, pad_row: int):
    """Values of ``rows`` [R] into ``slots.shape[0]`` fixed slots (``slots`` = arange).

    ``lengths`` [R]: values to take from each row (0 for a slot row without a record).
    Returns (ids, fields, weights, local row) [S]; padding slots as in the module docstring.
    """
    ends = torch.cumsum(lengths, 0)  # [R] inclusive
    total = ends[-1:]  # [1]
    real = slots < total  # [S]
    pos = torch.minimum(slots, (total - 1).clamp_min(0))  # padding repeats the last value
    local = torch.searchsorted(ends, pos, right=True).clamp_max(rows.shape[0] - 1)  # [S]
    src = jagged.row_ptr[rows][local] + pos - (ends - lengths)[local]
    src = src.clamp(0, max(jagged.ids.shape[0] - 1, 0))
    weights = jagged.weights[src] * real
    local = torch.where(real, local, torch.full_like(local, pad_row))
    return jagged.ids[src].long(), jagged.fields[src].long(), weights, local


class StaticBatches:
    """An epoch's full batches with fixed shapes (module docstring); one split, one rank.

    :meth:`load` copies a plan into the buffers (outside any graph); :meth:`next` returns the
    batch at the device counter and advances it (inside the captured step).
    """

    def __init__(self, split: SplitData, sizes: StaticSizes, n_full: int) -> None:
        dev, b = split.device, sizes.rows
        self.split, self.sizes, self.n_full = split, sizes, n_full
        self.rows = torch.zeros(n_full, b, dtype=torch.int64, device=dev)
        self.inverse = torch.zeros(n_full, b, dtype=torch.int64, device=dev)
        self.uniq = torch.zeros(n_full, b, dtype=torch.int64, device=dev)
        self.n_uniq = torch.zeros(n_full, dtype=torch.int64, device=dev)
        self.counter = torch.zeros(1, dtype=torch.int64, device=dev)
        self.slot = torch.arange(b, device=dev)
        self.sk_slots = torch.arange(sizes.sk_values, device=dev)
        self.cm_slots = torch.arange(sizes.cm_values, device=dev)
        self.current: Batch | None = None

    def load(self, plan: BatchPlan, start: int) -> None:
        """Copy the plan's first ``n_full`` batches into the buffers; the counter at ``start``."""
        n, b, dev = self.n_full, self.sizes.rows, self.split.device
        self.rows.copy_(plan.rows[: n * b].view(n, b))
        self.inverse.copy_(plan.inverse[: n * b].view(n, b))
        u_counts = np.diff(plan.ubounds[: n + 1])
        n_u = int(plan.ubounds[n])
        which = torch.repeat_interleave(
            torch.arange(n, device=dev), torch.from_numpy(u_counts).to(dev), output_size=n_u
        )
        first = torch.from_numpy(plan.ubounds[:n]).to(dev)
        within = torch.arange(n_u, device=dev) - first[which]
        self.uniq.zero_()
        self.uniq[which, within] = plan.uniq[:n_u]
        self.n_uniq.copy_(torch.from_numpy(u_counts).to(dev))
        self.counter.fill_(start)

    def next(self) -> Batch:
        """Batch ``counter`` of the loaded plan (fixed shapes); the counter advances by one."""
        self.current = Batch(*self.gather(self.counter))
        self.counter.add_(1)
        return self.current

    def gather(self, i: Tensor) -> tuple[Tensor, ...]:
        """The tensors of batch ``i`` ([1] device index), in :class:`Batch`'s field order: a
        pure function of fixed shapes, which the captured step may compile (dozens of small
        index and elementwise kernels fused into a few)."""
        split, b = self.split, self.sizes.rows
        rows = self.rows.index_select(0, i)[0]  # [B]
        inverse = self.inverse.index_select(0, i)[0]  # [B]
        uniq = self.uniq.index_select(0, i)[0]  # [B] slots, the first n_uniq real
        has_record = self.slot < self.n_uniq.index_select(0, i)  # [B]
        sk = gather_fixed(
            split.skeleton, rows, split.skeleton.lengths[rows], self.sk_slots, pad_row=b
        )
        cm = gather_fixed(
            split.commons, uniq, split.commons.lengths[uniq] * has_record, self.cm_slots, b
        )
        return (*sk, *cm, inverse, split.click[rows], split.conversion[rows], rows)

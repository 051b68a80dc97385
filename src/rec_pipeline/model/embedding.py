"""Fused per-field embedding bags for the normalised (skeleton + common) batch.

Notation: B batch rows, U distinct common records of the batch (U <= B), Fs / Fc skeleton /
common fields, F = Fs + Fc, d_f the embedding dim of field f, D = max_f d_f.

Layout. One table per side (skeleton, common). Its rows are the concatenation of that side's
per-field vocabularies (field f's local index i lives in row ``row_offset[f] + i``); its width is
``D + L``: columns ``0..D-1`` hold the embedding vector, columns ``D..D+L-1`` the field's
first-order ("wide", dim-1) weights, one per first-order term (``linear_terms`` L, 1 unless the
tasks keep their own), so the linear terms are pooled by the same lookup. A field with ``d_f < D``
uses only its first ``d_f`` columns: the pooled output is multiplied by a constant ``[F, D]``
0/1 mask, so the unused columns contribute nothing downstream and receive zero gradient; sums
over fields (FM, ``sum_emb``) are therefore exact.

Pooling. One :func:`~rec_pipeline.model.bag_sums.bag_sums` call per side (``embedding_bag``'s
weighted sums and the bags' weight sums in one pass; torch ops, or Triton kernels on a GPU with
``kernel="triton"``), with one bag per (row, field) pair (``bag = row * F_side + field``); the
bags' offsets and table rows come from :meth:`FusedFieldEmbedding.plan` (no host
synchronisation), which a training step may share with the optimiser's lookups.
``mode="sum"`` gives ``sum_i w_i e_i``; ``mode="mean"`` divides that by ``sum_i w_i`` (a bag
whose weights sum to 0, in particular an empty bag, pools to 0). :meth:`FusedFieldEmbedding.pool`
takes optional gradient sinks, one ``[rows, C]`` buffer per table: the backward then adds the
tables' gradients into them (a row optimiser's gradient sums) instead of making sparse ones.

Bag weights. A weighted mean turns a one-id bag into its bare vector (``w e / w = e``), so the
intensity that Ali-CCP's cross fields carry as their value (a log count) would never reach the
network. ``weight_channel`` decides how it does (docs/model.md, "Feature values"):

* ``"none"``: the plain weighted mean (or sum) above.
* ``"scale"``: the mean of ``w_i e_i`` over the bag's ``n`` ids, ``sum_i w_i e_i / n``, which is
  ``w e`` for a one-id bag and the weighted mean times the bag's mean weight otherwise
  (``mode="mean"`` only: a sum already carries the weights).
* ``"dense"``: the pooling above, plus each bag's mean weight ``sum_i w_i / n`` (0 for an empty
  bag) as a dense value per field, ``values [B, F]``, with a learned first-order coefficient per
  field added to ``logit_linear``; the model feeds ``values`` to the deep MLP beside
  ``emb_concat``. The common side is pooled for the distinct common records only, then expanded to the
batch rows with ``cm_inverse``. Because U is not known on the host without a synchronisation,
the common side is pooled into B bag-rows (U <= B; the rows past U are empty and never read).

Row 0 of every field (padding / out-of-vocabulary) starts at zero and is trainable: it is the
learned out-of-vocabulary vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rec_pipeline.model.bag_sums import KERNELS, bag_sums, plan_bags


class BatchLike(Protocol):
    """The tensors of one batch the model reads (the data loader's ``Batch`` has these).

    Skeleton side (Ns values, sorted by (row, field), row-major jagged):
        sk_ids [Ns] long: per-field local vocabulary index in ``[0, vocab_size[field])``.
        sk_fields [Ns] long: skeleton field position ``0..Fs-1``.
        sk_weights [Ns] float: feature value (1.0 categorical; ln(count) weighted fields).
        sk_rows [Ns] long: batch row ``0..B-1``.
    Common side (Nc values over U distinct common records, sorted by (record, field)):
        cm_ids, cm_fields (``0..Fc-1``), cm_weights, cm_rows (``0..U-1``) [Nc].
        cm_inverse [B] long: row b's common record is ``cm_rows == cm_inverse[b]``.
    Labels: click [B], conversion [B] float; index [B] long.
    """

    sk_ids: Tensor
    sk_fields: Tensor
    sk_weights: Tensor
    sk_rows: Tensor
    cm_ids: Tensor
    cm_fields: Tensor
    cm_weights: Tensor
    cm_rows: Tensor
    cm_inverse: Tensor
    click: Tensor
    conversion: Tensor


@dataclass
class BagPlan:
    """One side's lookups grouped into bags (:func:`~rec_pipeline.model.bag_sums.plan_bags`).

    rows [N] int64: table rows (the field's row offset added to each id).
    offsets [K + 1] int64: bag boundaries; bag ``row * F_side + field``, the first ``n_real``
        bags real, any later ones padding.
    bag [N] int64: each value's bag.
    n_real: ``B * F_side``.
    """

    rows: Tensor
    offsets: Tensor
    bag: Tensor
    n_real: int


@dataclass
class EmbeddingOutput:
    """Pooled embeddings of one batch.

    emb_stack [B, F, D]: per-field pooled vectors (columns >= d_f are 0).
    emb_concat [B, sum_f d_f]: the valid columns of emb_stack, field by field.
    sum_emb [B, D]: sum over fields. mean_emb [B, D]: sum_emb / F.
    logit_linear [B]: sum over fields of the pooled first-order weight (and, with
        ``weight_channel="dense"``, of each field's coefficient times its value); the first term.
    linear_terms [B, L]: every first-order term (column 0 is ``logit_linear``).
    values [B, F] | None: each bag's mean weight (``weight_channel="dense"`` only).
    value_vectors [B, K * D] | None: for the K ``value_vectors`` fields, the mean of ``w_i e_i``
        over the bag's ids (``w e`` for a one-id bag), flattened.
    touched_l2 [] | None: sum of squares of the distinct table rows the batch looked up (in
        training mode, when asked for): an L2 penalty on exactly the rows a step updates.
    """

    emb_stack: Tensor
    emb_concat: Tensor
    sum_emb: Tensor
    mean_emb: Tensor
    logit_linear: Tensor
    linear_terms: Tensor
    values: Tensor | None = None
    touched_l2: Tensor | None = None
    value_vectors: Tensor | None = None

    @property
    def dense_input(self) -> Tensor:
        """``emb_concat``, then ``values`` and ``value_vectors`` when present:
        ``[B, sum_f d_f (+ F) (+ K * D)]``."""
        parts = [self.emb_concat]
        parts += [
            p.to(self.emb_concat.dtype) for p in (self.values, self.value_vectors) if p is not None
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _check_arguments(
    fields: list[str],
    vocab_sizes: dict[str, int],
    dims: dict[str, int],
    mode: str,
    weight_channel: str,
    linear_terms: int,
) -> None:
    """Raise ValueError on a constructor argument :class:`FusedFieldEmbedding` cannot use."""
    if mode not in ("mean", "sum"):
        raise ValueError(f"embedding mode must be 'mean' or 'sum' (got {mode!r})")
    if weight_channel not in ("none", "scale", "dense"):
        raise ValueError(
            f"embedding weight_channel must be 'none', 'scale' or 'dense' (got {weight_channel!r})"
        )
    if weight_channel == "scale" and mode != "mean":
        raise ValueError("embedding weight_channel 'scale' needs mode 'mean'")
    if not fields:
        raise ValueError("the model needs at least one field")
    if len(set(fields)) != len(fields):
        raise ValueError(f"field names must be unique (got {fields})")
    for name in fields:
        if name not in vocab_sizes:
            raise ValueError(f"no vocabulary size for field {name!r}")
        if int(vocab_sizes[name]) < 1:
            raise ValueError(f"vocabulary size of {name!r} must be >= 1 (index 0 = padding)")
        if name not in dims or int(dims[name]) < 1:
            raise ValueError(f"no positive embedding dim for field {name!r}")
    if linear_terms < 1:
        raise ValueError(f"linear_terms must be >= 1 (got {linear_terms})")


class FusedFieldEmbedding(nn.Module):
    """All fields' embedding bags (vectors + first-order weights) as two fused tables.

    Args:
        skeleton_fields / common_fields: model field names, in batch field-position order.
        vocab_sizes: rows of each field's table, index 0 included.
        dims: embedding dim per field name.
        mode: ``"mean"`` (weighted mean, sum(w e) / sum(w)) or ``"sum"`` (sum(w e)).
        weight_channel: ``"none"``, ``"scale"`` or ``"dense"`` (see the module docstring).
        linear_terms: number of first-order terms L (each its own table column and value
            coefficients), e.g. one per task that adds a wide term of its own.
        sparse: produce sparse gradients for the tables (for a sparse optimiser).
        init_std: std of the normal init of the vector columns.
        touched_l2: in training mode, also return the sum of squares of every table row the
            batch looks up, each distinct row once (``EmbeddingOutput.touched_l2``).
        value_vectors: field names whose value-scaled vector (the mean of ``w_i e_i`` over the
            bag) is also output (``EmbeddingOutput.value_vectors``).
        kernel: the pooling's implementation on CUDA tables, ``"torch"`` or ``"triton"``
            (CPU tables always use torch's).
    """

    def __init__(
        self,
        skeleton_fields: Sequence[str],
        common_fields: Sequence[str],
        vocab_sizes: dict[str, int],
        dims: dict[str, int],
        *,
        mode: str = "mean",
        weight_channel: str = "none",
        sparse: bool = True,
        init_std: float = 0.03,
        linear_terms: int = 1,
        touched_l2: bool = False,
        value_vectors: Sequence[str] = (),
        kernel: str = "torch",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"embedding kernel must be one of {KERNELS} (got {kernel!r})")
        self.kernel = kernel
        fields = [*skeleton_fields, *common_fields]
        _check_arguments(fields, vocab_sizes, dims, mode, weight_channel, linear_terms)
        unknown = [f for f in value_vectors if f not in fields]
        if unknown:
            raise ValueError(f"value_vectors names fields the model does not have: {unknown}")
        self.skeleton_fields = list(skeleton_fields)
        self.common_fields = list(common_fields)
        self.fields = fields
        self.mode = mode
        self.weight_channel = weight_channel
        self.linear_terms = int(linear_terms)
        self.sparse = bool(sparse)
        self.touched_l2 = bool(touched_l2)
        self.init_std = float(init_std)
        self.vocab_sizes = {f: int(vocab_sizes[f]) for f in self.fields}
        self.dims = [int(dims[f]) for f in self.fields]
        self.num_fields = len(self.fields)
        self.dim = max(self.dims)  # D
        self.concat_dim = sum(self.dims)
        self.uniform_dims = all(d == self.dim for d in self.dims)
        # Field positions whose value-scaled vector is an output (``value_vectors``).
        self.register_buffer(
            "value_vector_index",
            torch.tensor([fields.index(f) for f in value_vectors], dtype=torch.long),
            persistent=False,
        )  # [K]

        self.skeleton_table = self._make_table(self.skeleton_fields)
        self.common_table = self._make_table(self.common_fields)
        self._register_layout()
        # First-order coefficient of each field's value (weight_channel "dense"); a dense
        # parameter, so the dense optimiser trains it.
        self.value_coef = (
            nn.Parameter(torch.zeros(self.num_fields, self.linear_terms))
            if weight_channel == "dense"
            else None
        )  # [F, L]
        self.reset_parameters()

    # ------------------------------------------------------------------------------ construction

    def _register_layout(self) -> None:
        """Non-persistent index buffers: per-side row offsets, the [F, D] dim mask and the
        gather index of ``emb_concat`` into the flattened [F * D]."""
        self.register_buffer(
            "sk_row_offset", self._row_offsets(self.skeleton_fields), persistent=False
        )
        self.register_buffer(
            "cm_row_offset", self._row_offsets(self.common_fields), persistent=False
        )
        mask = torch.zeros(self.num_fields, self.dim)
        for f, d in enumerate(self.dims):
            mask[f, :d] = 1.0
        self.register_buffer("dim_mask", mask, persistent=False)  # [F, D]
        cols = [f * self.dim + c for f, d in enumerate(self.dims) for c in range(d)]
        self.register_buffer(
            "concat_index", torch.tensor(cols, dtype=torch.long), persistent=False
        )  # [sum d_f] into the flattened [F * D]

    def _make_table(self, fields: list[str]) -> nn.Parameter | None:
        if not fields:
            return None
        rows = sum(self.vocab_sizes[f] for f in fields)
        return nn.Parameter(torch.empty(rows, self.dim + self.linear_terms))

    def _row_offsets(self, fields: list[str]) -> Tensor:
        sizes = [self.vocab_sizes[f] for f in fields]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        return torch.tensor(offsets[: len(fields)], dtype=torch.long)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, init_std) vectors; zero first-order column, padding rows and unused columns."""
        for table, fields in (
            (self.skeleton_table, self.skeleton_fields),
            (self.common_table, self.common_fields),
        ):
            if table is None:
                continue
            table.normal_(0.0, self.init_std)
            table[:, self.dim :] = 0.0
            start = 0
            for name in fields:
                rows = self.vocab_sizes[name]
                d = self.dims[self.fields.index(name)]
                table[start, :] = 0.0
                table[start : start + rows, d : self.dim] = 0.0
                start += rows
        if self.value_coef is not None:
            self.value_coef.zero_()

    def tables(self) -> list[nn.Parameter]:
        """The embedding tables (one or two)."""
        return [t for t in (self.skeleton_table, self.common_table) if t is not None]

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The tables when they produce sparse gradients, else an empty list."""
        return self.tables() if self.sparse else []

    # ----------------------------------------------------------------------------------- forward

    def _sides(
        self, batch: BatchLike
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]]:
        """Per table (skeleton, then common): the table, its row offsets and the batch's ids,
        fields, weights and rows of that side."""
        sides = [
            (self.skeleton_table, self.sk_row_offset, batch.sk_ids, batch.sk_fields,
             batch.sk_weights, batch.sk_rows),
            (self.common_table, self.cm_row_offset, batch.cm_ids, batch.cm_fields,
             batch.cm_weights, batch.cm_rows),
        ]  # fmt: skip
        return [side for side in sides if side[0] is not None]

    def _kernel(self, table: Tensor) -> str:
        return self.kernel if table.is_cuda else "torch"

    def plan(self, batch: BatchLike, flags: Sequence[Tensor] | None = None) -> list[BagPlan]:
        """Per table: the batch's lookups grouped into bags (:func:`plan_bags`), one bag per
        (row, field) pair. ``flags``: one ``[rows + 1]`` buffer per table, set to 1 at every
        row a real value looks up (a row optimiser's touched flags)."""
        n_rows = batch.cm_inverse.shape[0]  # B (the common side's U <= B records, padded)
        flag = iter(flags) if flags is not None else None
        plans = []
        for table, row_offset, ids, fields, _, batch_rows in self._sides(batch):
            rows, offsets, bag = plan_bags(
                ids,
                fields,
                batch_rows,
                row_offset,
                n_rows,
                kernel=self._kernel(table),
                flags=next(flag) if flag is not None else None,
            )
            plans.append(BagPlan(rows, offsets, bag, n_rows * row_offset.shape[0]))
        return plans

    def _pool(
        self,
        table: Tensor,
        weights: Tensor,
        plan: BagPlan,
        n_rows: int,
        n_fields: int,
        sink: Tensor | None,
    ) -> Tensor:
        """Pool one side: values -> ``[n_rows, F_side, D + L (+ 1) (+ D)]``.

        Columns: ``0..D-1`` the vector, ``D..D+L-1`` the first-order weights, then with
        ``weight_channel="dense"`` a column holding the bag's mean weight, then with
        ``value_vectors`` D columns holding the mean of ``w_i e_i`` over the bag's ids.
        """
        n_real = plan.n_real
        offsets = plan.offsets
        pooled, wsum = bag_sums(
            table,
            plan.rows,
            weights.to(table.dtype),
            plan.bag,
            offsets,
            n_real,
            sink=sink,
            kernel=self._kernel(table),
            sparse=self.sparse,
        )  # [n_real, D + L], [n_real]
        if self.value_vector_index.numel() or self.weight_channel != "none":
            n_ids = (offsets[1 : n_real + 1] - offsets[:n_real]).to(table.dtype)  # [n_real]
        columns = [pooled]
        if self.value_vector_index.numel():
            # mean of w_i e_i over the bag's ids (0 for an empty bag), before any division
            columns.append(pooled[:, : self.dim] / n_ids.clamp_min(1.0).unsqueeze(1))
        if self.mode == "mean":
            # "scale" divides by the id count instead: the mean of w_i e_i over the bag.
            denom = n_ids if self.weight_channel == "scale" else wsum
            denom = torch.where(denom != 0, denom, torch.ones_like(denom))
            columns[0] = pooled / denom.unsqueeze(1)
        if self.weight_channel == "dense":
            mean_w = wsum / n_ids.clamp_min(1.0)  # [n_real]; 0 for an empty bag
            columns.insert(1, mean_w.unsqueeze(1))
        pooled = columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)
        return pooled.view(n_rows, n_fields, -1)

    def forward(self, batch: BatchLike) -> EmbeddingOutput:
        """Pool every field of every row: see :class:`EmbeddingOutput` for the shapes."""
        return self.split(self.pool(batch), touched_l2=self.touched_rows_l2(batch))

    def pool(
        self,
        batch: BatchLike,
        sinks: Sequence[Tensor] | None = None,
        plans: Sequence[BagPlan] | None = None,
    ) -> Tensor:
        """The lookups and bag pooling of both sides: ``stacked [B, F, D + L (+ 1) (+ D)]`` (columns as
        in :meth:`_pool`). The only part of the forward with data-dependent (jagged) inputs.

        ``sinks``: one fp32 buffer shaped like each table (:meth:`tables` order); the backward
        adds the tables' gradients into them and leaves the tables' ``.grad`` untouched.
        ``plans``: the batch's :meth:`plan`, when the caller made it (else it is made here)."""
        n_rows = batch.cm_inverse.shape[0]  # B
        plans = self.plan(batch) if plans is None else plans
        sinks = sinks if sinks is not None else [None] * len(plans)
        parts = []
        sides = self._sides(batch)
        for (table, row_offset, _, _, weights, _), plan, sink in zip(
            sides, plans, sinks, strict=True
        ):
            # The common side pools U <= B records into B bag-rows; see the module docstring.
            n_fields = row_offset.shape[0]
            parts.append(
                self._pool(table, weights, plan, n_rows, n_fields, sink)
            )  # [B, F_side, D + 1]
        if self.common_table is not None:
            parts[-1] = parts[-1].index_select(0, batch.cm_inverse)  # [B, Fc, D + 1]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def split(self, stacked: Tensor, touched_l2: Tensor | None = None) -> EmbeddingOutput:
        """``stacked [B, F, D + L (+ 1) (+ D)]`` (from :meth:`pool`) -> the outputs: dense maths only,
        fixed shapes for a fixed B (what a compiler may fuse with the layers above)."""
        n_rows = stacked.shape[0]
        emb_stack = stacked[..., : self.dim]
        if not self.uniform_dims:
            emb_stack = emb_stack * self.dim_mask
        end = self.dim + self.linear_terms
        linear = stacked[..., self.dim : end].sum(dim=1)  # [B, L]
        values = None
        if self.value_coef is not None:
            values = stacked[..., end]  # [B, F]
            linear = linear + values @ self.value_coef.to(values.dtype)  # [B, L]
            end += 1
        value_vectors = None
        if self.value_vector_index.numel():
            scaled = stacked[..., end : end + self.dim].index_select(1, self.value_vector_index)
            value_vectors = (scaled * self.dim_mask[self.value_vector_index]).flatten(1)
        flat = emb_stack.reshape(n_rows, self.num_fields * self.dim)
        emb_concat = flat if self.uniform_dims else flat.index_select(1, self.concat_index)
        sum_emb = emb_stack.sum(dim=1)
        return EmbeddingOutput(
            emb_stack=emb_stack,
            emb_concat=emb_concat,
            sum_emb=sum_emb,
            mean_emb=sum_emb / self.num_fields,
            logit_linear=linear[:, 0],
            linear_terms=linear,
            values=values,
            touched_l2=touched_l2,
            value_vectors=value_vectors,
        )

    def lookups(
        self, batch: BatchLike, plans: Sequence[BagPlan] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Per table (skeleton, then common): the rows the batch looks up ``[N]`` and a mask
        ``[N]`` float, 1 for a real value and 0 for a static batch's padding (row ``B``).
        ``plans``: the batch's :meth:`plan`, whose rows are reused when given."""
        n_rows = batch.cm_inverse.shape[0]  # B
        out = []
        for i, (_, row_offset, ids, fields, _, rows) in enumerate(self._sides(batch)):
            table_rows = plans[i].rows if plans is not None else ids + row_offset[fields]
            out.append((table_rows, (rows < n_rows).float()))
        return out

    def touched_rows_l2(self, batch: BatchLike) -> Tensor | None:
        """``EmbeddingOutput.touched_l2`` for ``batch`` (``None`` unless asked for, or in eval)."""
        return self._touched_l2(batch) if self.touched_l2 and self.training else None

    def _touched_l2(self, batch: BatchLike) -> Tensor:
        """Sum of squares of the distinct rows the batch reads, over both tables.

        Looked up with ``F.embedding`` so that the gradient stays as sparse as the pooling's.
        """
        total = None
        for table, row_offset, ids, fields, _, _ in self._sides(batch):
            rows = torch.unique(ids + row_offset[fields])  # [n distinct]
            part = F.embedding(rows, table, sparse=self.sparse).float().pow(2).sum()
            total = part if total is None else total + part
        return total

    def extra_repr(self) -> str:
        return (
            f"fields={self.num_fields} (skeleton {len(self.skeleton_fields)}, common "
            f"{len(self.common_fields)}), dim={self.dim}, concat_dim={self.concat_dim}, "
            f"mode={self.mode}, weight_channel={self.weight_channel}, sparse={self.sparse}, "
            f"kernel={self.kernel}"
        )

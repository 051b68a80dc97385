"""Out-of-vocabulary dropout: in training, replace some ids of chosen fields by the OOV row.

Ali-CCP's test split is a later period: many of its users (and some items) never appear in
training, so at test time their id looks up row 0, the field's learned out-of-vocabulary vector,
which training otherwise only fits on the rare ids that fell below the vocabulary's min count.
Dropping an id to row 0 with probability p (``embedding.oov_dropout``, per field) trains row 0 as
"an unknown user" and teaches the rest of the network not to lean on the id alone.

The draw replaces the batch's ids before the model sees them, so the model, the embedding L2
and the row-wise optimiser all see the same lookups. Fixed shapes, no host read: it runs inside
the captured step too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from rec_pipeline.data.batches import Batch


class OOVDropout:
    """``batch -> batch`` with ids of the configured fields set to 0 with their probability.

    Args:
        rates: probability per model field name (``f0_205``, ``f1_101``), in [0, 1).
        skeleton_fields / common_fields: the model's field order (batch field positions).
    """

    def __init__(
        self,
        rates: dict[str, float],
        skeleton_fields: Sequence[str],
        common_fields: Sequence[str],
        device: torch.device,
    ) -> None:
        self.sk = torch.tensor([float(rates.get(f, 0.0)) for f in skeleton_fields], device=device)
        self.cm = torch.tensor([float(rates.get(f, 0.0)) for f in common_fields], device=device)
        self.active = bool(rates) and any(v > 0 for v in rates.values())

    def __call__(self, batch: Batch) -> Batch:
        if not self.active:
            return batch
        return dataclasses.replace(
            batch,
            sk_ids=_drop(batch.sk_ids, batch.sk_fields, self.sk),
            cm_ids=_drop(batch.cm_ids, batch.cm_fields, self.cm),
        )


def _drop(ids: torch.Tensor, fields: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """ids [N] with each set to 0 with probability ``rates[fields]`` [N]."""
    if rates.numel() == 0:
        return ids
    drop = torch.rand(ids.shape, device=ids.device) < rates[fields]
    return torch.where(drop, torch.zeros_like(ids), ids)

"""A loss function that turns ``loss_ctr`` (and so the total) NaN at chosen steps."""

from __future__ import annotations


def nan_loss_ctr(real, steps: set[int]):
    """Wrap ``compute_losses``: at the given (0-based) steps ``loss_ctr`` and the total are NaN."""

    def losses(*args, step, **kw):
        res = real(*args, step=step, **kw)
        if step in steps:
            res.components["loss_ctr"] = res.components["loss_ctr"] * float("nan")
            res.total = res.total + res.components["loss_ctr"]
        return res

    return losses

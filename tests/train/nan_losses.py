"""A loss function that turns ``loss_ctr`` (and so the total) NaN at chosen steps."""

from __future__ import annotations

import itertools


def nan_loss_ctr(real, steps: set[int]):
    """Wrap ``compute_losses``: at the given (0-based) steps ``loss_ctr`` and the total are NaN.

    The step is the ``step`` argument, or, for callers that pass ``focal`` instead (the static
    step's objective, called once a step), the count of such calls so far.
    """
    calls = itertools.count()

    def losses(*args, step=None, **kw):
        res = real(*args, step=step, **kw)
        if step is None:
            step = next(calls)
        if step in steps:
            res.components["loss_ctr"] = res.components["loss_ctr"] * float("nan")
            res.total = res.total + res.components["loss_ctr"]
        return res

    return losses

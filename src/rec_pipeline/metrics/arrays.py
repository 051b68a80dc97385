"""The metrics' one array boundary: anything array-like (torch tensors included) to flat NumPy.

Every metric computes on host NumPy arrays; a tensor is copied to the host here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - the NumPy metrics work without torch
    torch = None  # type: ignore[assignment]

__all__ = ["to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """Flat NumPy view/copy of an array-like or torch tensor (bf16/fp16 widened to float32)."""
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype in (torch.bfloat16, torch.float16):  # float32 holds both exactly
            t = t.float()
        return t.numpy().reshape(-1)
    return np.asarray(x).reshape(-1)

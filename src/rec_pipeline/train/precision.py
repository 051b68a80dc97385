"""Mixed precision: the autocast context and the AMP dtype a run uses."""

from __future__ import annotations

import contextlib

import torch

from rec_pipeline.config import Config


def autocast(device: torch.device, dtype: torch.dtype | None, *, cache: bool = True):
    """bf16/fp16 autocast on CUDA when AMP is on; a no-op context otherwise. ``cache=False``
    for a step captured in a CUDA graph (cast weights must not outlive the capture)."""
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype, cache_enabled=cache)


def resolve_amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (fp16 otherwise); no autocast on the CPU."""
    if not cfg.runtime.amp or device.type != "cuda":
        return None
    if cfg.runtime.amp_dtype == "fp16":
        return torch.float16
    if cfg.runtime.amp_dtype == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16

"""What machine a benchmark ran on, for the line printed above its table."""

from __future__ import annotations

import os
import platform

import numpy as np
import pyarrow as pa


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model


def machine() -> str:
    """CPU, core count and the versions that decide data-path speed."""
    return (
        f"CPU {cpu_model()} ({platform.machine()}), nproc {os.cpu_count()}; Python "
        f"{platform.python_version()}, NumPy {np.__version__}, pyarrow {pa.__version__}"
    )

"""64-bit integer mixing (splitmix64), shared by id hashing and the synthetic generator."""

from __future__ import annotations

import numpy as np

# splitmix64's increment (the golden ratio in 64 bits).
GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64 (vectorised, wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each value: the finaliser of ``x + GOLDEN_GAMMA`` (int64 ids wrap)."""
    return mix64(x.astype(np.uint64) + GOLDEN_GAMMA)

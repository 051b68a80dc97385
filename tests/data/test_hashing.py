"""splitmix64 against its published outputs and a plain-Python implementation."""

from __future__ import annotations

import numpy as np

from rec_pipeline.data.hashing import GOLDEN_GAMMA, mix64, splitmix64

MASK = (1 << 64) - 1


def py_splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_published_sequence_from_seed_zero():
    # The generator's k-th output from state 0 is splitmix64(k * gamma).
    state = np.array([(k * int(GOLDEN_GAMMA)) & MASK for k in range(3)], dtype=np.uint64)
    out = splitmix64(state.view(np.int64))
    assert out.tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_matches_plain_python_on_int64_ids():
    x = np.random.default_rng(0).integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64)
    x[:3] = [0, -1, 2**63 - 1]
    expected = [py_splitmix64(int(v) & MASK) for v in x]
    assert splitmix64(x).tolist() == expected


def test_finaliser_is_a_bijection_on_a_sample():
    x = np.arange(100_000, dtype=np.uint64) * np.uint64(0x10001)
    assert np.unique(mix64(x)).size == x.size
    assert mix64(np.array([0], dtype=np.uint64))[0] == 0  # the finaliser alone fixes 0

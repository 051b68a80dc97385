"""How the compiled tokenizer alone scales with processes: the CPU floor of the parse stage.

Each of N spawned processes reads its own 8 MB of a raw skeleton file into memory and runs
:func:`rec_pipeline.data.aliccp.compiled.tokenize` over it for three seconds, all starting
together; the table gives MB/s per process and in all. No files are written and nothing is
read during the timing, so the figure is the tokenizer's, and a stage that scales worse than it
is limited elsewhere (writes, allocation, the parent).

    python -m benchmarks.tokenizer_scaling data/01_raw/aliccp_synthetic/sample_skeleton_train.csv 1 2
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time

import numpy as np

_SLICE = 8 << 20  # bytes per process
_SECONDS = 3.0


def _rate(args: tuple[str, int, float]) -> float:
    """MB/s of one process over its own slice of the file, timed from ``start`` (epoch s)."""
    path, k, start = args
    from rec_pipeline.data.aliccp import SKELETON_FIELDS, compiled
    from rec_pipeline.data.aliccp.fields import FieldTable

    raw = np.fromfile(path, dtype=np.uint8, count=(k + 1) * _SLICE)[k * _SLICE :]
    lo = int(np.flatnonzero(raw[:100_000] == ord("\n"))[0]) + 1  # whole lines only
    hi = int(np.flatnonzero(raw == ord("\n"))[-1]) + 1
    buf = np.zeros(hi - lo + 64, np.uint8)  # 64 bytes in front, as the parser keeps
    buf[64:] = raw[lo:hi]
    b = buf[64:]
    words = np.ndarray((buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))
    table = FieldTable(list(SKELETON_FIELDS))
    args = (b, words, 56, np.empty(b.size, np.int64), 5, True, table.keys, table.slots)
    args += (table.table, table.mult, table.shift)
    compiled.tokenize(*args)  # compiled (or loaded from the cache) before the clock starts
    while time.time() < start:
        time.sleep(0.001)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < _SECONDS:
        compiled.tokenize(*args)
        n += 1
    return b.size * n / (time.perf_counter() - t0) / 1e6


def main(argv: list[str]) -> None:
    path, counts = argv[0], [int(a) for a in argv[1:]] or [1, 2]
    print("| processes | MB/s per process (mean, min) | MB/s in all |\n|---|---|---|")
    for n in counts:
        with mp.get_context("spawn").Pool(n) as pool:
            start = time.time() + 8  # every process imported and compiled by then
            rates = pool.map(_rate, [(path, k, start) for k in range(n)])
        print(
            f"| {n} | {np.mean(rates):,.0f} ({min(rates):,.0f}) | {sum(rates):,.0f} |", flush=True
        )


if __name__ == "__main__":
    main(sys.argv[1:])

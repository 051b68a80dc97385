"""Raw Ali-CCP preprocessing throughput and peak memory: the parser alone on one core, or a whole
raw folder (parse, vocabularies, encode) at several worker counts.

Examples::

    python -m benchmarks.bench_preprocess                          # 100 MB and 400 MB per kind
    python -m benchmarks.bench_preprocess --sizes-mb 50 200 --chunk-mb 16
    python -m benchmarks.bench_preprocess --workdir /data/tmp --keep
    python -m benchmarks.bench_preprocess --on-chunk mypkg.mod:consume   # time parse + a stage
    python -m benchmarks.bench_preprocess --raw data/01_raw/aliccp_synthetic --workers 1 2 4 8 16
    python -m benchmarks.bench_preprocess --raw FOLDER --workers 16 --tokenizers compiled numpy

With ``--raw FOLDER`` (the scaling curve, :mod:`benchmarks.preprocess_folder`): for each worker
count, a fresh subprocess parses the folder's four files, counts the vocabularies and encodes
(``rec_pipeline.data.processing.encode_folder``, as the Kedro nodes do); the table gives seconds
and raw-text MB/s per stage, peak RSS and CPU seconds of that process and of its workers (peak:
the largest one; CPU: all together), the bytes each stage wrote, and a hash of the encoded rows,
which must be the same at every count.

Without ``--raw``:
Writes synthetic files in the exact raw format (``sample_skeleton``: ~13 features a line, two
multi-hot fields; ``common_features``: ~500 weighted features a line over 109_14 / 110_14 /
127_14 / 150_14 plus single fields 101, 121-129), then parses each file once in a fresh
subprocess and reports MB/s of raw text and the peak RSS (VmHWM) of that process. Sizes 4x apart
show whether memory stays flat. The files are parsed right after being written, so they are read
from the page cache: the figures are parse (CPU) throughput, not disk throughput. The lines are
written with the project's writer (``rec_pipeline.data.aliccp.writer``, vectorised).

Hook for a later stage: ``--on-chunk module:function`` calls ``function(rows, quarantine)`` on
every parsed chunk inside the timed loop (in the measuring subprocess), so the table then shows
parse + that stage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks import preprocess_folder
from benchmarks.machine import machine
from rec_pipeline.data import aliccp
from rec_pipeline.data.aliccp import writer

ROOT = Path(__file__).resolve().parents[1]
SKELETON_FIELDS = [*aliccp.ITEM_FIELDS, aliccp.POSITION_FIELD, *aliccp.CROSS_FIELDS]
COMMON_FIELDS = [aliccp.USER_FIELD, *aliccp.PROFILE_FIELDS]
BEHAVIOUR_FIELDS = list(aliccp.BEHAVIOUR_FIELDS)
# Mean list length of each behaviour field in a common line (Poisson); ~500 features a line.
BEHAVIOUR_MEAN = [60, 150, 130, 150]

TABLE_HEADER = (
    "| file kind | stage | size MB | lines | features | chunk MB | seconds | MB/s | peak RSS MB "
    "| RSS after imports MB | peak - imports MB |\n|---|---|---|---|---|---|---|---|---|---|---|"
)

# ---------------------------------------------------------------------------------------------
# Synthetic writer


def _hex16(rng: np.random.Generator, n: int) -> pa.Array:
    """n random 16-hex-digit common_feature_index strings."""
    x = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    nibbles = (x[:, None] >> np.arange(60, -1, -4, dtype=np.uint64)) & np.uint64(15)  # [n, 16]
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    return pa.array(np.ascontiguousarray(chars).view("S16").ravel()).cast(pa.string())


def _ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Feature ids, log-uniform in [1e3, 3.4e9): 4 to 10 digits."""
    return np.exp(rng.uniform(math.log(1e3), math.log(3.4e9), n)).astype(np.int64)


_WEIGHTS = pa.array(["1.0"] + [f"{math.log(1 + c):.6g}" for c in range(1, 400)])


def _weights(rng: np.random.Generator, n: int, weighted: np.ndarray) -> pa.Array:
    """'1.0' for categorical features, ln(1 + count) with 6 significant digits otherwise."""
    counts = np.minimum(rng.geometric(0.35, n), 399)
    return _WEIGHTS.take(pa.array(np.where(weighted, counts, 0)))


def _feature_lists(rng, names: list[str], counts: np.ndarray, first_weighted: int):
    """Feature lists of lines whose field j appears counts[i, j] times in line i."""
    per_line = counts.sum(axis=1)
    field_of = np.repeat(np.tile(np.arange(len(names)), len(counts)), counts.ravel())  # [n_feat]
    ids = _ids(rng, field_of.size)
    values = _weights(rng, field_of.size, field_of >= first_weighted)
    return writer.feature_lists(names, field_of, ids, values, per_line), per_line


def skeleton_batch(rng, n: int, first_id: int, cfi_pool: pa.Array) -> tuple[pa.Array, int]:
    """n skeleton lines (with '\\n'); returns (lines, n_features)."""
    # counts[i, j]: features of field j in line i, [n, n_fields]. 205/206/207/216/301 always
    # once; 210 multi-hot (1-6); crosses 508/509/702 often; 853 multi-hot and weighted.
    # About 13.4 features a line.
    counts = np.ones((n, len(SKELETON_FIELDS)), dtype=np.int64)
    counts[:, 4] = rng.integers(1, 7, n)  # 210
    counts[:, 6:9] = rng.random((n, 3)) < 0.8  # 508 / 509 / 702
    counts[:, 9] = rng.binomial(5, 0.5, n)  # 853
    flist, per_line = _feature_lists(rng, SKELETON_FIELDS, counts, 6)
    click = rng.random(n) < 0.04
    conversion = click & (rng.random(n) < 0.05)
    cfi = cfi_pool.take(pa.array(rng.integers(0, len(cfi_pool), n)))
    sample_id = np.arange(first_id, first_id + n)
    lines = writer.skeleton_lines(sample_id, click, conversion, cfi, per_line, flist)
    return lines, int(per_line.sum())


def common_batch(rng, n: int, cfi: pa.Array) -> tuple[pa.Array, int]:
    names = COMMON_FIELDS + BEHAVIOUR_FIELDS
    counts = np.ones((n, len(names)), dtype=np.int64)
    counts[:, len(COMMON_FIELDS) :] = rng.poisson(BEHAVIOUR_MEAN, (n, len(BEHAVIOUR_FIELDS)))
    flist, per_line = _feature_lists(rng, names, counts, len(COMMON_FIELDS))
    return writer.common_lines(cfi, per_line, flist), int(per_line.sum())


def write_file(path: Path, kind: str, size_bytes: int, seed: int) -> dict:
    """Write about size_bytes of raw text; returns lines/features/bytes written."""
    rng = np.random.default_rng(seed)
    cfi_pool = _hex16(rng, 100_000)
    lines = features = written = 0
    batch = 20_000 if kind == aliccp.SKELETON_KIND else 400  # ~5 MB of text per batch
    with open(path, "wb") as fh:
        while written < size_bytes:
            if kind == aliccp.SKELETON_KIND:
                text, n_feat = skeleton_batch(rng, batch, lines + 1, cfi_pool)
            else:
                text, n_feat = common_batch(rng, batch, _hex16(rng, batch))
            data = writer.text_bytes(text)
            fh.write(data)
            written += data.nbytes
            lines += batch
            features += n_feat
    return {"lines": lines, "features": features, "bytes": written}


# ---------------------------------------------------------------------------------------------
# Measurement (in a fresh process each time, so VmHWM is this parse's peak)


def _vm(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def _resolve(spec: str | None):
    """'module:function' -> the function (None -> None)."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def measure(path: str, kind: str, chunk_bytes: int, on_chunk: str | None = None) -> dict:
    fields = SKELETON_FIELDS if kind == aliccp.SKELETON_KIND else COMMON_FIELDS + BEHAVIOUR_FIELDS
    stage = _resolve(on_chunk)
    rss_import = _vm("VmRSS")
    parser = aliccp.FileParser(path, kind, fields, chunk_bytes=chunk_bytes)
    start = time.perf_counter()
    n_rows = 0
    for rows, quarantine in parser.chunks():
        n_rows += rows.num_rows
        if stage is not None:
            stage(rows, quarantine)
    seconds = time.perf_counter() - start
    report = parser.report
    return {
        "seconds": seconds,
        "rows": n_rows,
        "report": report.to_dict(),
        "peak_rss": _vm("VmHWM"),
        "rss_import": rss_import,
    }


def measure_in_subprocess(path: Path, kind: str, chunk_bytes: int, on_chunk: str | None) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_preprocess", "--measure", str(path)]
    cmd += ["--kind", kind]
    cmd += ["--chunk-mb", str(chunk_bytes / 2**20)]
    if on_chunk:
        cmd += ["--on-chunk", on_chunk]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _row(kind: str, stage: str, truth: dict, chunk_mb: float, res: dict) -> str:
    rep = res["report"]
    assert rep["valid_rows"] == truth["lines"] and rep["rejected"] == 0, rep
    assert rep["features_kept"] == truth["features"], (rep, truth)
    mb, sec = truth["bytes"] / 1e6, res["seconds"]
    peak, base = res["peak_rss"] / 2**20, res["rss_import"] / 2**20
    return (
        f"| {kind} | {stage} | {mb:,.0f} | {truth['lines']:,} | {truth['features']:,} | "
        f"{chunk_mb:g} | {sec:.2f} | {mb / sec:,.0f} | {peak:,.0f} | {base:,.0f} | "
        f"{peak - base:,.0f} |"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 400])
    ap.add_argument("--kinds", nargs="+", default=[aliccp.SKELETON_KIND, aliccp.COMMON_KIND])
    ap.add_argument("--chunk-mb", type=float, default=aliccp.DEFAULT_CHUNK_BYTES / 2**20)
    ap.add_argument(
        "--workdir", default=None, help="where to write the files (default: a temp dir)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--on-chunk", default=None, help="module:function run on every chunk (timed)")
    ap.add_argument("--raw", default=None, help="raw folder: the whole path per worker count")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="with --raw")
    ap.add_argument(
        "--tokenizers", nargs="+", default=["compiled"], choices=aliccp.parser.TOKENIZERS
    )
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # child of --raw
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process mode
    ap.add_argument("--kind", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    chunk_bytes = int(args.chunk_mb * 2**20)

    if args.run_one:
        res = preprocess_folder.run_one(
            args.raw, args.run_one, args.workers[0], args.chunk_mb, args.tokenizers[0]
        )
        print(json.dumps(res))
        return
    if args.raw:
        print(machine())
        preprocess_folder.scaling(
            Path(args.raw), args.workers, args.chunk_mb, args.workdir, args.tokenizers
        )
        return
    if args.measure:
        print(json.dumps(measure(args.measure, args.kind, chunk_bytes, args.on_chunk)))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    workdir.mkdir(parents=True, exist_ok=True)
    stage = f"parse + {args.on_chunk}" if args.on_chunk else "parse"
    print(machine())
    print(TABLE_HEADER)
    try:
        for kind in args.kinds:
            for size_mb in args.sizes_mb:
                path = workdir / f"{kind}_{size_mb:g}MB.csv"
                t0 = time.perf_counter()
                truth = write_file(path, kind, int(size_mb * 1e6), args.seed)
                t_write = time.perf_counter() - t0
                res = measure_in_subprocess(path, kind, chunk_bytes, args.on_chunk)
                print(_row(kind, stage, truth, args.chunk_mb, res), flush=True)
                print(f"(wrote {path.name} in {t_write:.1f} s)", file=sys.stderr)
                if not args.keep:
                    path.unlink()
    finally:
        if not args.keep and not args.workdir:
            for p in workdir.iterdir():
                p.unlink()
            workdir.rmdir()


if __name__ == "__main__":
    main()

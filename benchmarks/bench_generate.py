"""Synthetic data generation throughput and peak memory against the number of processes.

Examples::

    python -m benchmarks.bench_generate --workers 1 2                      # conf/base's world
    python -m benchmarks.bench_generate --env world2 --workers 1 2 4 8 16
    python -m benchmarks.bench_generate --env fullscale --workers 1 16 \\
        --params "synthetic.n_train_rows=4230000,synthetic.n_test_rows=4300000"
    python -m benchmarks.bench_generate --workdir /data/tmp --keep

For each worker count, writes the ``synthetic`` section of a conf environment (``--params``:
Kedro-style dotted overrides, values read as YAML) with ``synthetic.workers`` set to that count,
into a folder of its own, in a fresh subprocess (so its peak RSS is this run's), and prints one
JSON line and one markdown row. Then checks that the six data files (four raw, two truth) are
byte-identical across the counts (sha256) and exits non-zero when they are not.

Columns: seconds of the whole run, of which building and calibrating the world (in the calling
process, before any worker starts); MB written (raw text and truth); MB/s over the whole run and
over the chunks only (what the workers parallelise), and per worker; CPU seconds of the calling
process and of all its workers together; the calling process's peak RSS (VmHWM) and the largest worker's
(``RUSAGE_CHILDREN``). A worker's RSS counts the pages of the shared world file it touched,
although all workers share one copy of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.conf import parameters
from benchmarks.machine import machine

ROOT = Path(__file__).resolve().parents[1]
FILES = (
    "sample_skeleton_train.csv",
    "common_features_train.csv",
    "sample_skeleton_test.csv",
    "common_features_test.csv",
    "truth_train.parquet",
    "truth_test.parquet",
)
TABLE_HEADER = (
    "| env | rows | MB | workers | seconds | world s | MB/s | chunk MB/s | chunk MB/s per worker "
    "| CPU s | worker CPU s | peak RSS MB | worker peak RSS MB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def synthetic_params(env: str, overrides: str | None) -> dict[str, Any]:
    """The ``synthetic`` section of ``env`` merged over conf/base, with dotted overrides.

    Without Kedro installed (a bare GPU image), the two files' sections are merged key by key,
    which is what the soft merge does for this flat section."""
    try:
        from kedro.config import OmegaConfigLoader
    except ImportError:
        params = dict(parameters(env)["synthetic"])
    else:
        from rec_pipeline.settings import CONFIG_LOADER_ARGS

        loader = OmegaConfigLoader(
            str(ROOT / "conf"),
            base_env="base",
            default_run_env=env,
            merge_strategy=CONFIG_LOADER_ARGS["merge_strategy"],
        )
        params = dict(loader["parameters"]["synthetic"])
    for item in filter(None, (overrides or "").split(",")):
        key, _, value = item.partition("=")
        section, _, name = key.strip().partition(".")
        if section != "synthetic" or not name:
            raise SystemExit(f"--params: only synthetic.<key>=<value> items, got {item!r}")
        params[name] = yaml.safe_load(value)
    return params


def _vm(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return -1


def measure(folder: Path, params: dict[str, Any], workers: int) -> dict[str, Any]:
    """Write the world into ``folder`` with ``workers`` processes (in this process)."""
    from rec_pipeline.data import synthetic
    from rec_pipeline.data.synthetic import output

    world_seconds = 0.0

    def timed(fn):
        def run(*args):
            nonlocal world_seconds
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                world_seconds += time.perf_counter() - start

        return run

    # The world and its calibration, timed where the generator calls them.
    output.build_world, output.calibrate = timed(output.build_world), timed(output.calibrate)
    config = synthetic.SyntheticConfig.from_mapping({**params, "workers": workers})
    start = time.perf_counter()
    summary = synthetic.write_synthetic(folder, config)
    seconds = time.perf_counter() - start
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "workers": workers,
        "rows": config.n_train_rows + config.n_test_rows,
        "bytes": summary.bytes_written,
        "seconds": round(seconds, 3),
        "world_seconds": round(world_seconds, 3),
        "cpu_seconds": round(self_usage.ru_utime + self_usage.ru_stime, 2),
        "worker_cpu_seconds": round(children.ru_utime + children.ru_stime, 2),
        "peak_rss": _vm("VmHWM"),
        "worker_peak_rss": children.ru_maxrss * 1024 if workers > 1 else 0,
    }


def measure_in_subprocess(folder: Path, env: str, overrides: str | None, workers: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_generate", "--measure", str(folder)]
    cmd += ["--env", env, "--workers", str(workers)]
    if overrides:
        cmd += ["--params", overrides]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def digests(folder: Path) -> dict[str, str]:
    out = {}
    for name in FILES:
        h = hashlib.sha256()
        with open(folder / name, "rb") as fh:
            while block := fh.read(1 << 24):
                h.update(block)
        out[name] = h.hexdigest()
    return out


def row(env: str, res: dict) -> str:
    mb, sec, workers = res["bytes"] / 1e6, res["seconds"], res["workers"]
    chunk_sec = max(sec - res["world_seconds"], 1e-9)
    return (
        f"| {env} | {res['rows']:,} | {mb:,.0f} | {workers} | {sec:.2f} | "
        f"{res['world_seconds']:.2f} | {mb / sec:,.0f} | {mb / chunk_sec:,.0f} | "
        f"{mb / chunk_sec / workers:,.0f} | {res['cpu_seconds']:.1f} | "
        f"{res['worker_cpu_seconds']:.1f} | "
        f"{res['peak_rss'] / 2**20:,.0f} | {res['worker_peak_rss'] / 2**20:,.0f} |"
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--env", default="base", help="conf environment (merged over conf/base)")
    ap.add_argument("--params", default=None, help='"synthetic.key=value,..." overrides')
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="process counts")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written folders")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args(argv)

    if args.measure:
        params = synthetic_params(args.env, args.params)
        print(json.dumps(measure(Path(args.measure), params, args.workers[0])))
        return

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_generate_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(machine())
    rows, hashes = [], {}
    try:
        for workers in args.workers:
            folder = workdir / f"workers_{workers}"
            res = measure_in_subprocess(folder, args.env, args.params, workers)
            hashes[workers] = digests(folder)
            print(json.dumps({"env": args.env, "params": args.params, **res}), flush=True)
            rows.append(row(args.env, res))
            if not args.keep:
                shutil.rmtree(folder)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(TABLE_HEADER)
    print("\n".join(rows))
    identical = len({json.dumps(h, sort_keys=True) for h in hashes.values()}) == 1
    print(f"files byte-identical across worker counts {list(hashes)}: {identical}")
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

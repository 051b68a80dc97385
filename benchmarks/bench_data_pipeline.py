"""The whole data-processing path on one core: parse -> vocabularies -> encode -> sampling.

Writes planted-truth raw files with the project's generator at two sizes (4x apart by default),
then, in a fresh subprocess per size, runs the data-processing steps as the nodes do
(``rec_pipeline.data.processing``: each yielded chunk written as a Parquet shard), and reports
raw MB/s per stage and for the whole path, and the subprocess's peak RSS during the processing (the high-water mark is reset
after the imports). Memory must stay flat as the input grows.

    python -m benchmarks.bench_data_pipeline --rows 500000 2000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _measure(raw_dir: str, work: str) -> dict:
    """Runs in a fresh process: the three data nodes with real shard writes."""
    from rec_pipeline.config import load_config
    from rec_pipeline.data.processing import process_folder
    from rec_pipeline.data.raw import RawFiles

    cfg = load_config(yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text()))
    raw = RawFiles(Path(raw_dir)).check()
    rss0 = _status_kb("VmRSS")
    # Reset the high-water mark, so the peak below is that of the processing, not the imports.
    Path("/proc/self/clear_refs").write_text("5")
    seconds = process_folder(raw, cfg.data, cfg.vocab, Path(work)).seconds
    return {
        "parse_s": seconds["parse"],
        "vocab_s": seconds["vocabularies"],
        "encode_s": seconds["encode"],
        "sampling_s": seconds["sampling"],
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "rss_after_imports_mb": rss0 / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[500_000, 2_000_000])
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return

    from rec_pipeline.data.synthetic import SyntheticConfig, write_synthetic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            raw = Path(tmp) / f"raw_{n}"
            # The world grows with the data, as the generator's docstring advises.
            scale = n / 600_000
            cfg = SyntheticConfig(
                n_train_rows=n,
                n_test_rows=n // 4,
                n_users=max(int(8000 * scale), 100),
                n_items=max(int(20000 * scale), 100),
            )
            write_synthetic(raw, cfg)
            mb = sum(p.stat().st_size for p in raw.glob("*.csv")) / 1e6
            work = Path(tmp) / f"work_{n}"
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_data_pipeline",
                    "--measure",
                    str(raw),
                    str(work),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            total = r["parse_s"] + r["vocab_s"] + r["encode_s"]
            r.update({"train_rows": n, "raw_mb": mb, "total_s": total, "mb_per_s": mb / total})
            rows.append(r)
            print(json.dumps(r), flush=True)
    print("\n| train rows | raw MB | parse s | vocab s | encode s | total s | MB/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['train_rows']:,} | {r['raw_mb']:,.0f} | {r['parse_s']:.1f} | {r['vocab_s']:.1f} |"
            f" {r['encode_s']:.1f} | {r['total_s']:.1f} | {r['mb_per_s']:.0f} |"
            f" {r['peak_rss_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()

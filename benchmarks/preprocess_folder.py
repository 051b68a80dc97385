"""The whole preprocessing of a raw folder at several worker counts (``bench_preprocess --raw``).

Each count runs in a fresh subprocess (``run_one``), so its peak RSS and its workers' are its own:
``encode_folder`` parses the four raw files, counts the vocabularies and encodes, as the Kedro
nodes do. The parent then sizes each stage's output folders and hashes the encoded rows
(``content_hash``: row content only, so neither shard boundaries nor Parquet metadata matter),
which must be the same at every worker count.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Output folders of each stage, under the encode_folder folder.
STAGE_OUTPUTS = {
    "parse": ["parsed_train_samples", "parsed_train_commons", "parsed_test_samples",
              "parsed_test_commons", "quarantine"],
    "vocabularies": ["vocabularies.parquet"],
    "encode": ["encoded_train_all", "encoded_valid", "encoded_test", "encoded_train_commons",
               "encoded_test_commons"],
}  # fmt: skip
HEADER = (
    "| tokenizer | workers | raw MB | parse s | vocab s | encode s | parse MB/s | encode MB/s "
    "| parse+encode MB/s | per worker MB/s | parent peak RSS MB | worker peak RSS MB "
    "| parent CPU s | workers CPU s (sys) | parsed MB | vocab MB | encoded MB | encoded rows hash |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def run_one(raw: str, out: str, workers: int, chunk_mb: float, tokenizer: str) -> dict:
    """In the measuring subprocess: ``encode_folder`` with ``workers`` processes."""
    from rec_pipeline.config import load_config
    from rec_pipeline.data.processing import encode_folder
    from rec_pipeline.data.raw import RawFiles

    cfg = load_config(yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text()))
    update = {"workers": workers, "chunk_mb": int(chunk_mb), "tokenizer": tokenizer}
    data = cfg.data.model_copy(update=update)
    seconds = encode_folder(RawFiles(Path(raw)).check(), data, cfg.vocab, Path(out))
    me, children = (resource.getrusage(r) for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {
        "seconds": seconds,
        "parent_peak_kb": me.ru_maxrss,
        "worker_peak_kb": children.ru_maxrss,
        "parent_cpu_s": me.ru_utime + me.ru_stime,
        "worker_cpu_s": children.ru_utime + children.ru_stime,
        "worker_sys_s": children.ru_stime,
    }


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _hash_array(h, arr: pa.Array) -> None:
    """Values of ``arr`` (lists as their lengths, then their flat values)."""
    if pa.types.is_list(arr.type):
        h.update(np.diff(arr.offsets.to_numpy()).astype(np.int64).tobytes())
        _hash_array(h, arr.flatten())
    elif pa.types.is_binary(arr.type) or pa.types.is_string(arr.type):
        values = [v if isinstance(v, bytes) else v.encode() for v in arr.to_pylist()]
        h.update(np.array([len(v) for v in values], np.int64).tobytes())
        h.update(b"".join(values))
    else:
        h.update(arr.to_numpy(zero_copy_only=False).tobytes())


def content_hash(folder: Path) -> str:
    """Hash of the rows of every encoded shard folder, column by column in row order."""
    from rec_pipeline.data.shards import ShardSet

    digest = hashlib.sha256()
    for name in STAGE_OUTPUTS["encode"]:
        shards = ShardSet(folder / name)
        columns = {f.name: hashlib.sha256() for f in shards.schema}
        for table in shards.iter_tables():
            for col, h in columns.items():
                _hash_array(h, table.column(col).combine_chunks())
        for col, h in columns.items():
            digest.update(f"{name}/{col}:{h.hexdigest()}".encode())
    return digest.hexdigest()[:16]


def scaling(
    raw: Path, workers: list[int], chunk_mb: float, workdir: str | None, tokenizers: list[str]
) -> None:
    """One table row per tokenizer and worker count; fails when the encoded rows differ."""
    raw_mb = sum(p.stat().st_size for p in raw.glob("*.csv")) / 1e6
    print(HEADER, flush=True)
    hashes = set()
    for tok, w in ((t, w) for t in tokenizers for w in workers):
        out = Path(tempfile.mkdtemp(prefix=f"preprocess_w{w}_", dir=workdir))
        cmd = [sys.executable, "-m", "benchmarks.bench_preprocess", "--raw", str(raw)]
        cmd += ["--run-one", str(out), "--workers", str(w), "--chunk-mb", str(chunk_mb)]
        cmd += ["--tokenizers", tok]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        res = json.loads(res.strip().splitlines()[-1])
        wall = time.perf_counter() - t0
        s = res["seconds"]
        mb = {k: sum(_size(out / n) for n in v) / 1e6 for k, v in STAGE_OUTPUTS.items()}
        digest = content_hash(out)
        hashes.add(digest)
        both = s["parse"] + s["encode"]
        print(
            f"| {tok} | {w} | {raw_mb:,.0f} | {s['parse']:.2f} | {s['vocabularies']:.2f} | "
            f"{s['encode']:.2f} | {raw_mb / s['parse']:,.0f} | {raw_mb / s['encode']:,.0f} | "
            f"{raw_mb / both:,.0f} | {raw_mb / both / w:,.0f} | "
            f"{res['parent_peak_kb'] / 1024:,.0f} | {res['worker_peak_kb'] / 1024:,.0f} | "
            f"{res['parent_cpu_s']:.1f} | {res['worker_cpu_s']:.1f} ({res['worker_sys_s']:.1f}) | "
            f"{mb['parse']:,.0f} | {mb['vocabularies']:,.1f} | {mb['encode']:,.0f} | {digest} |",
            flush=True,
        )
        print(f"(workers {w}: {wall:.1f} s with start-up, output in {out})", file=sys.stderr)
        shutil.rmtree(out)
    if len(hashes) > 1:
        raise SystemExit(f"encoded rows differ between runs: {sorted(hashes)}")

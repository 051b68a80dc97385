"""The whole chain at Ali-CCP's size, stage by stage, without Kedro: generate, parse, vocabularies,
encode, sample, train, evaluate on every test row; one table of seconds, throughput and memory.

    python -m benchmarks.run_fullscale --work /data/fullscale                 # conf/fullscale
    python -m benchmarks.run_fullscale --work /tmp/fs10 --params \\
        "synthetic.n_train_rows=4230000,synthetic.n_test_rows=4300000"        # a tenth of the rows
    python -m benchmarks.run_fullscale --work /data/fs --env fullscale aliccp \\
        --params "runtime.epochs=3"                # the source recipe's 40,000 steps, full size

What ``--work`` already holds is reused, as ``kedro run`` does: a world generated with the
same synthetic keys is not generated again, and an encoding made from the same raw files and
data / vocabulary keys is not made again (the table says "reused"); another recipe over the
same world runs from the sampling on.

It runs the library steps the Kedro nodes call (``write_synthetic``, ``process_folder``,
``train.run.train``, ``train.run.evaluate_checkpoint``) with the parameters of ``conf/base``
merged key by key with each ``conf/<env>`` in turn and the ``--params`` overrides (dotted,
values as YAML), so it runs where Kedro is not installed (a bare GPU image); ``kedro run
--env=fullscale`` runs the same steps through the catalog. The library's log (training's validations, compilation and
capture) goes to stderr. Each stage prints one JSON line when it ends; the table and
``fullscale.json`` (in ``--work``) come at the end. Peak RSS is the largest of this process and
of every worker it started (``ru_maxrss``); GPU memory is the training and evaluation peak.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import resource
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks.conf import parameters
from benchmarks.machine import machine

# Nothing heavier at module level: the data stages' worker processes are spawned, and a spawned
# process imports the main module first (torch alone costs each of them about a second, on every
# pool of every stage).


def _peak_rss_mb() -> float:
    """The largest resident set of this process and of its finished children, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def _gpu_peak_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


class Stages:
    """Times each stage and keeps one row per stage; with ``profile`` (a folder), each stage
    also runs under cProfile, and its 40 costliest calls (cumulative time) of this process,
    not of its workers, are written there as ``<stage>.txt`` (the whole profile as
    ``<stage>.prof``)."""

    def __init__(self, profile: Path | None = None) -> None:
        self.rows: list[dict] = []
        self.profile = profile

    def run(self, name: str, fn, **measures):
        profiler = cProfile.Profile() if self.profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        result = fn()
        seconds = time.perf_counter() - start
        if profiler:
            profiler.disable()
            self.profile.mkdir(parents=True, exist_ok=True)
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
            slug = "".join(c if c.isalnum() else "_" for c in name.split(" (")[0])
            (self.profile / f"{slug}.txt").write_text(out.getvalue())
            profiler.dump_stats(self.profile / f"{slug}.prof")  # for pstats, sorted any way
        row = {"stage": name, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}
        for key, value in measures.items():
            row[key] = value(result, seconds) if callable(value) else value
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        return result

    def table(self) -> str:
        lines = [
            "| stage | seconds | throughput | peak RSS MB | GPU peak MiB |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            gpu = r.get("gpu_peak_mib")
            steps = " + ".join(f"{k} {v}" for k, v in r.get("steps", {}).items())
            lines.append(
                f"| {r['stage']}{f' ({steps})' if steps else ''} | {r['seconds']:.1f} | {r.get('throughput', '')} | "
                f"{r['peak_rss_mb']:,.0f} | {'-' if gpu is None else f'{gpu:,.0f}'} |"
            )
        total = sum(r["seconds"] for r in self.rows)
        lines.append(f"| **whole chain** | **{total:.1f}** | | | |")
        return "\n".join(lines)


def main() -> None:
    import pandas as pd
    import torch

    from rec_pipeline.config import load_config, load_section
    from rec_pipeline.data.processing import process_folder
    from rec_pipeline.data.raw import RawFiles, SyntheticSource
    from rec_pipeline.data.synthetic import MARKER_NAME
    from rec_pipeline.data.workers import shared_workers
    from rec_pipeline.train.run import evaluate_checkpoint, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--env", nargs="+", default=["fullscale"], help="conf environments merged over conf/base"
    )
    ap.add_argument("--params", default="", help='dotted overrides, e.g. "runtime.epochs=1"')
    ap.add_argument("--work", required=True, help="folder for the raw files and every artefact")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--profile", type=Path, default=None, help="folder for per-stage profiles")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params = parameters(args.env, args.params)
    params["runtime"].update({"device": args.device, "progress_bar": False, "auto_eval": False})
    cfg = load_config(params)  # every key checked before any work
    work = Path(args.work)
    raw, processed = work / "raw", work / "processed"
    stages = Stages(args.profile)
    print(machine(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")

    world = SyntheticSource(load_section("synthetic", params["synthetic"]).build())
    # Generation and processing share one pool of worker processes, stopped before training.
    pools = ExitStack()
    pools.enter_context(shared_workers())
    stages.run(
        "generate",
        lambda: world.materialize(raw),  # an up-to-date world in --work is reused
        throughput=lambda wrote, s: f"{_folder_mb(raw) / s:,.0f} MB/s" if wrote else "reused",
    )
    splits = json.loads((raw / MARKER_NAME).read_text())["summary"]["splits"]
    raw_mb = sum(p.stat().st_size for p in raw.glob("*.csv")) / 1e6
    data = stages.run(
        "parse + vocabularies + encode + sample",
        lambda: process_folder(RawFiles(raw).check(), cfg.data, cfg.vocab, processed),
        throughput=lambda d, s: (
            f"{raw_mb / s:,.0f} MB/s of raw text" if "parse" in d.seconds else "encoding reused"
        ),
        steps=lambda d, _: {k: round(v, 1) for k, v in d.seconds.items()},
    )
    pools.close()
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    result = stages.run(
        "train",
        lambda: train(
            cfg,
            data.metadata,
            data.encoded("train"),
            data.encoded("valid"),
            data.encoded("train_commons"),
        ),
        throughput=lambda r, _: f"{r.summary['samples_per_s']:,.0f} samples/s",
        gpu_peak_mib=lambda *_: _gpu_peak_mb(),
    )
    truth = pd.read_parquet(raw / "truth_test.parquet")
    _, metrics = stages.run(
        "evaluate (every test row)",
        lambda: evaluate_checkpoint(
            result.checkpoint,
            "test",
            data.encoded("test"),
            data.encoded("test_commons"),
            truth,
            which="best",
            settings=cfg.evaluation,
            device=args.device,
            with_predictions=False,
        ),
        throughput=lambda _, s: f"{len(truth) / s:,.0f} rows/s",
        gpu_peak_mib=lambda *_: _gpu_peak_mb(),
    )
    report = {
        "machine": machine(),
        "envs": args.env,
        "params": args.params,
        "stages": stages.rows,
        "data_seconds": data.seconds,
        "train_summary": {k: v for k, v in result.summary.items() if k != "best_metrics"},
        "test": {
            "auc_primary": metrics.get("auc_primary"),
            "tasks": {t: (m["auc"], m.get("oracle_auc")) for t, m in metrics["tasks"].items()},
        },
        "rows": {"train": splits["train"]["rows"], "test": splits["test"]["rows"]},
    }
    (work / "fullscale.json").write_text(json.dumps(report, indent=1, default=str))
    print(stages.table())
    tasks = report["test"]["tasks"]
    print(
        f"test auc_primary {report['test']['auc_primary']:.4f}; "
        + ", ".join(f"{t} {a:.4f} (oracle {o:.4f})" for t, (a, o) in tasks.items())
    )


if __name__ == "__main__":
    main()

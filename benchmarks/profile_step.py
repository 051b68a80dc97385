"""Where the captured training step's kernels and device time go, phase by phase.

    python -m benchmarks.profile_step --raw <raw folder> --work /tmp/prof --batch-sizes 1024 16384
    python -m benchmarks.profile_step --data-root data --override runtime.compile=dense

The static step (``runtime.step_mode: graph``) replays the kernels its body launches, so the body
is run eagerly under ``torch.profiler`` (after warm-up steps) and every device activity (kernel,
memset, memcpy) is attributed to the step phase (``step.forward``, ``step.backward``, ...; the
ranges :func:`rec_pipeline.train.graph_step.phase` opens) in which the host launched it. Printed
per batch size: activities per step and device microseconds per step for each phase, and the
kernels that took the most device time in each. ``--json`` appends the figures as one line per
batch size.

Device time here is that of kernels run back to back from an eager host; in a graph replay the
launch gaps shrink, so the per-phase device time is the floor the replay approaches.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.bench_training import _load
from benchmarks.peers.ours import apply_overrides
from rec_pipeline.config import load_config
from rec_pipeline.train.graph_step import PHASE_PREFIX
from rec_pipeline.train.loop import Trainer

_DEVICE_TYPES = ("CUDA",)


def attribute(events, steps: int, top: int = 6) -> dict:
    """Per phase: device activities and device microseconds per step, top kernels.

    ``events``: the profiler's kineto events. A device activity belongs to the phase whose host
    range holds the runtime call that launched it (matched by correlation id), or failing that
    the operator it is linked to.
    """
    ranges, runtime, ops, device = [], {}, {}, []
    for e in events:
        name = e.name()
        if e.device_type().name != "CPU":
            # The GPU copies of host ranges (``step.*``, ``Optimizer.step#...``) are not work.
            if not e.is_user_annotation():
                device.append(e)
        elif name.startswith(PHASE_PREFIX):
            ranges.append((e.start_ns(), e.end_ns(), name[len(PHASE_PREFIX) :]))
        elif e.linked_correlation_id():
            runtime[e.correlation_id()] = e.start_ns()
        else:
            ops.setdefault(e.correlation_id(), e.start_ns())
    ranges.sort()

    def phase_at(t: int) -> str:
        found = "(outside the phases)"
        for start, end, name in ranges:  # innermost wins: it starts later
            if start <= t <= end:
                found = name
        return found

    count: Counter = Counter()
    micros: defaultdict = defaultdict(float)
    kernels: defaultdict = defaultdict(Counter)  # device microseconds by kernel name
    launches: defaultdict = defaultdict(Counter)
    for e in device:
        t = runtime.get(e.correlation_id(), ops.get(e.linked_correlation_id()))
        name = phase_at(t) if t is not None else "(unlinked)"
        count[name] += 1
        micros[name] += e.duration_ns() / 1e3
        kernels[name][e.name()[:100]] += e.duration_ns() / 1e3
        launches[name][e.name()[:100]] += 1
    return {
        name: {
            "activities": count[name] / steps,
            "device_us": micros[name] / steps,
            "top": [
                [k, launches[name][k] / steps, us / steps]
                for k, us in kernels[name].most_common(top)
            ],
        }
        for name in sorted(count, key=lambda n: -count[n])
    }


def profile(trainer: Trainer, plan, steps: int, warmup: int, top: int = 6) -> dict:
    g = trainer.graph
    g.load(plan, 0)
    for _ in range(warmup):
        g._body(None)
    torch.cuda.synchronize()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(steps):
            g._body(None)
        torch.cuda.synchronize()
    return attribute(prof.profiler.kineto_results.events(), steps, top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--raw", default=None, help="process this raw folder instead (no Kedro)")
    ap.add_argument("--work", default="/tmp/profile_step")
    ap.add_argument("--params", default="conf/base/parameters.yml")
    ap.add_argument("--override", default="", help="comma-separated key=value (peers syntax)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 16384])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=6, help="kernels listed per phase")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda")
    meta, train = _load(args, dev)
    base = apply_overrides(yaml.safe_load(Path(args.params).read_text()), args.override)
    for bs in args.batch_sizes:
        p = copy.deepcopy(base)
        p["data"]["batch_size"] = bs
        p["runtime"].update(
            {
                "device": "cuda",
                "step_mode": "graph",
                "progress_bar": False,
                "grad_diag_enabled": False,
                "log_health_metrics": False,
                "auto_eval": False,
            }
        )
        trainer = Trainer(load_config(p), meta, train, None)
        plan = train.plan(np.random.default_rng(0).permutation(len(train)), bs)
        phases = profile(trainer, plan, args.steps, args.warmup, args.top)
        total_n = sum(v["activities"] for v in phases.values())
        total_us = sum(v["device_us"] for v in phases.values())
        sizes = trainer.graph.batches.sizes
        print(
            f"\nbatch {bs}: {total_n:.0f} device activities, {total_us:.0f} us device time a step"
            f" (value slots: skeleton {sizes.sk_values:,}, common {sizes.cm_values:,})"
        )
        for name, v in phases.items():
            print(f"  {name:20s} {v['activities']:6.0f} {v['device_us']:9.1f} us")
            for k, n, us in v["top"]:
                print(f"      {us:8.1f} us {n:4.0f} x {k}")
        if args.json:
            with open(args.json, "a") as fh:
                row = {"batch": bs, "override": args.override, "activities": total_n}
                fh.write(json.dumps({**row, "device_us": total_us, "phases": phases}) + "\n")


if __name__ == "__main__":
    main()

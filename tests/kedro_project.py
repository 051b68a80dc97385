"""Helpers for tests that run the project through Kedro sessions in a temporary folder."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

ROOT = Path(__file__).resolve().parents[1]

# Small enough for seconds on a CPU; every schedule phase still happens (warmup, focal warmup,
# the pos_weight milestone, validations, diagnostics).
TINY = {
    "synthetic": {
        "n_train_rows": 6000,
        "n_test_rows": 2000,
        "n_users": 300,
        "n_items": 600,
        "impressions_per_common": 10.0,
        "behaviour_events_mean": 20.0,
    },
    # A tenth for validation (base: a twentieth), so that its ~600 rows hold conversions and
    # every validation AUC, and with them a best checkpoint, exists.
    "data": {"batch_size": 256, "valid_fraction": 0.1},
    "runtime": {
        "epochs": 1,
        "log_every": 4,
        "valid_every": 8,
        "grad_diag_every": 4,
        "progress_bar": False,
    },
    "optim": {"lr_scheduler": {"warmup_steps": 2}},
    "loss": {
        "pos_weight_clip_schedule": {"milestones": [0, 6]},
        "aux_focal": {"warmup_steps": 6},
    },
    "evaluation": {"batch_size": 4096},
}


# Enough rows for a model to learn the planted interactions in seconds.
TRAINING = {
    **TINY,
    "synthetic": {**TINY["synthetic"], "n_train_rows": 40000, "n_test_rows": 10000},
    # Negatives kept at the share alone (0.4), as the training tests' step counts and
    # calibration checks assume; a log this small would otherwise keep them all.
    "data": {**TINY["data"], "neg_keep_at_least": None},
}


def make_project(tmp_path: Path) -> Path:
    """A copy of the project's configuration in an empty folder (data/ starts empty)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    (tmp_path / "src").mkdir()  # Kedro checks that it exists; the package itself is installed
    bootstrap_project(tmp_path)
    return tmp_path


def run(project: Path, pipeline: str = "__default__", params: dict | None = None, **kw):
    with KedroSession.create(project_path=project, runtime_params=params or TINY, **kw) as s:
        return s.run(pipeline_names=[pipeline])


def catalog(project: Path, params: dict | None = None, **kw):
    with KedroSession.create(project_path=project, runtime_params=params or TINY, **kw) as s:
        return s.load_context().catalog


def latest(path: Path) -> Path:
    """The newest version of a versioned file dataset."""
    return sorted(p for p in path.iterdir() if p.is_dir())[-1] / path.name


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base`` key by key (nested dicts merged too)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def encoded(project: Path, splits=("train", "valid"), params: dict | None = None):
    """(parameters, metadata, {split: SplitData on the CPU}) of a project whose data ran."""
    from rec_pipeline.data.batches import load_splits

    cat = catalog(project, params or TRAINING)
    meta = cat.load("metadata")
    out = load_splits(
        meta,
        {s: cat.load(f"encoded_{s}") for s in splits if s != "test"},
        cat.load("encoded_train_commons"),
    )
    if "test" in splits:
        test = {"test": cat.load("encoded_test")}
        out.update(load_splits(meta, test, cat.load("encoded_test_commons")))
    return cat.load("parameters"), meta, out

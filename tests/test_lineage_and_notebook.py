"""Lineage (kedro viz build, offline) and the exploration notebook, on a real run's artefacts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kedro_project import ROOT, TINY, catalog
from nbclient import NotebookClient


@pytest.mark.slow
def test_viz_build_has_every_node_and_dataset(full_run_project, tmp_path):
    from kedro.framework.project import pipelines

    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    out = subprocess.run(
        [str(kedro), "viz", "build"],
        cwd=full_run_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    graph = json.loads((full_run_project / "build/api/main").read_text())
    tasks = {n["name"] for n in graph["nodes"] if n["type"] == "task"}
    data = {n["name"] for n in graph["nodes"] if n["type"] == "data"}
    default = pipelines["__default__"]
    assert tasks == {n.name for n in default.nodes}
    used = {d for d in default.datasets() if d != "parameters" and not d.startswith("params:")}
    assert used <= data
    # Every dataset declared in the catalog (factories resolved by the pipelines) is drawn.
    declared = set(catalog(full_run_project, TINY).keys()) - {"parameters"}
    declared = {d for d in declared if not d.startswith("params:")}
    assert (
        declared <= data | {"evaluation_metrics_versions"} and "evaluation_metrics_versions" in data
    )
    registered = {p["id"] for p in graph["pipelines"]}
    assert registered == set(pipelines)


@pytest.mark.slow
def test_notebook_runs_on_a_real_run(full_run_project, tmp_path):
    nb = nbformat.read(ROOT / "notebooks/explore_run.ipynb", as_version=4)
    os.environ["PROJECT_ROOT"] = str(full_run_project)
    try:
        NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(full_run_project)}},
        ).execute()
    finally:
        del os.environ["PROJECT_ROOT"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "auc_primary" in text and "split: test" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # curves, ROC, calibration
    shutil.rmtree(tmp_path, ignore_errors=True)

"""A `kedro run` killed with SIGKILL mid-training resumes to the uninterrupted run's weights."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kedro_project import latest

# Mid-epoch states every 7 steps of a 45-step run; states, logs and validations fall on
# different steps, so every piece of the resumable state is exercised.
PARAMS = ",".join(
    [
        "data.batch_size=256",
        "runtime.device=cpu",
        "runtime.max_train_steps=45",
        "runtime.checkpoint_every=7",
        "runtime.log_every=4",
        "runtime.valid_every=10",
        "runtime.grad_diag_every=5",
        "runtime.auto_eval=false",
        "runtime.progress_bar=false",
    ]
)


def _kedro(project: Path, extra: str = "") -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "OMP_NUM_THREADS": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }
    cmd = [sys.executable, "-m", "kedro", "run", "--pipeline=training", "--params", PARAMS + extra]
    return subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def _last_weights(project: Path) -> dict:
    path = latest(project / "data/06_models/model_checkpoint.pt")
    return torch.load(path, weights_only=True)["last"]["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_weights(encoded_project):
    project = encoded_project
    states = project / "data/06_models/training_state"
    _finish(_kedro(project))
    reference = _last_weights(project)

    killed = _kedro(project)
    deadline = time.monotonic() + 240
    while not list(states.glob("state-*.pt")) and killed.poll() is None:
        assert time.monotonic() < deadline, "no training state appeared"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = sorted(states.glob("state-*.pt"))
    assert saved and all(int(p.stem.split("step")[1]) < 45 for p in saved)

    out = _finish(_kedro(project, ",runtime.resume=latest"))
    resumed_at = int(re.search(r"Resumed at step (\d+)", out)[1])
    assert resumed_at == max(int(p.stem.split("step")[1]) for p in saved)
    resumed = _last_weights(project)
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name

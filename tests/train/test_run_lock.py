"""One run per data folder: a second concurrent run fails at once, naming the lock and pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from kedro_project import run

from rec_pipeline.hooks import DataFolderBusyError, RunLock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from rec_pipeline.hooks import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_run_on_the_same_data_folder_fails_at_once(project):
    lock_path = project / "data" / ".run.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataFolderBusyError) as err:
            run(project, "data_generation")
        message = str(err.value)
        assert "data/.run.lock" in message and f"pid {holder.pid}" in message
        # Nothing ran: the generator wrote no raw file.
        assert not (project / "data" / "01_raw").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the dead holder's lock: the folder is free again.
    lock = RunLock(lock_path)
    lock.acquire()
    lock.release()

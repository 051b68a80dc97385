"""Project hooks: parameters are validated, and the data folder locked, before any node runs."""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import ExitStack
from pathlib import Path

from kedro.framework.hooks import hook_impl

from rec_pipeline.config import IGNORED_KEYS, ignored_keys, load_config
from rec_pipeline.data.workers import shared_workers

log = logging.getLogger(__name__)


class ValidateParametersHook:
    """Fail fast: a misspelt key or an inconsistent setting stops the run before any work."""

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        parameters = catalog.load("parameters")
        cfg = load_config(parameters)
        log.info("Parameters validated (experiment '%s').", cfg.experiment.name)
        ignored = ignored_keys(parameters)
        if ignored:
            log.warning(
                "These parameters are accepted but have no effect: %s",
                "; ".join(
                    f"{k} ({IGNORED_KEYS.get(k, 'model.backbone sets it')})" for k in ignored
                ),
            )


class DataFolderBusyError(RuntimeError):
    """Another run holds the data folder's lock."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<data_root>/.run.lock`` for the life of a run.

    The kernel releases the lock when the holding process exits, however it ends (SIGKILL
    included), so a dead run never blocks the next one. The file records the holder's pid.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataFolderBusyError(
                f"another run (pid {holder}) is using this data folder: {self.path} is locked. "
                "Wait for it to finish, or use another data_root."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class _RunScopedHook:
    """A hook holding something for the length of a run: ``_release`` ends it when the run
    ends, whether it finished or failed."""

    @hook_impl
    def after_pipeline_run(self, run_params, run_result, pipeline, catalog) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self, error, run_params, pipeline, catalog) -> None:
        self._release()

    def _release(self) -> None:
        raise NotImplementedError


class DataFolderLockHook(_RunScopedHook):
    """One run at a time per data folder: a second concurrent run fails at once, naming the
    lock file and the holder's pid."""

    def __init__(self) -> None:
        self._data_root: str | None = None
        self._lock: RunLock | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._data_root = context.config_loader["globals"].get("data_root", "data")

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._release()  # a lock left by an earlier run of this process that never finished
        # Relative to the working directory, as the catalog's paths are.
        lock = RunLock(Path(self._data_root or "data") / ".run.lock")
        lock.acquire()
        self._lock = lock

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# Nodes that map over worker processes (data.workers, synthetic.workers).
WORKER_POOL_TAG = "worker_pool"


class WorkerPoolHook(_RunScopedHook):
    """The run's nodes tagged :data:`WORKER_POOL_TAG` share their worker processes: one pool,
    started by the first map and stopped once the last such node of the run has finished (so
    training does not run next to idle workers holding memory)."""

    def __init__(self) -> None:
        self._pools: ExitStack | None = None
        self._waiting: set[str] = set()

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._release()
        self._waiting = {n.name for n in pipeline.nodes if WORKER_POOL_TAG in n.tags}
        if self._waiting:
            self._pools = ExitStack()
            self._pools.enter_context(shared_workers())

    @hook_impl
    def after_node_run(self, node) -> None:
        self._waiting.discard(node.name)
        if not self._waiting:
            self._release()

    def _release(self) -> None:
        if self._pools is not None:
            self._pools.close()
            self._pools = None

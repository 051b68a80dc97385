"""The periodic training states of the current run: a folder of atomically written checkpoints,
newest kept, that a killed run resumes from."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from rec_pipeline.atomic_io import load_torch, save_torch
from rec_pipeline.train.checkpoint import Checkpoint

log = logging.getLogger(__name__)

_NAME = re.compile(r"^state-(\d{6})-step(\d+)\.pt$")


class TrainingStateStore:
    """``state-<seq>-step<step>.pt`` files in one folder; the newest ``keep`` are kept.

    Each save is atomic (temp file, fsync, rename), so a kill during a save leaves the previous
    states whole; the sequence number, not the step, orders them.
    """

    def __init__(self, path: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError("TrainingStateStore: keep must be >= 1")
        self.path = Path(path)
        self.keep = keep

    def files(self) -> list[Path]:
        """The state files, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.path.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest_path(self) -> Path | None:
        files = self.files()
        return files[-1] if files else None

    def latest(self) -> Checkpoint | None:
        """The newest state (None when there is none); a corrupted file is an error naming it."""
        path = self.latest_path()
        if path is None:
            return None
        ckpt = Checkpoint.from_dict(load_torch(path))
        log.info("Training state %s (step %s).", path, ckpt.state.step if ckpt.state else "?")
        return ckpt

    def save(self, checkpoint: Checkpoint | dict) -> Path:
        ckpt = Checkpoint.from_dict(checkpoint)
        files = self.files()
        seq = int(_NAME.match(files[-1].name)[1]) + 1 if files else 0
        kept = ckpt.last or ckpt.best
        step = ckpt.state.step if ckpt.state is not None else (kept.step if kept else 0)
        path = self.path / f"state-{seq:06d}-step{step}.pt"
        save_torch(ckpt.to_dict(), path)
        for old in [*files, path][: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def clear(self) -> None:
        for p in self.files():
            p.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"TrainingStateStore({str(self.path)!r}, keep={self.keep})"

"""Atomic file writes (temp file in the same folder, fsync, ``os.replace``) and checkpoint files.

A process killed during a save leaves the previous version of the file intact: readers see the
old file or the new one, never a partial one. No Kedro import here.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read back (truncated, corrupted or not a checkpoint)."""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """A file opened for writing whose content replaces ``path`` only when the block succeeds.

    The data go to a temporary file next to ``path``, are flushed and fsynced, then renamed
    over ``path`` (and the folder fsynced); on an error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class AtomicLocalFileSystem:
    """An fsspec local filesystem whose ``open`` for writing goes through :func:`atomic_open`.

    Every other call is the wrapped filesystem's, so a kedro-datasets class that writes with
    ``self._fs.open(path, mode="w...")`` becomes atomic when its ``_fs`` is wrapped.
    """

    def __init__(self, fs: Any):
        self._fs = fs

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            return atomic_open(path, mode.replace("x", "w"), **kwargs)
        return self._fs.open(path, mode, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with a clear error naming the file when it is
    truncated or corrupted (instead of an unpickling traceback)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CorruptCheckpointError(
            f"checkpoint file {path} cannot be read: it is truncated or corrupted "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e

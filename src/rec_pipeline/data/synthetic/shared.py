"""An object written once to a file that processes map instead of building or receiving it.

The world's tables are the bulk of what every chunk reads (about 320 bytes per item and per user:
1.5 GB at 4.3M items and 0.4M users). Rebuilding them in each worker process would cost each
worker the build's time and memory (13 s and a few GB at that size), and sending them through a
pipe a pickle and a private copy per worker (0.8 s to write, 1.5 s to read). Pickled with its buffers out of band into one file, the
world is written once; each process maps the file read-only and unpickles only a few kilobytes,
its arrays pointing into the mapping, so all processes share one copy in the page cache (and an
attempt to modify a shared array fails loudly).
"""

from __future__ import annotations

import mmap
import pickle
from pathlib import Path
from typing import Any

# Alignment of each buffer in the file: arrays start on a cache line.
_ALIGN = 64
_LENGTH_BYTES = 8


def save_shared(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path``: its buffers (aligned), then the pickle and where each buffer
    lies, then that index's length."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    spans = []
    with open(path, "wb") as f:
        for buffer in buffers:
            raw = buffer.raw()
            f.write(bytes(-f.tell() % _ALIGN))
            spans.append((f.tell(), raw.nbytes))
            f.write(raw)
        index = pickle.dumps((head, spans), protocol=5)
        f.write(index)
        f.write(len(index).to_bytes(_LENGTH_BYTES, "little"))


def load_shared(path: Path) -> Any:
    """The object :func:`save_shared` wrote, its buffers read-only views of the mapped file."""
    with open(path, "rb") as f:
        view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    n = int.from_bytes(view[-_LENGTH_BYTES:], "little")
    head, spans = pickle.loads(view[-_LENGTH_BYTES - n : -_LENGTH_BYTES])
    return pickle.loads(head, buffers=[view[o : o + size] for o, size in spans])

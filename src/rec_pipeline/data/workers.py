"""How many processes a chunked data step uses (``data.workers``)."""

from __future__ import annotations

import os


def worker_count(setting: int | str, chunks: int) -> int:
    """Processes for a job of ``chunks`` chunks: ``setting`` (``auto``: the cores), 1 below
    four chunks (starting processes would cost more than they save)."""
    if chunks < 4:
        return 1
    return (os.cpu_count() or 1) if setting == "auto" else int(setting)

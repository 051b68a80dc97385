"""``torch.compile`` for the captured step's fixed-shape pieces, with an optional fallback."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)

#: torch.compile's backend ("aot_eager" traces and runs the same ops unfused: for tests).
BACKEND = "inductor"


def triton_available() -> bool:
    """Whether torch.compile's GPU code generator (Triton) is installed."""
    return importlib.util.find_spec("triton") is not None


def compiled(fn: F, what: str, fallback: bool) -> F:
    """``fn`` through ``torch.compile`` (static shapes: a new shape compiles anew).

    With ``fallback`` a call whose compilation fails logs a warning naming ``what`` and runs
    ``fn`` as written, as does every later call; without it the error propagates.
    """
    fast = torch.compile(fn, dynamic=False, backend=BACKEND)
    current = [fast]

    def call(*args, **kwargs):
        try:
            return current[0](*args, **kwargs)
        except Exception as err:
            if not fallback or current[0] is fn:
                raise
            log.warning(
                "runtime.compile: auto: compiling %s failed (%s: %s); it runs as written.",
                what,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            current[0] = fn
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]

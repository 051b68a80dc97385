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


def compile_wanted(mode: str) -> bool:
    """Whether ``runtime.compile`` asks for compilation here: ``dense`` always, ``auto`` where
    Triton is installed, ``off`` never (the caller also needs a GPU)."""
    return mode == "dense" or (mode == "auto" and triton_available())


def warn_fallback(what: str, err: Exception) -> None:
    """The warning of ``runtime.compile: auto`` when compiling ``what`` failed."""
    first = str(err).splitlines()[0] if str(err) else ""
    log.warning(
        "runtime.compile: auto: compiling %s failed (%s: %s); it runs as written. Set "
        "runtime.compile: off to skip the attempt.",
        what,
        type(err).__name__,
        first,
    )


def compiled(fn: F, what: str, fallback: bool) -> F:
    """``fn`` through ``torch.compile`` (static shapes: a new shape compiles anew).

    With ``fallback`` a call whose compilation fails logs a warning naming ``what`` and runs
    ``fn`` as written, as does every later call; without it the error propagates.
    """
    current = torch.compile(fn, dynamic=False, backend=BACKEND)

    def call(*args, **kwargs):
        nonlocal current
        try:
            return current(*args, **kwargs)
        except Exception as err:
            if not fallback or current is fn:
                raise
            warn_fallback(what, err)
            current = fn
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]

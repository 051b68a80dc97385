"""The project's parameters for a conf environment without Kedro (a bare GPU image has none)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def parameters(env: str | Sequence[str] = "base", overrides: str = "") -> dict:
    """conf/base merged key by key with conf/<env> (what the soft merge of settings.py does; with
    several environments, each over the ones before it), then dotted ``key=value`` overrides
    (values read as YAML)."""
    from benchmarks.peers.ours import apply_overrides

    out: dict = {}
    envs = [env] if isinstance(env, str) else list(env)
    for name in dict.fromkeys(["base", *envs]):
        _merge(out, yaml.safe_load((ROOT / "conf" / name / "parameters.yml").read_text()) or {})
    return apply_overrides(out, overrides)


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)

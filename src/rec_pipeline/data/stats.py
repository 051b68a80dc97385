"""Running counts of a split while it is encoded or sampled: labels, and per-field list lengths
and out-of-vocabulary ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FieldStats:
    values: int = 0
    oov: int = 0
    rows_present: int = 0
    max_len: int = 0

    def merge(self, other: FieldStats) -> None:
        self.values += other.values
        self.oov += other.oov
        self.rows_present += other.rows_present
        self.max_len = max(self.max_len, other.max_len)

    def as_dict(self, rows: int) -> dict:
        return {
            "values": self.values,
            "oov_values": self.oov,
            "oov_rate": self.oov / self.values if self.values else 0.0,
            "max_len": self.max_len,
            "mean_len": self.values / rows if rows else 0.0,
            "present_rate": self.rows_present / rows if rows else 0.0,
        }


@dataclass
class SplitStats:
    rows: int = 0
    clicks: int = 0
    conversions: int = 0
    fields: dict[str, FieldStats] = field(default_factory=dict)

    def add_labels(self, click: np.ndarray, conversion: np.ndarray) -> None:
        self.rows += len(click)
        self.clicks += int(click.sum())
        self.conversions += int(conversion.sum())

    def merge(self, other: SplitStats) -> None:
        """Add the counts of ``other`` (another chunk of the same split)."""
        self.rows += other.rows
        self.clicks += other.clicks
        self.conversions += other.conversions
        for name, st in other.fields.items():
            self.fields.setdefault(name, FieldStats()).merge(st)

    def as_dict(self) -> dict:
        out = {
            "rows": self.rows,
            "clicks": self.clicks,
            "conversions": self.conversions,
            "ctr": self.clicks / self.rows if self.rows else None,
            "cvr": self.conversions / self.clicks if self.clicks else None,
            "ctcvr": self.conversions / self.rows if self.rows else None,
        }
        out["fields"] = {k: v.as_dict(self.rows) for k, v in self.fields.items()}
        return out

"""Data-quality counts of a parse (:class:`ParseReport`) and the no-valid-row error."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import pyarrow as pa


class NoValidRowsError(ValueError):
    """A raw file is empty or holds no valid row."""

    def __init__(self, path: str | os.PathLike, report: ParseReport | None = None):
        self.path = str(path)
        self.report = report
        detail = ""
        if report is not None:
            if report.lines == 0:
                detail = " (the file is empty)"
            else:
                reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.counts.items()))
                detail = f" ({report.lines} lines, all rejected: {reasons})"
        super().__init__(f"no valid row in raw Ali-CCP file {self.path}{detail}")

    def __reduce__(self):
        return type(self), (self.path, self.report)


@dataclass
class ParseReport:
    """Data-quality counts for one file (or several, once merged)."""

    file: str
    kind: str
    lines: int = 0  # lines seen, blank ones included (they count as "empty_line")
    valid_rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # reason -> rejected lines
    unknown_fields: dict[str, int] = field(default_factory=dict)  # field -> ignored features
    features_kept: int = 0
    bytes_read: int = 0

    @property
    def rejected(self) -> int:
        return sum(self.counts.values())

    def add(self, other: ParseReport) -> ParseReport:
        """Add ``other``'s counts into this report, in place; returns ``self``."""
        self.lines += other.lines
        self.valid_rows += other.valid_rows
        self.features_kept += other.features_kept
        self.bytes_read += other.bytes_read
        for mine, theirs in (
            (self.counts, other.counts),
            (self.unknown_fields, other.unknown_fields),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        return self

    def merge(self, other: ParseReport) -> ParseReport:
        """A new report holding the sum of both (``file`` / ``kind`` kept if equal)."""
        out = ParseReport(
            file=self.file if self.file == other.file else f"{self.file}+{other.file}",
            kind=self.kind if self.kind == other.kind else f"{self.kind}+{other.kind}",
            counts=dict(self.counts),
            unknown_fields=dict(self.unknown_fields),
        )
        out.lines, out.valid_rows = self.lines, self.valid_rows
        out.features_kept, out.bytes_read = self.features_kept, self.bytes_read
        return out.add(other)

    def raise_if_no_rows(self) -> None:
        if self.valid_rows == 0:
            raise NoValidRowsError(self.file, self)

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "kind": self.kind,
            "lines": self.lines,
            "valid_rows": self.valid_rows,
            "rejected": self.rejected,
            "counts": dict(sorted(self.counts.items())),
            "unknown_fields": dict(sorted(self.unknown_fields.items())),
            "features_kept": self.features_kept,
            "bytes_read": self.bytes_read,
        }


class ParseResult(NamedTuple):
    report: ParseReport
    quarantine: pa.Table  # the first ``max_quarantine_rows`` quarantined lines

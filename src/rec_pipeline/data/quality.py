"""The data-quality report: every raw line and sample row accounted for, from parsing to
negative sampling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def data_quality_report(
    parse_report: Mapping[str, Any],
    encode_report: Mapping[str, Any],
    sampling_report: Mapping[str, Any],
) -> dict:
    """Lines parsed and rejected (by reason), rows that could not be joined to their common
    record (counted before sampling), rows per split, and what negative sampling kept."""
    files = parse_report["files"]
    totals: dict[str, int] = {}
    for rep in files.values():
        for reason, n in rep.get("counts", {}).items():
            totals[reason] = totals.get(reason, 0) + n
    rows = {s: v["rows"] for s, v in encode_report["splits"].items()}
    rows["train"] = sampling_report["kept"]["rows"]
    return {
        "parse": files,
        "rejected_lines_by_reason": totals,
        "encode": encode_report["files"],
        "duplicate_common_records": encode_report["duplicate_common_records"],
        "negative_sampling": {k: v for k, v in sampling_report.items() if k != "kept"},
        "rows": rows,
    }

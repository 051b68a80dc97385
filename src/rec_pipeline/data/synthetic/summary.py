"""What a run wrote and measured: per-split counts, rates, oracle AUCs and the world's shape."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SplitSummary:
    rows: int = 0
    common_records: int = 0
    clicks: int = 0
    conversions: int = 0
    ctr: float = 0.0
    cvr: float | None = None  # conversions / clicks
    ctcvr: float = 0.0  # conversions / rows
    mean_p_ctr: float = 0.0
    oracle_auc_ctr: float | None = None
    oracle_auc_cvr: float | None = None  # on clicked rows
    oracle_auc_ctcvr: float | None = None
    skeleton_features_per_row: float = 0.0
    common_features_per_record: float = 0.0
    bytes: dict[str, int] = field(default_factory=dict)
    users: int = 0  # distinct users of the split's common records
    items: int = 0  # distinct items of its impressions
    # mean ids per common record of each behaviour list (109_14 / 110_14 / 127_14 / 150_14)
    behaviour_list_mean: dict[str, float] = field(default_factory=dict)
    # test only (None for train): what the training split never shows, as a share of the
    # split's distinct users, its common records, its distinct items, its impressions
    unseen_user_share: float | None = None
    unseen_user_record_share: float | None = None
    unseen_item_share: float | None = None
    unseen_item_impression_share: float | None = None


@dataclass
class SyntheticSummary:
    fingerprint: str
    splits: dict[str, SplitSummary]
    ctr_intercept: float
    cvr_intercept: float
    ctr_logit_variance_shares: dict[str, float]
    cvr_logit_variance_shares: dict[str, float]
    ctr_cvr_logit_corr: float
    bytes_written: int
    seconds: float
    rows_per_second: float

    @property
    def rows(self) -> dict[str, int]:
        return {s: v.rows for s, v in self.splits.items()}

    @property
    def clicks(self) -> dict[str, int]:
        return {s: v.clicks for s, v in self.splits.items()}

    @property
    def conversions(self) -> dict[str, int]:
        return {s: v.conversions for s, v in self.splits.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = []
        for name, s in self.splits.items():
            auc = ", ".join(
                f"{t} {v:.4f}"
                for t, v in (
                    ("ctr", s.oracle_auc_ctr),
                    ("cvr", s.oracle_auc_cvr),
                    ("ctcvr", s.oracle_auc_ctcvr),
                )
                if v is not None
            )
            auc = auc or "n/a"
            parts.append(
                f"{name}: {s.rows} rows, {s.clicks} clicks, {s.conversions} conversions, "
                f"oracle AUC {auc}"
            )
        return (
            "; ".join(parts)
            + f"; {self.bytes_written / 1e6:.1f} MB in {self.seconds:.1f} s "
            + f"({self.rows_per_second:,.0f} rows/s)"
        )

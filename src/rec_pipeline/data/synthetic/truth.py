"""The planted truth's scale: term scales and intercepts calibrated on a pilot sample, and the
oracle AUCs of the true probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rec_pipeline.data.synthetic.blocks import (
    Block,
    affinity_thresholds,
    blocks,
    saturating_affinity,
)
from rec_pipeline.data.synthetic.params import PILOT_COMMONS, PILOT_ROWS, SyntheticConfig
from rec_pipeline.data.synthetic.sampling import sigmoid
from rec_pipeline.data.synthetic.world import World

# Bins of the histograms the oracle AUCs are computed from (error well below 1e-4).
_AUC_BINS = 1 << 20
# Part of such a histogram: (distinct bins, positives in each, negatives in each).
SparseHistogram = tuple[np.ndarray, np.ndarray, np.ndarray]


# Target standard deviation of each logit term (before ``interaction_scale``); the pilot sample
# measures each raw term and scales it to its target, so the variance shares hold for any config.
_CTR_TERM_STD = {
    "item": 0.45,
    "category": 0.35,
    "position": 0.3,
    "profile": 0.25,
    "user_x_item": 0.6,
    "age_x_category": 0.45,
    "affinity": 0.5,
}


_INTERACTION_TERMS = ("user_x_item", "age_x_category", "affinity")


# CVR: 0.5 x these CTR terms are shared, plus the CVR's own terms.
_CVR_SHARED = ("item", "user_x_item", "affinity")


_CVR_TERM_STD = {"item_quality": 0.5, "consumption_x_category": 0.55, "consumption_ii": 0.2}


@dataclass
class Calibration:
    ctr_scale: dict[str, float]
    cvr_scale: dict[str, float]
    ctr_intercept: float = 0.0
    cvr_intercept: float = 0.0
    ctr_shares: dict[str, float] = field(default_factory=dict)
    cvr_shares: dict[str, float] = field(default_factory=dict)
    corr: float = 0.0

    def ctr_terms(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: self.ctr_scale[k] * v for k, v in raw.items()}

    def cvr_terms(
        self, raw: dict[str, np.ndarray], ctr_terms: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        shared = 0.5 * sum(ctr_terms[k] for k in _CVR_SHARED)
        own = {k: self.cvr_scale[k] * v for k, v in raw.items()}
        return {"shared_with_ctr": shared, **own}

    def logits(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        terms = self.ctr_terms(block.terms)
        z_ctr = self.ctr_intercept + sum(terms.values())
        z_cvr = self.cvr_intercept + sum(self.cvr_terms(block.cvr_terms, terms).values())
        return z_ctr, z_cvr


def _bisect(f, lo: float = -40.0, hi: float = 40.0, iters: int = 80) -> float:
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _scale_to(raw: np.ndarray, target: float) -> float:
    sd = float(raw.std())
    return target / sd if sd > 1e-12 else 0.0


def calibrate(config: SyntheticConfig, world: World) -> Calibration:
    """Term scales and intercepts from a pilot sample drawn from the same process.

    The pilot is drawn like the training period. For the saturating affinity it also sets the
    per-entity thresholds (``world.affinity.threshold``) from its cross fields' counts.
    """
    n_rows = min(PILOT_ROWS, max(20_000, int(PILOT_COMMONS * config.impressions_per_common)))
    pilot = [b for _, b, _ in blocks(config, world, 2, n_rows)]
    if world.affinity is not None:
        world.affinity.threshold = affinity_thresholds(world, pilot)
        for b in pilot:
            b.terms["affinity"] = saturating_affinity(world, b)
    raw = {k: np.concatenate([b.terms[k] for b in pilot]) for k in pilot[0].terms}
    raw_cvr = {k: np.concatenate([b.cvr_terms[k] for b in pilot]) for k in pilot[0].cvr_terms}
    target = {
        k: v * (config.interaction_scale if k in _INTERACTION_TERMS else 1.0)
        for k, v in _CTR_TERM_STD.items()
    }
    calib = Calibration(
        ctr_scale={k: _scale_to(v, target[k]) for k, v in raw.items()},
        cvr_scale={k: _scale_to(v, _CVR_TERM_STD[k]) for k, v in raw_cvr.items()},
    )
    terms = calib.ctr_terms(raw)
    cvr_terms = calib.cvr_terms(raw_cvr, terms)
    z, zc = sum(terms.values()), sum(cvr_terms.values())
    calib.ctr_intercept = _bisect(lambda b: sigmoid(b + z).mean() - config.ctr_rate)
    p = sigmoid(calib.ctr_intercept + z)
    calib.cvr_intercept = _bisect(lambda c: (p * sigmoid(c + zc)).sum() / p.sum() - config.cvr_rate)
    var, varc = z.var(), zc.var()
    calib.ctr_shares = {k: round(float(v.var() / var), 4) for k, v in terms.items()}
    calib.cvr_shares = {k: round(float(v.var() / varc), 4) for k, v in cvr_terms.items()}
    calib.corr = round(float(np.corrcoef(z, zc)[0, 1]), 4)
    return calib


def sparse_histogram(score: np.ndarray, label: np.ndarray, lo: float, hi: float) -> SparseHistogram:
    """The histogram of ``score`` over [lo, hi] (positives, negatives) on the bins it touches
    only: small enough to travel from a worker process, exact to add in any order."""
    scaled = (score - lo) * (_AUC_BINS / (hi - lo))
    b = np.clip(scaled, 0, _AUC_BINS - 1).astype(np.int64)
    bins, inverse = np.unique(b, return_inverse=True)
    label = label.astype(bool)
    pos = np.bincount(inverse[label], minlength=len(bins))
    neg = np.bincount(inverse[~label], minlength=len(bins))
    return bins, pos, neg


class AucHistogram:
    """Exact-enough AUC of a score against a 0/1 label from fine histograms of the score."""

    def __init__(self) -> None:
        self.pos = np.zeros(_AUC_BINS, dtype=np.int64)
        self.neg = np.zeros(_AUC_BINS, dtype=np.int64)

    def add(self, counts: SparseHistogram) -> None:
        bins, pos, neg = counts  # distinct bins: fancy-index addition is exact
        self.pos[bins] += pos
        self.neg[bins] += neg

    def auc(self) -> float | None:
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(self.neg) - self.neg
        wins = (self.pos * (below + 0.5 * self.neg)).sum()
        return float(wins / (n_pos * n_neg))

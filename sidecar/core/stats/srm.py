"""Sample-ratio-mismatch (SRM) check of arm counts against weights, and the arm x segment
mix check.

Weights are the router's configured traffic split in basis points: non-negative integers that
sum to exactly 10,000. Expected counts are ``total * weight / 10000``; the statistic is
Pearson's ``sum((observed - expected)^2 / expected)`` over arms with a positive weight, with
``k - 1`` degrees of freedom (``k`` = number of such arms). This equals scipy
``chisquare(observed, expected)`` and is reported as ``statistic``.

The decision uses an *exact* p-value, because the chi-square approximation is poor when an
arm expects few counts (at a 95/5 split and n = 109 the chi-square check fires in 0.32% of
checks instead of 0.1%). Two arms: the exact two-sided binomial test of the first arm's
count (``scipy.stats.binomtest(k, n, p).pvalue``, the "minimum likelihood" two-sided
p-value: the probability of every count no more likely than the observed one). More than
two arms: each arm against the rest by the same exact test, Bonferroni-adjusted
(``min(1, k * min p)``). Both are exact-or-conservative: the false-alarm rate of one check
is at most ``threshold`` at every n (``tests/unit/stats/test_stats_srm.py`` computes it from
the binomial for n = 100..3000 at 95/5).

An arm with weight 0 that received traffic is a routing fault that no sampling noise can
explain: the result then has ``statistic = inf``, ``p_value = 0`` and ``mismatch = True``.
Arms with weight 0 and no traffic are ignored.

The default threshold is ``p < 0.001``: SRM checks run continuously on every experiment, so a
strict threshold keeps false alarms rare while real routing bugs (which produce tiny p-values
with realistic traffic) are still caught.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsIndex

import numpy as np
import numpy.typing as npt

from ._validation import as_index_counts, check_probability_level
from .lazy import lazy

if TYPE_CHECKING:
    from scipy import special, stats
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    special = lazy("scipy.special")
    stats = lazy("scipy.stats")


__all__ = [
    "BASIS_POINTS_TOTAL",
    "DEFAULT_SRM_THRESHOLD",
    "MixResult",
    "SrmResult",
    "binomial_two_sided_p",
    "is_sample_ratio_mismatch",
    "segment_mix_test",
    "srm_test",
]

BASIS_POINTS_TOTAL = 10_000
DEFAULT_SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Outcome of :func:`srm_test`."""

    statistic: float
    p_value: float
    degrees_of_freedom: int
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    threshold: float
    mismatch: bool
    method: str = "exact binomial"


def binomial_two_sided_p(successes: int, n: int, p: float) -> float:
    """Exact two-sided binomial p-value (``scipy.stats.binomtest(...).pvalue``)."""
    if n <= 0:
        return 1.0
    return float(stats.binomtest(int(successes), int(n), float(p)).pvalue)


def _exact_p(counts: npt.NDArray[np.int64], weights: npt.NDArray[np.int64]) -> tuple[float, str]:
    """The exact (or Bonferroni-exact) p-value over the arms with a positive weight."""
    positive = weights > 0
    obs = counts[positive]
    shares = weights[positive].astype(np.float64) / float(weights[positive].sum())
    total = int(obs.sum())
    if obs.size == 2:
        return binomial_two_sided_p(int(obs[0]), total, float(shares[0])), "exact binomial"
    smallest = min(
        binomial_two_sided_p(int(o), total, float(q)) for o, q in zip(obs, shares, strict=True)
    )
    return min(1.0, obs.size * smallest), "exact binomial per arm, Bonferroni"


def _check_weights(weights_bp: Sequence[SupportsIndex], n_arms: int) -> npt.NDArray[np.int64]:
    weights = as_index_counts(weights_bp, "weights_bp")
    if weights.size != n_arms:
        raise ValueError(
            f"weights_bp has {weights.size} entries but observed has {n_arms}; "
            "give one weight per arm"
        )
    total = int(weights.sum())
    if total != BASIS_POINTS_TOTAL:
        raise ValueError(f"weights_bp must sum to {BASIS_POINTS_TOTAL} basis points; got {total}")
    if int(np.count_nonzero(weights)) < 2:
        raise ValueError("at least two arms need a positive weight for an SRM test")
    return weights


def srm_test(
    observed: Sequence[SupportsIndex],
    weights_bp: Sequence[SupportsIndex],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SrmResult:
    """Exact test of observed arm counts against the configured split (module doc); the
    chi-square statistic is reported alongside."""
    counts = as_index_counts(observed, "observed")
    weights = _check_weights(weights_bp, counts.size)
    threshold = check_probability_level(threshold, "threshold")
    total = int(counts.sum())
    if total == 0:
        raise ValueError("observed counts are all zero; nothing to test")
    expected = total * weights.astype(np.float64) / BASIS_POINTS_TOTAL
    positive = weights > 0
    df = int(np.count_nonzero(positive)) - 1
    observed_t = tuple(int(c) for c in counts)
    expected_t = tuple(float(e) for e in expected)
    if np.any(counts[~positive] > 0):
        return SrmResult(math.inf, 0.0, df, observed_t, expected_t, threshold, True)
    obs = counts[positive].astype(np.float64)
    exp = expected[positive]
    statistic = float(np.sum((obs - exp) ** 2 / exp))
    p_value, method = _exact_p(counts, weights)
    return SrmResult(
        statistic, p_value, df, observed_t, expected_t, threshold, p_value < threshold, method
    )


def is_sample_ratio_mismatch(
    observed: Sequence[SupportsIndex],
    weights_bp: Sequence[SupportsIndex],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> bool:
    """True when the SRM p-value is below ``threshold`` (default 0.001)."""
    return srm_test(observed, weights_bp, threshold).mismatch


@dataclass(frozen=True, slots=True)
class MixResult:
    """Arm x segment independence (:func:`segment_mix_test`)."""

    statistic: float
    p_value: float
    degrees_of_freedom: int
    min_expected: float
    checked: bool  # False when too few counts for the approximation (p-value 1.0 then)


MIX_MIN_EXPECTED = 5.0


def segment_mix_test(table: Sequence[Sequence[SupportsIndex]]) -> MixResult:
    """Pearson chi-square test of independence of arm (rows) and segment (columns).

    Equals ``scipy.stats.chi2_contingency(table, correction=False)`` on the rows and
    columns with a positive total. A randomised split gives every segment the same arm
    shares, so a small p-value means the segment mix differs between arms (a routing or
    logging fault, or a segment rule), which confounds the aggregate comparison (Simpson).
    Not checked (p = 1.0, ``checked`` False) when fewer than two rows or columns have
    counts, or an expected count is below 5 (the approximation's usual rule).
    """
    rows = [as_index_counts(list(r), "table") for r in table]
    if not rows:
        return MixResult(0.0, 1.0, 0, 0.0, False)
    width = {r.size for r in rows}
    if len(width) != 1:
        raise ValueError("table: every row needs one count per segment")
    t = np.vstack(rows).astype(np.float64)
    t = t[t.sum(axis=1) > 0]
    if t.size:
        t = t[:, t.sum(axis=0) > 0]
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 2:
        return MixResult(0.0, 1.0, 0, 0.0, False)
    total = t.sum()
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / total
    df = (t.shape[0] - 1) * (t.shape[1] - 1)
    low = float(expected.min())
    statistic = float(np.sum((t - expected) ** 2 / expected))
    if low < MIX_MIN_EXPECTED:
        return MixResult(statistic, 1.0, df, low, False)
    return MixResult(statistic, float(special.chdtrc(df, statistic)), df, low, True)

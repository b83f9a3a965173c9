"""Two-sample tests for numeric metrics and latency: Welch's t-test and Mann-Whitney U.

Orientation: the control sample (A) comes first and the treatment sample (B) second; the
Welch statistic and mean difference are ``B - A`` and the Mann-Whitney ``U`` is the
treatment's (the number of (b, a) pairs with ``b > a``, ties counted one half).

* Welch: ``t = (mean_B - mean_A) / sqrt(var_B/n_B + var_A/n_A)`` with sample variances
  (``ddof = 1``) and Welch-Satterthwaite degrees of freedom; two-sided p-value from Student's
  t. Identical to scipy ``ttest_ind(b, a, equal_var=False)`` and ``ttest_ind_from_stats``.
  :func:`welch_t_test_from_stats` runs it from counters (mean, variance, n).
* Mann-Whitney: two-sided, same method choice as scipy's default ``method="auto"``: the
  exact null distribution when one sample has at most 8 observations and there are no ties,
  otherwise the normal approximation with tie-corrected variance and continuity correction
  (scipy's ``use_continuity=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex

import numpy as np
import numpy.typing as npt

from ._validation import as_sample, check_alpha, check_count, check_finite
from .intervals import Interval
from .lazy import lazy

if TYPE_CHECKING:
    from scipy import special, stats
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    special, stats = lazy("scipy.special"), lazy("scipy.stats")


__all__ = [
    "MannWhitneyResult",
    "SampleSummary",
    "WelchResult",
    "mann_whitney_u",
    "welch_t_test",
    "welch_t_test_from_stats",
]

MannWhitneyMethod = Literal["auto", "exact", "asymptotic"]

_EXACT_MAX_SMALLER_SAMPLE = 8


@dataclass(frozen=True, slots=True)
class SampleSummary:
    """Mean, unbiased variance (``ddof = 1``) and size of one sample."""

    mean: float
    variance: float
    n: int

    @classmethod
    def from_sample(cls, values: npt.ArrayLike) -> SampleSummary:
        """Summarise raw observations (at least two)."""
        arr = as_sample(values, "values", 2)
        return cls(float(np.mean(arr)), float(np.var(arr, ddof=1)), int(arr.size))

    @classmethod
    def from_sums(cls, n: SupportsIndex, total: float, total_of_squares: float) -> SampleSummary:
        """Summarise from counters ``n``, ``sum(x)`` and ``sum(x**2)``.

        Convenient for a sidecar that only keeps running sums. The textbook formula loses
        precision when the mean is large relative to the spread; a negative result from
        rounding is clamped to zero.
        """
        count = check_count(n, "n")
        if count < 2:
            raise ValueError(f"n must be at least 2 to estimate a variance; got {count}")
        s = check_finite(total, "total")
        ss = check_finite(total_of_squares, "total_of_squares")
        mean = s / count
        variance = max(0.0, (ss - s * s / count) / (count - 1))
        return cls(mean, variance, count)


@dataclass(frozen=True, slots=True)
class WelchResult:
    """Welch's unequal-variance t-test of ``mean_B - mean_A``."""

    statistic: float
    p_value: float
    degrees_of_freedom: float
    mean_control: float
    mean_treatment: float
    difference: float
    standard_error: float
    difference_interval: Interval


def welch_t_test_from_stats(
    mean_control: float,
    variance_control: float,
    n_control: SupportsIndex,
    mean_treatment: float,
    variance_treatment: float,
    n_treatment: SupportsIndex,
    alpha: float = 0.05,
) -> WelchResult:
    """Welch's t-test from summary statistics (variances use ``ddof = 1``).

    When both variances are zero the standard error is zero: the statistic is then
    ``+-inf`` with ``p = 0`` if the means differ and ``0`` with ``p = 1`` if they are equal
    (scipy returns NaN for the latter), and the degrees of freedom are ``n_A + n_B - 2``.
    """
    alpha = check_alpha(alpha)
    m_c = check_finite(mean_control, "mean_control")
    m_t = check_finite(mean_treatment, "mean_treatment")
    v_c = check_finite(variance_control, "variance_control")
    v_t = check_finite(variance_treatment, "variance_treatment")
    n_c = check_count(n_control, "n_control")
    n_t = check_count(n_treatment, "n_treatment")
    for name, n in (("n_control", n_c), ("n_treatment", n_t)):
        if n < 2:
            raise ValueError(f"{name} must be at least 2 for Welch's t-test; got {n}")
    for name, v in (("variance_control", v_c), ("variance_treatment", v_t)):
        if v < 0.0:
            raise ValueError(f"{name} must be non-negative; got {v}")
    vn_t = v_t / n_t
    vn_c = v_c / n_c
    diff = m_t - m_c
    se = math.sqrt(vn_t + vn_c)
    confidence = 1.0 - alpha
    if se == 0.0:
        df = float(n_c + n_t - 2)
        if diff == 0.0:
            stat, p = 0.0, 1.0
        else:
            stat, p = math.copysign(math.inf, diff), 0.0
        return WelchResult(
            stat, p, df, m_c, m_t, diff, 0.0, Interval(diff, diff, confidence, "welch")
        )
    df = (vn_t + vn_c) ** 2 / (vn_t**2 / (n_t - 1) + vn_c**2 / (n_c - 1))
    stat = diff / se
    p = float(min(1.0, 2.0 * special.stdtr(df, -abs(stat))))
    half = float(special.stdtrit(df, 1.0 - alpha / 2.0)) * se
    interval = Interval(diff - half, diff + half, confidence, "welch")
    return WelchResult(stat, p, df, m_c, m_t, diff, se, interval)


def welch_t_test(
    control: npt.ArrayLike, treatment: npt.ArrayLike, alpha: float = 0.05
) -> WelchResult:
    """Welch's t-test on raw observations (each sample needs at least two values)."""
    a = SampleSummary.from_sample(as_sample(control, "control", 2))
    b = SampleSummary.from_sample(as_sample(treatment, "treatment", 2))
    return welch_t_test_from_stats(a.mean, a.variance, a.n, b.mean, b.variance, b.n, alpha)


@dataclass(frozen=True, slots=True)
class MannWhitneyResult:
    """Two-sided Mann-Whitney U test; ``statistic`` is the treatment's U.

    ``probability_superiority = U / (n_A n_B)`` estimates ``P(B > A) + P(B = A) / 2``;
    ``z`` is NaN when the exact method was used.
    """

    statistic: float
    p_value: float
    method: str
    z: float
    probability_superiority: float


def _gaussian_binomial_counts(m: int, n: int) -> npt.NDArray[np.float64]:
    """Number of arrangements giving each U = 0..m*n, i.e. coefficients of [m+n choose m]_q.

    Built as prod_{j=1..m} (1 - q^(n+j)) / (1 - q^j); division by (1 - q^j) is a running
    sum with stride j. Integer arithmetic is used while the total fits in int64.
    """
    size = m * n + 1
    exact = math.comb(m + n, m) < 2**62
    coeffs: npt.NDArray[Any] = np.zeros(size, dtype=np.int64 if exact else np.float64)
    coeffs[0] = 1
    for j in range(1, m + 1):
        shift = n + j
        if shift < size:
            shifted = coeffs[: size - shift].copy()
            coeffs[shift:] -= shifted
        for r in range(j):
            coeffs[r::j] = np.cumsum(coeffs[r::j])
    return coeffs.astype(np.float64)


def _exact_two_sided_p(u_max: int, m: int, n: int) -> float:
    counts = _gaussian_binomial_counts(min(m, n), max(m, n))
    total = float(math.comb(m + n, m))
    sf = float(np.sum(counts[u_max:])) / total
    return min(1.0, 2.0 * sf)


def mann_whitney_u(
    control: npt.ArrayLike,
    treatment: npt.ArrayLike,
    method: MannWhitneyMethod = "auto",
) -> MannWhitneyResult:
    """Two-sided Mann-Whitney U test of treatment against control.

    ``method="auto"`` picks ``"exact"`` when the smaller sample has at most 8 values and
    there are no ties, else ``"asymptotic"`` (scipy's rule). ``"exact"`` with ties raises.
    """
    a = as_sample(control, "control", 1)
    b = as_sample(treatment, "treatment", 1)
    n_t, n_c = b.size, a.size
    combined = np.concatenate([b, a])
    ranks = np.asarray(stats.rankdata(combined), dtype=np.float64)
    rank_sum_t = float(np.sum(ranks[:n_t]))
    u_t = rank_sum_t - n_t * (n_t + 1) / 2.0
    u_c = n_t * n_c - u_t
    u_max = max(u_t, u_c)
    _, tie_counts = np.unique(combined, return_counts=True)
    has_ties = bool(np.any(tie_counts > 1))
    if method == "auto":
        small = n_t <= _EXACT_MAX_SMALLER_SAMPLE or n_c <= _EXACT_MAX_SMALLER_SAMPLE
        chosen = "exact" if small and not has_ties else "asymptotic"
    elif method in ("exact", "asymptotic"):
        chosen = method
        if method == "exact" and has_ties:
            raise ValueError("the exact Mann-Whitney method requires samples without ties")
    else:
        raise ValueError(f"method must be 'auto', 'exact' or 'asymptotic'; got {method!r}")
    superiority = u_t / (n_t * n_c)
    if chosen == "exact":
        p = _exact_two_sided_p(round(u_max), n_t, n_c)
        return MannWhitneyResult(u_t, p, "exact", math.nan, superiority)
    n = n_t + n_c
    t = tie_counts.astype(np.float64)
    tie_term = float(np.sum(t**3 - t))
    variance = n_t * n_c / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0.0:
        # Every observation is identical: no evidence of a difference.
        return MannWhitneyResult(u_t, 1.0, "asymptotic", 0.0, superiority)
    z = (u_max - n_t * n_c / 2.0 - 0.5) / math.sqrt(variance)
    p = float(min(1.0, max(0.0, 2.0 * special.ndtr(-z))))
    return MannWhitneyResult(u_t, p, "asymptotic", z, superiority)

"""Tests and intervals for conversion rates (binary metrics).

Conventions (see ``docs/statistics.md``):

* Every two-arm function takes the control arm (A) first and the treatment arm (B) second,
  and every effect is oriented *treatment minus control* (or treatment over control), so a
  positive difference means B converts more.
* :func:`two_proportion_ztest` is the pooled two-sided z-test; it equals statsmodels
  ``proportions_ztest([successes_treatment, successes_control], [n_treatment, n_control])``.
* :func:`wilson_interval` is the Wilson score interval (statsmodels ``method="wilson"``).
* :func:`difference_interval` defaults to Newcombe's hybrid score interval (statsmodels
  ``confint_proportions_2indep(compare="diff", method="newcomb")``); the unpooled Wald interval
  is available as ``method="wald"``.
* :func:`ratio_interval` is the log interval with 0.5 added to every count and every sample
  size (statsmodels ``compare="ratio", method="log-adjusted"``), so it stays finite when an arm
  has zero successes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, SupportsIndex

from ._validation import check_alpha, check_trials
from .intervals import Interval
from .lazy import lazy

if TYPE_CHECKING:
    from scipy import special
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    special = lazy("scipy.special")


__all__ = [
    "ProportionComparison",
    "ZTestResult",
    "compare_proportions",
    "difference_interval",
    "ratio_interval",
    "two_proportion_ztest",
    "wilson_interval",
]

DifferenceMethod = Literal["newcombe", "wald"]


def _z_critical(alpha: float) -> float:
    """Upper ``alpha / 2`` quantile of the standard normal."""
    return float(-special.ndtri(alpha / 2.0))


def _two_sided_normal_p(z: float) -> float:
    return float(min(1.0, 2.0 * special.ndtr(-abs(z))))


@dataclass(frozen=True, slots=True)
class ZTestResult:
    """Pooled two-proportion z-test (treatment minus control)."""

    statistic: float
    p_value: float
    rate_control: float
    rate_treatment: float
    pooled_rate: float
    standard_error: float


def two_proportion_ztest(
    successes_control: SupportsIndex,
    n_control: SupportsIndex,
    successes_treatment: SupportsIndex,
    n_treatment: SupportsIndex,
) -> ZTestResult:
    """Two-sided pooled z-test of equal conversion rates.

    ``z = (p_B - p_A) / sqrt(p (1 - p) (1/n_A + 1/n_B))`` with ``p`` the pooled rate.
    When the pooled rate is 0 or 1 (no successes or no failures anywhere) the standard error
    is zero; statsmodels returns NaN there, this function returns ``z = 0`` and ``p = 1``
    because the data carry no evidence of a difference.
    """
    sc, nc = check_trials(successes_control, n_control, "control")
    st, nt = check_trials(successes_treatment, n_treatment, "treatment")
    rate_c = sc / nc
    rate_t = st / nt
    pooled = (sc + st) * 1.0 / (nc + nt)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nc))
    if se == 0.0:
        return ZTestResult(0.0, 1.0, rate_c, rate_t, pooled, 0.0)
    z = (rate_t - rate_c) / se
    return ZTestResult(z, _two_sided_normal_p(z), rate_c, rate_t, pooled, se)


def wilson_interval(successes: SupportsIndex, n: SupportsIndex, alpha: float = 0.05) -> Interval:
    """Wilson score interval for one proportion, clipped to [0, 1]."""
    s, t = check_trials(successes, n, "arm")
    alpha = check_alpha(alpha)
    q = s / t
    crit = _z_critical(alpha)
    crit2 = crit * crit
    denom = 1.0 + crit2 / t
    center = (q + crit2 / (2.0 * t)) / denom
    dist = crit * math.sqrt(q * (1.0 - q) / t + crit2 / (4.0 * t * t)) / denom
    lower = min(1.0, max(0.0, center - dist))
    upper = min(1.0, max(0.0, center + dist))
    return Interval(lower, upper, 1.0 - alpha, "wilson")


def difference_interval(
    successes_control: SupportsIndex,
    n_control: SupportsIndex,
    successes_treatment: SupportsIndex,
    n_treatment: SupportsIndex,
    alpha: float = 0.05,
    method: DifferenceMethod = "newcombe",
) -> Interval:
    """Interval for ``p_B - p_A``.

    ``"newcombe"`` (default): Newcombe's hybrid score interval built from the two Wilson
    intervals (Newcombe 1998, method 10). ``"wald"``: unpooled Wald interval
    ``d +- z sqrt(p_A(1-p_A)/n_A + p_B(1-p_B)/n_B)``.
    """
    sc, nc = check_trials(successes_control, n_control, "control")
    st, nt = check_trials(successes_treatment, n_treatment, "treatment")
    alpha = check_alpha(alpha)
    pc = sc / nc
    pt = st / nt
    diff = pt - pc
    if method == "newcombe":
        wt = wilson_interval(st, nt, alpha)
        wc = wilson_interval(sc, nc, alpha)
        d_low = math.sqrt((pt - wt.lower) ** 2 + (wc.upper - pc) ** 2)
        d_upp = math.sqrt((pc - wc.lower) ** 2 + (wt.upper - pt) ** 2)
        return Interval(diff - d_low, diff + d_upp, 1.0 - alpha, "newcombe")
    if method == "wald":
        half = _z_critical(alpha) * math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
        return Interval(diff - half, diff + half, 1.0 - alpha, "wald")
    raise ValueError(f"method must be 'newcombe' or 'wald'; got {method!r}")


def ratio_interval(
    successes_control: SupportsIndex,
    n_control: SupportsIndex,
    successes_treatment: SupportsIndex,
    n_treatment: SupportsIndex,
    alpha: float = 0.05,
) -> Interval:
    """Interval for the rate ratio ``p_B / p_A`` (log method, counts and sizes + 0.5).

    ``log(r') +- z sqrt(1/x_B' - 1/n_B' + 1/x_A' - 1/n_A')`` with ``x' = x + 0.5``,
    ``n' = n + 0.5`` and ``r' = (x_B'/n_B') / (x_A'/n_A')``, exponentiated.
    Subtract 1 from both bounds for an interval on the relative lift.
    """
    sc, nc = check_trials(successes_control, n_control, "control")
    st, nt = check_trials(successes_treatment, n_treatment, "treatment")
    alpha = check_alpha(alpha)
    xt, ntt = st + 0.5, nt + 0.5
    xc, ncc = sc + 0.5, nc + 0.5
    log_ratio = math.log((xt / ntt) / (xc / ncc))
    half = _z_critical(alpha) * math.sqrt(1.0 / xt - 1.0 / ntt + 1.0 / xc - 1.0 / ncc)
    return Interval(
        math.exp(log_ratio - half), math.exp(log_ratio + half), 1.0 - alpha, "log-adjusted"
    )


@dataclass(frozen=True, slots=True)
class ProportionComparison:
    """Everything the rollout report needs about a binary metric in two arms.

    ``ratio`` is ``p_B / p_A`` (``inf`` if only the control rate is zero, ``nan`` if both
    are); ``relative_lift`` is ``ratio - 1`` and its interval is ``ratio_interval - 1``.
    """

    rate_control: float
    rate_treatment: float
    rate_control_interval: Interval
    rate_treatment_interval: Interval
    difference: float
    difference_interval: Interval
    ratio: float
    ratio_interval: Interval
    relative_lift: float
    relative_lift_interval: Interval
    z_test: ZTestResult


def compare_proportions(
    successes_control: SupportsIndex,
    n_control: SupportsIndex,
    successes_treatment: SupportsIndex,
    n_treatment: SupportsIndex,
    alpha: float = 0.05,
    difference_method: DifferenceMethod = "newcombe",
) -> ProportionComparison:
    """Rates, Wilson intervals, difference, ratio/lift with intervals, and the z-test."""
    sc, nc = check_trials(successes_control, n_control, "control")
    st, nt = check_trials(successes_treatment, n_treatment, "treatment")
    alpha = check_alpha(alpha)
    pc, pt = sc / nc, st / nt
    ratio = pt / pc if pc > 0.0 else (math.inf if pt > 0.0 else math.nan)
    r_int = ratio_interval(sc, nc, st, nt, alpha)
    lift_int = Interval(r_int.lower - 1.0, r_int.upper - 1.0, r_int.confidence, r_int.method)
    return ProportionComparison(
        rate_control=pc,
        rate_treatment=pt,
        rate_control_interval=wilson_interval(sc, nc, alpha),
        rate_treatment_interval=wilson_interval(st, nt, alpha),
        difference=pt - pc,
        difference_interval=difference_interval(sc, nc, st, nt, alpha, difference_method),
        ratio=ratio,
        ratio_interval=r_int,
        relative_lift=ratio - 1.0,
        relative_lift_interval=lift_int,
        z_test=two_proportion_ztest(sc, nc, st, nt),
    )

"""Fixed-horizon sample size for a two-arm conversion test (Cohen's h, two-sided).

The power of the two-sided z-test on the arcsine scale with ``n`` users per arm is

    power(n) = Phi(|h| sqrt(n / 2) - z) + Phi(-|h| sqrt(n / 2) - z),   z = Phi^-1(1 - alpha / 2)

with Cohen's ``h = 2 asin(sqrt(p_B)) - 2 asin(sqrt(p_A))``. This is exactly statsmodels'
``NormalIndPower().power(h, nobs1=n, alpha, ratio=1, alternative="two-sided")``;
:func:`sample_size_per_arm` solves ``power(n) = target`` to machine precision and rounds up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._validation import check_alpha, check_probability_level, check_rates
from .lazy import lazy

if TYPE_CHECKING:
    from scipy import optimize, special
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    optimize, special = lazy("scipy.optimize"), lazy("scipy.special")


__all__ = [
    "SampleSize",
    "cohens_h",
    "power_per_arm",
    "sample_size_per_arm",
    "sample_size_split",
]


def cohens_h(rate_control: float, rate_treatment: float) -> float:
    """Cohen's h, ``2 asin(sqrt(p_B)) - 2 asin(sqrt(p_A))``.

    Equals statsmodels ``proportion_effectsize(rate_treatment, rate_control)``.
    """
    for name, p in (("rate_control", rate_control), ("rate_treatment", rate_treatment)):
        if not (0.0 <= float(p) <= 1.0):
            raise ValueError(f"{name} must be in [0, 1]; got {p!r}")
    return 2.0 * math.asin(math.sqrt(rate_treatment)) - 2.0 * math.asin(math.sqrt(rate_control))


def _power(h_abs: float, n: float, crit: float) -> float:
    shift = h_abs * math.sqrt(n / 2.0)
    return float(special.ndtr(shift - crit) + special.ndtr(-shift - crit))


def power_per_arm(
    n_per_arm: float, baseline: float, minimum_effect: float, alpha: float = 0.05
) -> float:
    """Power of the two-sided fixed-horizon test with ``n_per_arm`` users in each arm."""
    p1, p2 = check_rates(baseline, minimum_effect)
    alpha = check_alpha(alpha)
    if not n_per_arm > 0:
        raise ValueError(f"n_per_arm must be positive; got {n_per_arm!r}")
    return _power(abs(cohens_h(p1, p2)), float(n_per_arm), float(-special.ndtri(alpha / 2)))


@dataclass(frozen=True, slots=True)
class SampleSize:
    """Result of :func:`sample_size_per_arm`; ``n_per_arm = ceil(exact_n_per_arm)``."""

    n_per_arm: int
    exact_n_per_arm: float
    cohens_h: float
    baseline: float
    treatment_rate: float
    alpha: float
    power: float
    achieved_power: float


def sample_size_per_arm(
    baseline: float, minimum_effect: float, alpha: float = 0.05, power: float = 0.8
) -> SampleSize:
    """Users per arm for a two-sided test of ``baseline`` vs ``baseline + minimum_effect``.

    ``minimum_effect`` is absolute (0.01 means one percentage point) and may be negative.
    Raises ValueError unless ``0 < alpha < power < 1`` and both rates lie in (0, 1).
    """
    p1, p2 = check_rates(baseline, minimum_effect)
    alpha = check_alpha(alpha)
    power = check_probability_level(power, "power")
    if power <= alpha:
        raise ValueError(f"power ({power}) must exceed alpha ({alpha})")
    h = cohens_h(p1, p2)
    h_abs = abs(h)
    crit = float(-special.ndtri(alpha / 2.0))
    z_power = float(special.ndtri(power))
    # One-tail closed form; the second tail only adds power, so the root lies below it.
    upper = 2.0 * ((crit + z_power) / h_abs) ** 2
    hi = upper * 1.01 + 1.0

    def excess(n: float) -> float:
        return _power(h_abs, n, crit) - power

    exact = float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-15, maxiter=500))
    n = max(1, math.ceil(exact))
    return SampleSize(
        n_per_arm=n,
        exact_n_per_arm=exact,
        cohens_h=h,
        baseline=p1,
        treatment_rate=p2,
        alpha=alpha,
        power=power,
        achieved_power=_power(h_abs, float(n), crit),
    )


def _power_split(h_abs: float, n1: float, ratio: float, crit: float) -> float:
    shift = h_abs * math.sqrt(n1 / (1.0 + 1.0 / ratio))
    return float(special.ndtr(shift - crit) + special.ndtr(-shift - crit))


def sample_size_split(
    baseline: float,
    minimum_effect: float,
    ratio: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> tuple[float, float]:
    """(control, treatment) users for an unequal split, ``treatment = ratio * control``.

    The fixed-horizon two-sided test on the arcsine scale, exactly statsmodels'
    ``NormalIndPower().solve_power(h, nobs1=None, alpha, power, ratio)`` (its ``nobs1`` is
    the control here); not rounded. ``ratio = 1`` gives :func:`sample_size_per_arm`'s
    exact value in each arm.
    """
    p1, p2 = check_rates(baseline, minimum_effect)
    alpha = check_alpha(alpha)
    power = check_probability_level(power, "power")
    r = float(ratio)
    if not (math.isfinite(r) and r > 0.0):
        raise ValueError(f"ratio must be a positive finite number; got {ratio!r}")
    if power <= alpha:
        raise ValueError(f"power ({power}) must exceed alpha ({alpha})")
    h_abs = abs(cohens_h(p1, p2))
    crit = float(-special.ndtri(alpha / 2.0))
    z_power = float(special.ndtri(power))
    hi = (1.0 + 1.0 / r) * ((crit + z_power) / h_abs) ** 2 * 1.01 + 1.0
    n1 = float(
        optimize.brentq(
            lambda n: _power_split(h_abs, n, r, crit) - power,
            0.0,
            hi,
            xtol=1e-12,
            rtol=1e-15,
            maxiter=500,
        )
    )
    return n1, n1 * r

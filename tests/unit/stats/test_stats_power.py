"""Fixed-horizon sample size (Cohen's h) against statsmodels NormalIndPower."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from sidecar.core.stats import cohens_h, power_per_arm, sample_size_per_arm


def _cases(seed: int, n_cases: int) -> list[tuple[float, float, float, float]]:
    """Seeded (baseline, absolute effect, alpha, power) cases, both effect signs."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, float, float, float]] = []
    while len(out) < n_cases:
        baseline = float(rng.choice([0.005, 0.02, 0.1, 0.3, 0.5, 0.8]) * rng.uniform(0.8, 1.2))
        effect = float(baseline * rng.uniform(0.02, 0.6) * rng.choice([-1.0, 1.0]))
        if not 0.0 < baseline + effect < 1.0:
            continue
        alpha = float(rng.choice([0.001, 0.01, 0.05, 0.1, 0.2]))
        power = float(rng.choice([0.5, 0.8, 0.9, 0.95, 0.99]))
        if power <= alpha:
            continue
        out.append((baseline, effect, alpha, power))
    return out


CASES = _cases(11, 80)


def _statsmodels_n(baseline: float, effect: float, alpha: float, power: float) -> float:
    h = proportion_effectsize(baseline + effect, baseline)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a convergence warning would make the reference moot
        return float(
            NormalIndPower().solve_power(
                effect_size=h, alpha=alpha, power=power, ratio=1, alternative="two-sided"
            )
        )


def test_sample_size_equals_statsmodels_rounded_up() -> None:
    """n per arm is exactly ceil(statsmodels NormalIndPower.solve_power) on 80 cases."""
    bad = []
    for baseline, effect, alpha, power in CASES:
        ours = sample_size_per_arm(baseline, effect, alpha, power)
        ref = _statsmodels_n(baseline, effect, alpha, power)
        if ours.n_per_arm != math.ceil(ref):
            bad.append(((baseline, effect, alpha, power), ours.exact_n_per_arm, ref))
    assert len(CASES) >= 40
    assert bad == []


def test_sample_size_is_the_smallest_integer_reaching_power() -> None:
    """n reaches the target power and n - 1 does not."""
    for baseline, effect, alpha, power in CASES[:40]:
        res = sample_size_per_arm(baseline, effect, alpha, power)
        assert res.achieved_power >= power
        if res.n_per_arm > 1:
            assert power_per_arm(res.n_per_arm - 1, baseline, effect, alpha) < power


def test_power_matches_statsmodels() -> None:
    """power_per_arm equals NormalIndPower().power with ratio 1, two-sided."""
    rng = np.random.default_rng(12)
    for baseline, effect, alpha, _ in CASES[:50]:
        n = float(rng.uniform(10, 50_000))
        h = proportion_effectsize(baseline + effect, baseline)
        ref = NormalIndPower().power(h, nobs1=n, alpha=alpha, ratio=1, alternative="two-sided")
        assert power_per_arm(n, baseline, effect, alpha) == pytest.approx(float(ref), abs=1e-12)


def test_cohens_h_matches_statsmodels_effectsize() -> None:
    """cohens_h(p_A, p_B) equals proportion_effectsize(p_B, p_A)."""
    for baseline, effect, _, _ in CASES[:50]:
        ours = cohens_h(baseline, baseline + effect)
        ref = proportion_effectsize(baseline + effect, baseline)
        assert ours == pytest.approx(float(ref), abs=1e-12)


def test_known_textbook_value() -> None:
    """10% -> 11% at alpha 0.05, power 0.8 needs 14,745 users per arm."""
    assert sample_size_per_arm(0.10, 0.01).n_per_arm == 14_745


def test_effect_sign_does_not_matter_for_symmetric_h() -> None:
    """Detecting 0.5 -> 0.6 costs the same as 0.5 -> 0.4 (|h| is equal)."""
    assert sample_size_per_arm(0.5, 0.1).n_per_arm == sample_size_per_arm(0.5, -0.1).n_per_arm


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": 0.0, "minimum_effect": 0.01}, "baseline"),
        ({"baseline": 1.0, "minimum_effect": -0.01}, "baseline"),
        ({"baseline": 0.1, "minimum_effect": 0.0}, "non-zero"),
        ({"baseline": 0.95, "minimum_effect": 0.1}, r"\(0, 1\)"),
        ({"baseline": 0.1, "minimum_effect": 0.01, "alpha": 0.0}, "alpha"),
        ({"baseline": 0.1, "minimum_effect": 0.01, "alpha": 1.2}, "alpha"),
        ({"baseline": 0.1, "minimum_effect": 0.01, "power": 1.0}, "power"),
        ({"baseline": 0.1, "minimum_effect": 0.01, "alpha": 0.3, "power": 0.2}, "exceed"),
    ],
)
def test_bad_planning_input_raises(kwargs: dict[str, float], message: str) -> None:
    """Rates outside (0, 1), a zero effect, alpha/power outside (0, 1) raise ValueError."""
    with pytest.raises(ValueError, match=message):
        sample_size_per_arm(**kwargs)

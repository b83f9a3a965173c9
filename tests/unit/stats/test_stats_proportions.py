"""Binary-metric tests and intervals against statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

from sidecar.core.stats import (
    compare_proportions,
    difference_interval,
    ratio_interval,
    two_proportion_ztest,
    wilson_interval,
)

TOL = 1e-9
N_CASES = 60


def _two_arm_cases(seed: int, n_cases: int = N_CASES) -> list[tuple[int, int, int, int, float]]:
    """Seeded (successes_A, n_A, successes_B, n_B, alpha) cases incl. 0 and n successes."""
    rng = np.random.default_rng(seed)
    cases: list[tuple[int, int, int, int, float]] = []
    alphas = (0.01, 0.05, 0.1, 0.2)
    while len(cases) < n_cases:
        nc = int(rng.choice([1, 2, 5, 20, 100, 1000, 50_000]) + rng.integers(0, 50))
        nt = int(rng.choice([1, 3, 10, 40, 500, 2000, 80_000]) + rng.integers(0, 50))
        kind = len(cases) % 6
        if kind == 0:
            sc, st = 0, int(rng.integers(0, nt + 1))
        elif kind == 1:
            sc, st = nc, int(rng.integers(0, nt + 1))
        else:
            rate = float(rng.uniform(0.001, 0.999))
            sc = int(rng.binomial(nc, rate))
            st = int(rng.binomial(nt, min(0.999, rate * float(rng.uniform(0.7, 1.3)))))
        cases.append((sc, nc, st, nt, alphas[len(cases) % len(alphas)]))
    return cases


ZTEST_CASES = [c for c in _two_arm_cases(1, 90) if 0 < c[0] + c[2] < c[1] + c[3]][:N_CASES]
INTERVAL_CASES = _two_arm_cases(2)
RATIO_CASES = _two_arm_cases(3)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=TOL) or (math.isnan(a) and math.isnan(b))


def test_ztest_matches_statsmodels() -> None:
    """Pooled z statistic and two-sided p equal statsmodels proportions_ztest (B minus A)."""
    assert len(ZTEST_CASES) >= 40
    bad = []
    for sc, nc, st, nt, _ in ZTEST_CASES:
        ours = two_proportion_ztest(sc, nc, st, nt)
        z, p = proportions_ztest([st, sc], [nt, nc])
        if not (_close(ours.statistic, float(z)) and _close(ours.p_value, float(p))):
            bad.append(((sc, nc, st, nt), ours, (z, p)))
    assert bad == []


def test_ztest_degenerate_pooled_rate_means_no_evidence() -> None:
    """With no successes (or no failures) anywhere, z is 0 and p is 1 instead of NaN."""
    for args in ((0, 100, 0, 80), (100, 100, 80, 80)):
        res = two_proportion_ztest(*args)
        assert res.statistic == 0.0
        assert res.p_value == 1.0
        assert res.standard_error == 0.0


def test_ztest_sign_follows_treatment() -> None:
    """A higher treatment rate gives a positive z; swapping arms flips the sign."""
    up = two_proportion_ztest(100, 1000, 150, 1000)
    down = two_proportion_ztest(150, 1000, 100, 1000)
    assert up.statistic > 0
    assert down.statistic == pytest.approx(-up.statistic)
    assert up.p_value == pytest.approx(down.p_value)


def test_wilson_matches_statsmodels() -> None:
    """Wilson interval bounds equal statsmodels proportion_confint(method='wilson')."""
    bad = []
    for sc, nc, st, nt, alpha in INTERVAL_CASES:
        for s, n in ((sc, nc), (st, nt)):
            ours = wilson_interval(s, n, alpha)
            low, upp = proportion_confint(s, n, alpha=alpha, method="wilson")
            if not (_close(ours.lower, low) and _close(ours.upper, upp)):
                bad.append(((s, n, alpha), ours, (low, upp)))
            assert ours.confidence == pytest.approx(1 - alpha)
    assert bad == []


def test_newcombe_difference_matches_statsmodels() -> None:
    """Newcombe hybrid-score interval for p_B - p_A equals statsmodels method='newcomb'."""
    bad = []
    for sc, nc, st, nt, alpha in INTERVAL_CASES:
        ours = difference_interval(sc, nc, st, nt, alpha, method="newcombe")
        low, upp = confint_proportions_2indep(
            st, nt, sc, nc, method="newcomb", compare="diff", alpha=alpha
        )
        if not (_close(ours.lower, float(low)) and _close(ours.upper, float(upp))):
            bad.append(((sc, nc, st, nt, alpha), ours, (low, upp)))
        assert ours.method == "newcombe"
    assert bad == []


def test_wald_difference_matches_statsmodels() -> None:
    """Unpooled Wald interval for p_B - p_A equals statsmodels method='wald'."""
    bad = []
    for sc, nc, st, nt, alpha in INTERVAL_CASES:
        ours = difference_interval(sc, nc, st, nt, alpha, method="wald")
        low, upp = confint_proportions_2indep(
            st, nt, sc, nc, method="wald", compare="diff", alpha=alpha
        )
        if not (_close(ours.lower, float(low)) and _close(ours.upper, float(upp))):
            bad.append(((sc, nc, st, nt, alpha), ours, (low, upp)))
    assert bad == []


def test_ratio_interval_matches_statsmodels() -> None:
    """Rate-ratio interval equals statsmodels compare='ratio', method='log-adjusted'."""
    bad = []
    for sc, nc, st, nt, alpha in RATIO_CASES:
        ours = ratio_interval(sc, nc, st, nt, alpha)
        low, upp = confint_proportions_2indep(
            st, nt, sc, nc, method="log-adjusted", compare="ratio", alpha=alpha
        )
        ok_low = math.isclose(ours.lower, float(low), rel_tol=TOL, abs_tol=TOL)
        ok_upp = math.isclose(ours.upper, float(upp), rel_tol=TOL, abs_tol=TOL)
        if not (ok_low and ok_upp):
            bad.append(((sc, nc, st, nt, alpha), ours, (low, upp)))
        assert 0.0 < ours.lower < ours.upper
    assert bad == []


def test_generated_cases_cover_edges() -> None:
    """The generated grids include zero-success and all-success arms and 60 cases each."""
    assert len(INTERVAL_CASES) == N_CASES and len(RATIO_CASES) == N_CASES
    assert any(c[0] == 0 for c in INTERVAL_CASES)
    assert any(c[0] == c[1] for c in INTERVAL_CASES)


def test_compare_proportions_is_consistent() -> None:
    """The summary's pieces agree with the individual functions and lift = ratio - 1."""
    res = compare_proportions(100, 1000, 130, 1000, alpha=0.05)
    assert res.difference == pytest.approx(0.03)
    assert res.ratio == pytest.approx(1.3)
    assert res.relative_lift == pytest.approx(0.3)
    assert res.difference_interval == difference_interval(100, 1000, 130, 1000)
    r = ratio_interval(100, 1000, 130, 1000)
    assert res.relative_lift_interval.lower == pytest.approx(r.lower - 1)
    assert res.relative_lift_interval.upper == pytest.approx(r.upper - 1)
    assert res.z_test == two_proportion_ztest(100, 1000, 130, 1000)
    assert res.rate_treatment_interval.contains(0.13)


def test_zero_control_rate_gives_infinite_or_undefined_ratio() -> None:
    """Ratio is inf when only the control rate is 0 and NaN when both are; intervals finite."""
    only_control_zero = compare_proportions(0, 100, 5, 100)
    assert math.isinf(only_control_zero.ratio)
    assert math.isfinite(only_control_zero.ratio_interval.upper)
    both_zero = compare_proportions(0, 100, 0, 100)
    assert math.isnan(both_zero.ratio)
    assert both_zero.ratio_interval.contains(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10, 1, 10), "successes_control"),
        ((1, 10, -2, 10), "successes_treatment"),
        ((1, 0, 1, 10), "n_control must be at least 1"),
        ((1, 10, 1, 0), "n_treatment must be at least 1"),
        ((11, 10, 1, 10), "cannot exceed"),
        ((1.5, 10, 1, 10), "non-negative integer"),
        ((True, 10, 1, 10), "non-negative integer"),
    ],
)
def test_bad_counts_raise(args: tuple[int, int, int, int], message: str) -> None:
    """Negative counts, empty arms, successes > n and non-integers raise ValueError."""
    with pytest.raises(ValueError, match=message):
        two_proportion_ztest(*args)
    with pytest.raises(ValueError, match=message):
        compare_proportions(*args)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.05, 1.5, float("nan"), float("inf")])
def test_alpha_outside_unit_interval_raises(alpha: float) -> None:
    """alpha must lie strictly inside (0, 1) for every interval."""
    with pytest.raises(ValueError, match="alpha"):
        wilson_interval(5, 10, alpha)
    with pytest.raises(ValueError, match="alpha"):
        difference_interval(5, 10, 6, 10, alpha)
    with pytest.raises(ValueError, match="alpha"):
        ratio_interval(5, 10, 6, 10, alpha)


def test_wilson_rejects_empty_sample() -> None:
    """A Wilson interval needs at least one trial."""
    with pytest.raises(ValueError, match="at least 1"):
        wilson_interval(0, 0)


def test_unknown_difference_method_raises() -> None:
    """Only 'newcombe' and 'wald' are accepted for the difference interval."""
    with pytest.raises(ValueError, match="newcombe"):
        difference_interval(5, 10, 6, 10, method="score")  # type: ignore[arg-type]

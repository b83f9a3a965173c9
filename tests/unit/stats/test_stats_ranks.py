"""Welch t-test and Mann-Whitney U against scipy."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from sidecar.core.stats import (
    SampleSummary,
    mann_whitney_u,
    welch_t_test,
    welch_t_test_from_stats,
)

TOL = 1e-9
N_CASES = 60

Sample = npt.NDArray[np.float64]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


def _numeric_pairs(seed: int, n_cases: int = N_CASES) -> list[tuple[Sample, Sample]]:
    """Seeded (control, treatment) samples: normal, skewed latency-like, different sizes."""
    rng = np.random.default_rng(seed)
    out: list[tuple[Sample, Sample]] = []
    for i in range(n_cases):
        na = int(rng.integers(2, 400))
        nb = int(rng.integers(2, 400))
        if i % 3 == 0:
            a = rng.lognormal(3.0, 0.5, na)
            b = rng.lognormal(3.0 + rng.normal(0, 0.1), 0.5 * rng.uniform(0.5, 2), nb)
        else:
            a = rng.normal(10, rng.uniform(0.1, 5), na)
            b = rng.normal(10 + rng.normal(0, 1), rng.uniform(0.1, 5), nb)
        out.append((a, b))
    return out


WELCH_CASES = _numeric_pairs(21)


def test_welch_matches_scipy_ttest_ind() -> None:
    """Statistic, p, df and CI equal scipy ttest_ind(B, A, equal_var=False) on 60 cases."""
    bad = []
    for a, b in WELCH_CASES:
        ours = welch_t_test(a, b, alpha=0.05)
        ref = stats.ttest_ind(b, a, equal_var=False)
        ci = ref.confidence_interval(0.95)
        checks = (
            _close(ours.statistic, float(ref.statistic)),
            _close(ours.p_value, float(ref.pvalue)),
            _close(ours.degrees_of_freedom, float(ref.df)),
            _close(ours.difference_interval.lower, float(ci.low)),
            _close(ours.difference_interval.upper, float(ci.high)),
        )
        if not all(checks):
            bad.append((a.size, b.size, ours, ref))
    assert bad == []


def test_welch_from_stats_matches_scipy() -> None:
    """Summary-statistic Welch equals scipy ttest_ind_from_stats(equal_var=False)."""
    rng = np.random.default_rng(22)
    bad = []
    for _ in range(N_CASES):
        m_a, m_b = rng.normal(100, 20, 2)
        v_a, v_b = rng.uniform(0.01, 400, 2)
        n_a, n_b = (int(x) for x in rng.integers(2, 100_000, 2))
        ours = welch_t_test_from_stats(m_a, v_a, n_a, m_b, v_b, n_b)
        ref = stats.ttest_ind_from_stats(
            m_b, math.sqrt(v_b), n_b, m_a, math.sqrt(v_a), n_a, equal_var=False
        )
        if not (
            _close(ours.statistic, float(ref.statistic)) and _close(ours.p_value, float(ref.pvalue))
        ):
            bad.append(((m_a, v_a, n_a, m_b, v_b, n_b), ours, ref))
    assert bad == []


def test_summary_from_sums_matches_raw_sample() -> None:
    """Mean and variance from (n, sum, sum of squares) match the raw-sample summary."""
    rng = np.random.default_rng(23)
    x = rng.normal(5, 2, 1000)
    from_sums = SampleSummary.from_sums(x.size, float(x.sum()), float((x * x).sum()))
    raw = SampleSummary.from_sample(x)
    assert from_sums.n == raw.n
    assert from_sums.mean == pytest.approx(raw.mean, rel=1e-12)
    assert from_sums.variance == pytest.approx(raw.variance, rel=1e-9)


def test_welch_zero_variance_edge_cases() -> None:
    """Constant samples: equal means give z=0/p=1, different means give inf/p=0."""
    same = welch_t_test([1.0, 1.0, 1.0], [1.0, 1.0])
    assert (same.statistic, same.p_value) == (0.0, 1.0)
    diff = welch_t_test([1.0, 1.0, 1.0], [2.0, 2.0])
    assert diff.statistic == math.inf
    assert diff.p_value == 0.0


def _mwu_pairs(seed: int, n_cases: int = N_CASES) -> list[tuple[Sample, Sample]]:
    """Cases that exercise both of scipy's 'auto' branches: small tie-free and tied/large."""
    rng = np.random.default_rng(seed)
    out: list[tuple[Sample, Sample]] = []
    for i in range(n_cases):
        kind = i % 4
        if kind == 0:  # exact: small sample, no ties
            a = rng.normal(0, 1, int(rng.integers(1, 9)))
            b = rng.normal(0.5, 1, int(rng.integers(1, 60)))
        elif kind == 1:  # small sample with ties -> asymptotic
            a = rng.integers(0, 5, int(rng.integers(2, 9))).astype(float)
            b = rng.integers(0, 5, int(rng.integers(2, 30))).astype(float)
        elif kind == 2:  # large continuous latency
            a = rng.lognormal(3, 0.4, int(rng.integers(9, 500)))
            b = rng.lognormal(3.05, 0.4, int(rng.integers(9, 500)))
        else:  # large with many ties (rounded latency in ms)
            a = np.round(rng.lognormal(3, 0.4, int(rng.integers(9, 500))))
            b = np.round(rng.lognormal(3.05, 0.4, int(rng.integers(9, 500))))
        out.append((a, b))
    return out


MWU_CASES = _mwu_pairs(31)


def test_mann_whitney_matches_scipy_auto() -> None:
    """U (treatment's) and two-sided p equal scipy mannwhitneyu(B, A) default on 60 cases."""
    bad = []
    methods = set()
    for a, b in MWU_CASES:
        ours = mann_whitney_u(a, b)
        ref = stats.mannwhitneyu(b, a)
        methods.add(ours.method)
        if not (
            _close(ours.statistic, float(ref.statistic)) and _close(ours.p_value, float(ref.pvalue))
        ):
            bad.append((a.size, b.size, ours, ref))
    assert methods == {"exact", "asymptotic"}
    assert bad == []


def test_mann_whitney_exact_matches_scipy_exact() -> None:
    """Exact null distribution matches scipy method='exact' incl. an 8-vs-900 case."""
    rng = np.random.default_rng(32)
    sizes = [(1, 1), (1, 7), (3, 3), (8, 8), (5, 40), (8, 120), (2, 900), (8, 900), (7, 3)]
    for na, nb in sizes:
        a = rng.normal(0, 1, na)
        b = rng.normal(0.7, 1, nb)
        ours = mann_whitney_u(a, b, method="exact")
        ref = stats.mannwhitneyu(b, a, method="exact")
        assert ours.method == "exact"
        assert ours.p_value == pytest.approx(float(ref.pvalue), abs=TOL)


def test_mann_whitney_asymptotic_matches_scipy() -> None:
    """Forced normal approximation matches scipy method='asymptotic' on small samples too."""
    for a, b in MWU_CASES[::4]:
        ours = mann_whitney_u(a, b, method="asymptotic")
        ref = stats.mannwhitneyu(b, a, method="asymptotic")
        assert ours.p_value == pytest.approx(float(ref.pvalue), abs=TOL)


def test_mann_whitney_superiority_and_constant_data() -> None:
    """P(B > A) is U / (n_A n_B); identical constant samples give p = 1."""
    res = mann_whitney_u([1.0, 2.0], [3.0, 4.0, 5.0])
    assert res.statistic == 6.0
    assert res.probability_superiority == 1.0
    const = mann_whitney_u([2.0] * 10, [2.0] * 12)
    assert const.p_value == 1.0
    assert const.probability_superiority == 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: welch_t_test([1.0], [1.0, 2.0]), "at least 2"),
        (lambda: welch_t_test([1.0, float("nan")], [1.0, 2.0]), "NaN"),
        (lambda: welch_t_test_from_stats(0, -1, 10, 0, 1, 10), "non-negative"),
        (lambda: welch_t_test_from_stats(0, 1, 0, 0, 1, 10), "at least 2"),
        (lambda: welch_t_test_from_stats(0, 1, 10, 0, 1, 10, alpha=1.0), "alpha"),
        (lambda: mann_whitney_u([], [1.0]), "at least 1"),
        (lambda: mann_whitney_u([1.0, 1.0], [1.0, 2.0], method="exact"), "ties"),
        (lambda: SampleSummary.from_sums(1, 1.0, 1.0), "at least 2"),
    ],
)
def test_bad_numeric_input_raises(call: object, message: str) -> None:
    """Too few observations, NaN, negative variance, n=0 and bad alpha raise ValueError."""
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()

"""Sample-ratio-mismatch chi-square test against scipy.stats.chisquare."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sidecar.core.stats import is_sample_ratio_mismatch, srm_test


def _cases(seed: int, n_cases: int) -> list[tuple[list[int], list[int]]]:
    """Seeded (observed, weights in basis points) with 2-5 arms, some skewed on purpose."""
    rng = np.random.default_rng(seed)
    out: list[tuple[list[int], list[int]]] = []
    for i in range(n_cases):
        k = int(rng.integers(2, 6))
        cuts = np.sort(rng.choice(np.arange(1, 10_000), size=k - 1, replace=False))
        weights = np.diff(np.concatenate([[0], cuts, [10_000]])).astype(int)
        total = int(rng.choice([50, 1_000, 100_000, 2_000_000]))
        probs = weights / 10_000
        if i % 3 == 0:  # a real mismatch: distort the split
            probs = probs * rng.uniform(0.9, 1.1, k)
            probs = probs / probs.sum()
        observed = rng.multinomial(total, probs)
        out.append((observed.tolist(), weights.tolist()))
    return out


CASES = _cases(41, 60)


def _exact_reference(observed: list[int], weights: list[int]) -> float:
    """scipy binomtest for two arms; Bonferroni over each arm against the rest otherwise."""
    total = sum(observed)
    pairs = [(o, w / 10_000) for o, w in zip(observed, weights, strict=True) if w > 0]
    ps = [stats.binomtest(o, total, q).pvalue for o, q in pairs]
    return float(ps[0]) if len(pairs) == 2 else min(1.0, len(pairs) * float(min(ps)))


def test_srm_matches_scipy_chisquare() -> None:
    """The statistic equals scipy chisquare(observed, total * weights / 10000) on 60 cases;
    the p-value that decides is exact: scipy binomtest (two arms), Bonferroni over each arm
    against the rest (more arms)."""
    bad = []
    flags = set()
    for observed, weights in CASES:
        ours = srm_test(observed, weights)
        flags.add(ours.mismatch)
        expected = np.asarray(weights) / 10_000 * sum(observed)
        ref = stats.chisquare(observed, expected)
        ok = math.isclose(ours.statistic, float(ref.statistic), rel_tol=1e-9, abs_tol=1e-9)
        ok = ok and math.isclose(ours.p_value, _exact_reference(observed, weights), abs_tol=1e-9)
        if not ok:
            bad.append((observed, weights, ours, ref))
        assert ours.degrees_of_freedom == len(weights) - 1
        assert ours.mismatch == (ours.p_value < 0.001)
    assert flags == {True, False}
    assert bad == []


def test_helper_flags_clear_mismatch_and_not_balanced_traffic() -> None:
    """A 50/50 split seen as 5,300/4,700 is a mismatch; 5,020/4,980 is not."""
    assert is_sample_ratio_mismatch([5_300, 4_700], [5_000, 5_000])
    assert not is_sample_ratio_mismatch([5_020, 4_980], [5_000, 5_000])


def test_threshold_is_configurable() -> None:
    """p = 0.0466 (exact) is not a mismatch at 0.001 but is at threshold 0.05."""
    res = srm_test([5_100, 4_900], [5_000, 5_000])
    assert res.p_value == pytest.approx(stats.binomtest(5_100, 10_000, 0.5).pvalue, rel=1e-12)
    assert res.p_value == pytest.approx(0.0466, abs=1e-4)
    assert not res.mismatch
    assert srm_test([5_100, 4_900], [5_000, 5_000], threshold=0.05).mismatch


def test_zero_weight_arm_with_traffic_is_a_mismatch() -> None:
    """Traffic reaching a 0 bp arm is a routing fault: statistic inf, p 0, mismatch."""
    res = srm_test([500, 500, 3], [5_000, 5_000, 0])
    assert math.isinf(res.statistic)
    assert res.p_value == 0.0
    assert res.mismatch


def test_zero_weight_arm_without_traffic_is_ignored() -> None:
    """A 0 bp arm with no traffic drops out: same result as testing the other arms."""
    with_idle = srm_test([5_100, 0, 4_900], [5_000, 0, 5_000])
    without = srm_test([5_100, 4_900], [5_000, 5_000])
    assert with_idle.statistic == without.statistic
    assert with_idle.p_value == without.p_value
    assert with_idle.degrees_of_freedom == 1


@pytest.mark.parametrize(
    ("observed", "weights", "message"),
    [
        ([100, 100], [5_000, 4_999], "sum to 10000"),
        ([100, 100], [5_000, 5_001], "sum to 10000"),
        ([-1, 100], [5_000, 5_000], "non-negative"),
        ([0, 0], [5_000, 5_000], "all zero"),
        ([100, 100, 100], [5_000, 5_000], "one weight per arm"),
        ([100, 100], [10_000, 0], "two arms"),
        ([100, 100], [5_000.0, 5_000.0], "non-negative integer"),
        ([100.5, 100], [5_000, 5_000], "non-negative integer"),
        ([], [], "must not be empty"),
    ],
)
def test_bad_srm_input_raises(observed: list[int], weights: list[int], message: str) -> None:
    """Weights not summing to 10,000, negative or non-integer counts, no traffic raise."""
    with pytest.raises(ValueError, match=message):
        srm_test(observed, weights)


@pytest.mark.parametrize("threshold", [0.0, 1.0, -0.01])
def test_bad_threshold_raises(threshold: float) -> None:
    """The mismatch threshold must lie in (0, 1)."""
    with pytest.raises(ValueError, match="threshold"):
        srm_test([100, 100], [5_000, 5_000], threshold=threshold)


def _exact_false_alarm_rate(n: int, share: float, threshold: float) -> float:
    """P(srm flags) under the null at n assignments, summed exactly over the binomial.

    The flagged counts of a two-sided exact test are two tails; they are found from the
    binomial pmf (every k whose pmf is at most pmf(k*) for the tail boundary), and
    `srm_test` itself is asked at each tail's boundary and its neighbour, so the rejection
    region summed is the one `srm_test` uses."""
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, share)
    order = np.argsort(pmf, kind="stable")
    cumulative = np.cumsum(pmf[order])
    # p(k) = sum of pmf(j) over pmf(j) <= pmf(k) (1 + 1e-7): scipy's two-sided rule.
    bound = np.searchsorted(pmf[order], pmf * (1 + 1e-7), side="right")
    p_all = np.minimum(1.0, cumulative[np.maximum(bound - 1, 0)])
    flagged = p_all < threshold
    mode = int(np.argmax(pmf))
    low = k[:mode][flagged[:mode]]
    high = k[mode:][flagged[mode:]]
    for edge in ([int(low.max())] if low.size else []) + ([int(high.min())] if high.size else []):
        assert srm_test(
            [edge, n - edge], [int(share * 10_000), 10_000 - int(share * 10_000)]
        ).mismatch
    for inside in ([int(low.max()) + 1] if low.size else []) + (
        [int(high.min()) - 1] if high.size else []
    ):
        assert not srm_test(
            [inside, n - inside], [int(share * 10_000), 10_000 - int(share * 10_000)]
        ).mismatch
    return float(pmf[flagged].sum())


def test_per_check_false_alarm_rate_is_at_most_a_tenth_of_a_percent_at_95_5() -> None:
    """At a 95/5 split the exact test flags at most 0.1% of checks at every n from 100 to
    3000, computed exactly from the binomial (not simulated); the chi-square approximation
    it replaced exceeded it (e.g. 0.32% near n = 109)."""
    worst = 0.0
    chi_worst = 0.0
    for n in range(100, 3001):
        worst = max(worst, _exact_false_alarm_rate(n, 0.95, 0.001))
        if n <= 200:
            k = np.arange(n + 1)
            chi = (k - 0.95 * n) ** 2 / (0.95 * n) + (k - 0.95 * n) ** 2 / (0.05 * n)
            chi_worst = max(
                chi_worst, float(stats.binom.pmf(k, n, 0.95)[stats.chi2.sf(chi, 1) < 0.001].sum())
            )
    assert worst <= 0.001
    assert chi_worst > 0.001  # the old rule's excess, for contrast

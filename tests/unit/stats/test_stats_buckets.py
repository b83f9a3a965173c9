"""User buckets, the estimate-driven mSPRT, the allocation-aware plan and the segment mix
check, against scipy / statsmodels where the same quantity exists (1e-9)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import special, stats
from statsmodels.stats.power import NormalIndPower

from sidecar.core.stats import (
    cohens_h,
    plan_sequential,
    required_variance,
    sample_size_split,
    segment_mix_test,
    sequential_paths_estimates,
    sequential_power_lower_bound,
    sequential_update,
    sequential_update_estimate,
    start_sequential,
)
from sidecar.core.stats.buckets import BucketTotals, ratio_from_buckets
from sidecar.core.stats.sequential import boundary_z

TOL = 1e-9


def test_one_outcome_per_bucket_gives_the_squared_standard_error_of_scipy() -> None:
    """With one outcome in every bucket the delta-method variance is the variance of a mean
    (ddof = 1): scipy.stats.sem squared."""
    rng = np.random.default_rng(1)
    for k in (2, 16, 128, 1000):
        y = rng.normal(3.0, 2.0, k)
        est = ratio_from_buckets(y, np.ones(k))
        assert float(est.ratio) == pytest.approx(float(np.mean(y)), rel=TOL)
        assert float(est.variance) == pytest.approx(float(stats.sem(y)) ** 2, rel=TOL)


def test_ratio_variance_is_the_delta_method_over_bucket_totals() -> None:
    """(s_Y^2 - 2 R s_YN + R^2 s_N^2) / (K mean(N)^2) with numpy's covariance (ddof 1),
    vectorised over leading axes."""
    rng = np.random.default_rng(2)
    n = rng.poisson(20, (3, 5, 128)).astype(float)
    y = rng.binomial(n.astype(int), 0.1).astype(float)
    est = ratio_from_buckets(y, n)
    for i in range(3):
        for j in range(5):
            cov = np.cov(y[i, j], n[i, j], ddof=1)
            r = y[i, j].sum() / n[i, j].sum()
            want = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (128 * n[i, j].mean() ** 2)
            assert est.ratio[i, j] == pytest.approx(r, rel=TOL)
            assert est.variance[i, j] == pytest.approx(want, rel=TOL)
    empty = ratio_from_buckets(np.zeros(8), np.zeros(8))
    assert math.isnan(float(empty.ratio)) and math.isnan(float(empty.variance))


def test_bucket_totals_merge_by_addition_like_one_stream() -> None:
    """Two sidecars' totals added equal the totals of the combined stream, and survive JSON."""
    rng = np.random.default_rng(3)
    one, two, both = BucketTotals(16), BucketTotals(16), BucketTotals(16)
    for i in range(2000):
        bucket, value, new = int(rng.integers(16)), float(rng.normal()), bool(i % 3 == 0)
        (one if i % 2 else two).add(bucket, value, new, keyless=i % 5 == 0)
        both.add(bucket, value, new, keyless=i % 5 == 0)
    merged = one.merge(two)
    assert merged.outcomes == both.outcomes and merged.users == both.users
    assert merged.keyless == both.keyless
    assert merged.total == pytest.approx(both.total, abs=1e-9)
    assert merged.total_sq == pytest.approx(both.total_sq, abs=1e-9)
    again = BucketTotals.from_json(json.loads(json.dumps(merged.to_json())))
    assert again == merged
    with pytest.raises(ValueError, match="cannot merge 8 buckets into 16"):
        one.merge(BucketTotals(8))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"buckets": 1}, "buckets: must be an integer"),
        ({"outcomes": [1, 2]}, "outcomes must be a list of 4"),
        ({"users": [0, 0, -1, 0]}, "users must hold non-negative"),
        ({"total": [0.0, "nan", 0.0, 0.0]}, "total must hold finite"),
        ({"keyless": True}, "keyless must be a non-negative integer"),
    ],
)
def test_malformed_bucket_totals_are_refused_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    data = {**BucketTotals(4).to_json(), **change}
    with pytest.raises(ValueError, match=message):
        BucketTotals.from_json(data)


def test_estimate_update_equals_the_counts_update_for_the_same_difference_and_variance() -> None:
    """Fed the plug-in difference and variance, the estimate look is the counts look."""
    state = start_sequential(2e-4)
    same = start_sequential(2e-4)
    for sa, na, sb, nb in ((120, 1000, 150, 1000), (260, 2000, 330, 2000), (400, 3000, 520, 3000)):
        look = sequential_update(state, sa, na, sb, nb)
        pa, pb = sa / na, sb / nb
        s2 = pa * (1 - pa) / na + pb * (1 - pb) / nb
        other = sequential_update_estimate(same, na, nb, pb - pa, s2)
        assert other.log_likelihood_ratio == pytest.approx(look.log_likelihood_ratio, rel=TOL)
        assert other.state.p_value == pytest.approx(look.state.p_value, rel=TOL)
        assert other.state.ci_lower == pytest.approx(look.state.ci_lower, abs=TOL)
        assert other.state.ci_upper == pytest.approx(look.state.ci_upper, abs=TOL)
        state, same = look.state, other.state


def test_vectorised_estimate_paths_equal_repeated_updates() -> None:
    rng = np.random.default_rng(4)
    d = rng.normal(0.0, 0.01, (6, 30))
    s2 = rng.uniform(1e-5, 1e-4, (6, 30))
    ev = rng.random((6, 30)) > 0.2
    p, lo, hi = sequential_paths_estimates(d, s2, ev, 3e-4, 0.05)
    for row in range(6):
        state = start_sequential(3e-4, 0.05, bounded=False)
        for j in range(30):
            state = sequential_update_estimate(
                state, j, j, float(d[row, j]), float(s2[row, j]), bool(ev[row, j])
            ).state
            assert p[row, j] == pytest.approx(state.p_value, rel=TOL)
            assert lo[row, j] == pytest.approx(state.ci_lower, abs=TOL)
            assert hi[row, j] == pytest.approx(state.ci_upper, abs=TOL)


@pytest.mark.parametrize("ratio", [1.0, 5 / 95, 0.25, 3.0])
def test_split_sample_size_equals_statsmodels_normal_ind_power(ratio: float) -> None:
    for baseline, effect in ((0.1, 0.01), (0.3, -0.05), (0.02, 0.005)):
        control, treatment = sample_size_split(baseline, effect, ratio, 0.05, 0.8)
        want = NormalIndPower().solve_power(
            abs(cohens_h(baseline, baseline + effect)),
            nobs1=None,
            alpha=0.05,
            power=0.8,
            ratio=ratio,
        )
        assert control == pytest.approx(float(want), rel=TOL)
        assert treatment == pytest.approx(ratio * float(want), rel=TOL)


def test_required_variance_reaches_the_power_bound_and_the_equal_split_plan() -> None:
    """At s^2* the power bound equals the target; with equal arms and the planner's tau^2
    the horizon V / s^2* is the planner's (before rounding up)."""
    for baseline, effect, power in ((0.1, 0.01, 0.8), (0.05, 0.01, 0.9), (0.4, -0.02, 0.8)):
        plan = plan_sequential(baseline, effect, 0.05, power)
        s2 = required_variance(effect, plan.tau_squared, 0.05, power)
        drift = abs(effect) / math.sqrt(s2)
        bound = special.ndtr(drift - boundary_z(plan.tau_squared / s2, 0.05))
        assert bound == pytest.approx(power, rel=TOL)
        v = baseline * (1 - baseline) + (baseline + effect) * (1 - baseline - effect)
        assert math.ceil(v / s2 - 1e-9) == plan.n_per_arm
        bound_at = sequential_power_lower_bound(v / s2, baseline, effect, plan.tau_squared)
        assert bound_at == pytest.approx(power, rel=TOL)


@pytest.mark.parametrize(
    "table",
    [
        [[20_000, 80_000], [80_000, 20_000]],
        [[500, 300, 200], [480, 320, 205]],
        [[10, 20, 30, 40], [12, 18, 33, 37], [9, 22, 28, 41]],
    ],
)
def test_segment_mix_equals_scipy_chi2_contingency(table: list[list[int]]) -> None:
    ours = segment_mix_test(table)
    chi, p, dof, expected = stats.chi2_contingency(table, correction=False)
    assert ours.checked
    assert ours.statistic == pytest.approx(float(chi), rel=TOL)
    assert ours.p_value == pytest.approx(float(p), rel=TOL, abs=1e-300)
    assert ours.degrees_of_freedom == dof
    assert ours.min_expected == pytest.approx(float(expected.min()), rel=TOL)


def test_segment_mix_is_not_checked_with_too_few_counts_or_one_segment() -> None:
    assert not segment_mix_test([[3, 1], [2, 4]]).checked
    assert segment_mix_test([[3, 1], [2, 4]]).p_value == 1.0
    assert not segment_mix_test([[100, 0], [120, 0]]).checked
    assert not segment_mix_test([]).checked
    with pytest.raises(ValueError, match="one count per segment"):
        segment_mix_test([[1, 2], [3]])

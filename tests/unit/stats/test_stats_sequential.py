"""Anytime-valid mSPRT: formula, confidence sequence, streaming/vectorised agreement, verdicts."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import optimize, special

from sidecar.core.stats import (
    SequentialState,
    Verdict,
    plan_sequential,
    sample_size_per_arm,
    sequential_paths,
    sequential_power_lower_bound,
    sequential_update,
    sequential_update_means,
    sequential_verdict,
    start_sequential,
    wilson_interval,
)
from sidecar.core.stats.sequential import (
    boundary_z,
    confidence_halfwidth,
    log_likelihood_ratio,
    optimal_mixing_ratio,
)

TOL = 1e-9
IntArray = npt.NDArray[np.int64]


def _equal_n_cases(seed: int, n_cases: int) -> list[tuple[int, int, int, float, float]]:
    """Seeded (successes_A, successes_B, n per arm, tau^2, alpha) cases."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, int, int, float, float]] = []
    for i in range(n_cases):
        n = int(rng.integers(200, 200_000))
        pa = float(rng.uniform(0.02, 0.9))
        pb = min(0.98, pa * float(rng.uniform(0.9, 1.15)))
        tau2 = float(10 ** rng.uniform(-6, -2))
        alpha = (0.01, 0.05, 0.1)[i % 3]
        out.append((int(rng.binomial(n, pa)), int(rng.binomial(n, pb)), n, tau2, alpha))
    return out


CASES = _equal_n_cases(71, 60)


def test_log_lr_matches_paper_two_stream_bernoulli_formula() -> None:
    """ln Lambda equals Johari et al.'s equal-n form with V = pA(1-pA) + pB(1-pB)."""
    for sa, sb, n, tau2, alpha in CASES:
        look = sequential_update(start_sequential(tau2, alpha, min_events=0), sa, n, sb, n)
        pa, pb = sa / n, sb / n
        v = pa * (1 - pa) + pb * (1 - pb)
        d = pb - pa
        paper = 0.5 * math.log(v / (v + n * tau2)) + n * n * tau2 * d * d / (2 * v * (v + n * tau2))
        assert look.evaluated
        assert look.log_likelihood_ratio == pytest.approx(paper, rel=1e-10, abs=TOL)
        assert log_likelihood_ratio(d, v / n, tau2) == pytest.approx(paper, rel=1e-10, abs=TOL)
        assert look.state.p_value == pytest.approx(min(1.0, math.exp(-paper)), abs=TOL)


def test_interval_bounds_are_where_lambda_reaches_one_over_alpha() -> None:
    """At theta0 = d +- h the likelihood ratio equals 1/alpha (the CS inverts the test)."""
    checked = 0
    for sa, sb, n, tau2, alpha in CASES:
        look = sequential_update(start_sequential(tau2, alpha, min_events=0), sa, n, sb, n)
        h = confidence_halfwidth(look.variance, tau2, alpha)
        for bound in (look.difference - h, look.difference + h):
            if -1.0 < bound < 1.0:
                llr = log_likelihood_ratio(look.difference, look.variance, tau2, bound)
                assert llr == pytest.approx(math.log(1 / alpha), abs=TOL)
                checked += 1
        assert look.interval.lower == pytest.approx(max(-1.0, look.difference - h), abs=1e-15)
    assert checked >= 80


def _random_paths(seed: int, runs: int, looks: int, pa: float, pb: float) -> tuple[IntArray, ...]:
    rng = np.random.default_rng(seed)
    n = np.arange(1, looks + 1, dtype=np.int64) * 300
    sa = np.cumsum(rng.binomial(300, pa, (runs, looks)), axis=1, dtype=np.int64)
    sb = np.cumsum(rng.binomial(300, pb, (runs, looks)), axis=1, dtype=np.int64)
    return sa, np.broadcast_to(n, sa.shape), sb


def test_vectorised_paths_equal_streaming_updates() -> None:
    """sequential_paths gives the same running p and interval as repeated updates."""
    tau2 = 1e-4
    for seed, (pa, pb) in enumerate([(0.1, 0.1), (0.1, 0.12), (0.3, 0.27)]):
        sa, n, sb = _random_paths(seed, 15, 25, pa, pb)
        paths = sequential_paths(sa, n, sb, n, tau_squared=tau2, alpha=0.05)
        for i in range(sa.shape[0]):
            state = start_sequential(tau2, 0.05)
            for k in range(sa.shape[1]):
                state = sequential_update(state, sa[i, k], n[i, k], sb[i, k], n[i, k]).state
                assert state.p_value == pytest.approx(paths.p_value[i, k], rel=1e-12, abs=1e-300)
                assert state.ci_lower == paths.ci_lower[i, k]
                assert state.ci_upper == paths.ci_upper[i, k]


def test_disjoint_interval_collapses_running_interval_to_nearest_point() -> None:
    """A later interval disjoint from the running one collapses it to the nearest bound."""
    tau2 = 1e-3
    sa = np.array([100, 1100], dtype=np.int64)
    sb = np.array([300, 320], dtype=np.int64)
    n = np.array([1000, 2000], dtype=np.int64)
    first = sequential_update(start_sequential(tau2), sa[0], n[0], sb[0], n[0])
    second = sequential_update(first.state, sa[1], n[1], sb[1], n[1])
    assert first.state.ci_lower > 0.0  # B clearly better at look 1
    assert second.interval.upper < first.state.ci_lower  # look 2 says the opposite
    assert second.state.ci_lower == second.state.ci_upper == first.state.ci_lower
    paths = sequential_paths(sa, n, sb, n, tau_squared=tau2)
    assert paths.ci_lower[1] == paths.ci_upper[1] == first.state.ci_lower


def test_p_below_alpha_iff_running_interval_excludes_zero() -> None:
    """The always-valid p-value and the confidence sequence give the same decision."""
    sa, n, sb = _random_paths(7, 300, 30, 0.1, 0.115)
    paths = sequential_paths(sa, n, sb, n, tau_squared=5e-5, alpha=0.05)
    excludes = (paths.ci_lower > 0) | (paths.ci_upper < 0)
    assert np.array_equal(paths.p_value < 0.05, excludes)
    assert excludes[:, -1].any() and not excludes[:, -1].all()


def test_running_quantities_are_monotone() -> None:
    """p never increases and the running interval only shrinks from look to look."""
    sa, n, sb = _random_paths(8, 50, 30, 0.2, 0.2)
    paths = sequential_paths(sa, n, sb, n, tau_squared=1e-4)
    assert np.all(np.diff(paths.p_value, axis=1) <= 0)
    assert np.all(np.diff(paths.ci_lower, axis=1) >= 0)
    assert np.all(np.diff(paths.ci_upper, axis=1) <= 0)


def test_aa_false_positive_rate_controlled_where_naive_peeking_is_not() -> None:
    """On 2,000 seeded A/A runs with 40 looks mSPRT stays under 5%, naive z-peeking does not."""
    runs, looks = 2000, 40
    sa, n, sb = _random_paths(9, runs, looks, 0.1, 0.1)
    tau2 = plan_sequential(0.1, 0.01).tau_squared
    paths = sequential_paths(sa, n, sb, n, tau_squared=tau2, alpha=0.05)
    fp = int(np.count_nonzero(paths.p_value[:, -1] < 0.05))
    assert wilson_interval(fp, runs).upper < 0.05
    pooled = (sa + sb) / (2.0 * n)
    z = (sb - sa) / n / np.sqrt(pooled * (1 - pooled) * 2.0 / n)
    naive = int(np.count_nonzero((np.abs(z) > 1.959964).any(axis=1)))
    assert naive / runs > 0.15


def test_looks_with_too_few_events_are_not_evaluated() -> None:
    """Below min_events successes or failures the look carries no evidence."""
    look = sequential_update(start_sequential(1e-3, min_events=10), 0, 50, 9, 50)
    assert not look.evaluated
    assert look.state.p_value == 1.0
    assert (look.interval.lower, look.interval.upper) == (-1.0, 1.0)
    assert look.state.looks == 1


def test_verdicts_cover_all_four_outcomes() -> None:
    """Ship B, Keep A, Equivalent and Continue come out where the interval says so."""
    plan = plan_sequential(0.10, 0.01)
    ship = sequential_update(plan.start(), 1000, 10_000, 1300, 10_000)
    keep = sequential_update(plan.start(), 1300, 10_000, 1000, 10_000)
    equal = sequential_update(plan.start(), 100_000, 1_000_000, 100_100, 1_000_000)
    early = sequential_update(plan.start(), 50, 500, 55, 500)
    assert sequential_verdict(ship, 0.01).verdict is Verdict.SHIP_B
    assert sequential_verdict(keep, 0.01).verdict is Verdict.KEEP_A
    assert sequential_verdict(equal, 0.01).verdict is Verdict.EQUIVALENT
    cont = sequential_verdict(early, 0.01)
    assert cont.verdict is Verdict.CONTINUE
    assert cont.additional_per_arm is not None and cont.additional_per_arm > 0
    assert sequential_verdict(ship, 0.01).additional_per_arm is None


def test_continue_estimate_is_enough_at_the_observed_rates() -> None:
    """Adding the estimated users per arm at the observed rates makes the look decisive."""
    plan = plan_sequential(0.10, 0.01)
    for sa, sb in ((50, 55), (50, 62), (50, 50)):
        early = sequential_update(plan.start(), sa, 500, sb, 500)
        add = sequential_verdict(early, 0.01).additional_per_arm
        assert add is not None
        n = 500 + add
        d, s2 = early.difference, early.variance * 500 / n
        h = confidence_halfwidth(s2, plan.tau_squared)
        assert h <= max(abs(d), 0.01 - abs(d)) + 1e-12
        n_short = 500 + int(add * 0.9)
        h_short = confidence_halfwidth(early.variance * 500 / n_short, plan.tau_squared)
        assert h_short > max(abs(d), 0.01 - abs(d))


def test_optimal_mixing_ratio_minimises_the_boundary() -> None:
    """r* solves r = 2 ln(1/alpha) + ln(1 + r) and is the argmin of boundary_z."""
    for alpha in (0.01, 0.05, 0.1, 0.2):
        r = optimal_mixing_ratio(alpha)
        assert r == pytest.approx(2 * math.log(1 / alpha) + math.log1p(r), rel=1e-14)
        res = optimize.minimize_scalar(
            lambda x, a=alpha: boundary_z(x, a),
            bounds=(0.01, 1000),
            method="bounded",
            options={"xatol": 1e-10},
        )
        assert r == pytest.approx(float(res.x), rel=1e-4)
    assert optimal_mixing_ratio(0.05) == pytest.approx(8.2, abs=0.05)
    assert boundary_z(optimal_mixing_ratio(0.05), 0.05) == pytest.approx(3.035, abs=1e-3)


def _plan_cases(seed: int, n_cases: int) -> list[tuple[float, float, float, float]]:
    rng = np.random.default_rng(seed)
    out: list[tuple[float, float, float, float]] = []
    while len(out) < n_cases:
        base = float(rng.uniform(0.01, 0.8))
        mde = float(base * rng.uniform(0.03, 0.3))
        if base + mde < 1:
            out.append((base, mde, (0.01, 0.05, 0.1)[len(out) % 3], (0.8, 0.9)[len(out) % 2]))
    return out


def test_plan_reaches_power_bound_with_smallest_n() -> None:
    """Planned n reaches the power bound, n - 1 does not, and n exceeds the fixed horizon."""
    for base, mde, alpha, power in _plan_cases(72, 40):
        for tau2 in (None, 1e-4):
            plan = plan_sequential(base, mde, alpha, power, tau_squared=tau2)
            assert plan.planned_power >= power
            below = sequential_power_lower_bound(
                plan.n_per_arm - 1, base, mde, plan.tau_squared, alpha
            )
            assert below < power
            assert plan.n_per_arm > plan.fixed_n_per_arm
            assert plan.fixed_n_per_arm == sample_size_per_arm(base, mde, alpha, power).n_per_arm


def test_default_tau_is_tuned_to_the_horizon() -> None:
    """With no tau^2 given, tau^2 = r* V / n so the horizon boundary is the minimum b*."""
    plan = plan_sequential(0.10, 0.01)
    v = 0.1 * 0.9 + 0.11 * 0.89
    assert plan.tau_squared == pytest.approx(optimal_mixing_ratio(0.05) * v / plan.n_per_arm)
    assert plan.boundary_z == pytest.approx(boundary_z(optimal_mixing_ratio(0.05)))
    assert plan.fixed_n_per_arm == 14_745
    assert 1.8 < plan.inflation < 2.0


def test_power_bound_formula() -> None:
    """The bound is Phi(|delta| sqrt(n/V) - b(n tau^2 / V))."""
    n, tau2 = 20_000, 5e-5
    v = 0.1 * 0.9 + 0.11 * 0.89
    expected = special.ndtr(0.01 * math.sqrt(n / v) - boundary_z(n * tau2 / v))
    assert sequential_power_lower_bound(n, 0.1, 0.01, tau2) == pytest.approx(float(expected))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: start_sequential(0.0), "tau_squared"),
        (lambda: start_sequential(-1e-4), "tau_squared"),
        (lambda: start_sequential(1e-4, alpha=1.0), "alpha"),
        (lambda: start_sequential(1e-4, alpha=0.0), "alpha"),
        (lambda: start_sequential(1e-4, min_events=-1), "min_events"),
        (lambda: sequential_update(start_sequential(1e-4), -1, 10, 1, 10), "non-negative"),
        (lambda: sequential_update(start_sequential(1e-4), 11, 10, 1, 10), "cannot exceed"),
        (lambda: sequential_paths([[1, 2]], [[10, 5]], [[1, 2]], [[10, 10]], 1e-4), "decrease"),
        (lambda: sequential_paths(1, 10, 1, 10, 1e-4), "look axis"),
        (lambda: plan_sequential(0.1, 0.0), "non-zero"),
        (lambda: plan_sequential(0.1, 0.01, alpha=1.5), "alpha"),
        (lambda: plan_sequential(0.1, 0.01, tau_squared=0.0), "tau_squared"),
        (lambda: SequentialState(alpha=0.05, tau_squared=-1.0), "tau_squared"),
        (lambda: SequentialState(alpha=0.05, tau_squared=1e-4, p_value=2.0), "inconsistent"),
    ],
)
def test_bad_sequential_input_raises(call: object, message: str) -> None:
    """Non-positive tau^2, alpha outside (0, 1), negative or shrinking counts raise ValueError."""
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()


def test_counts_may_not_decrease_between_looks() -> None:
    """A look with fewer users than the previous one is rejected."""
    state = sequential_update(start_sequential(1e-4), 10, 100, 10, 100).state
    with pytest.raises(ValueError, match="cannot decrease"):
        sequential_update(state, 5, 50, 10, 100)


def test_verdict_needs_positive_minimum_effect() -> None:
    """The equivalence margin must be a positive number."""
    look = sequential_update(start_sequential(1e-4), 10, 100, 10, 100)
    with pytest.raises(ValueError, match="minimum_effect"):
        sequential_verdict(look, 0.0)


# --------------------------------------------------------------------------- numeric (means)


def _means_cases(
    seed: int, n_cases: int
) -> list[tuple[int, float, float, int, float, float, float, float]]:
    """Seeded (n_A, mean_A, var_A, n_B, mean_B, var_B, tau^2, alpha) cases on several scales."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        scale = float(10 ** rng.uniform(-2, 3))
        na, nb = int(rng.integers(20, 50_000)), int(rng.integers(20, 50_000))
        ma = float(rng.normal(0, 5)) * scale
        mb = ma + float(rng.normal(0, 0.05)) * scale
        va = float(rng.uniform(0.2, 4.0)) * scale**2
        vb = float(rng.uniform(0.2, 4.0)) * scale**2
        tau2 = float(10 ** rng.uniform(-4, 0)) * scale**2
        out.append((na, ma, va, nb, mb, vb, tau2, (0.01, 0.05, 0.1)[i % 3]))
    return out


MEANS_CASES = _means_cases(73, 60)


def test_means_update_matches_the_mixture_formula() -> None:
    """ln Lambda, p and the (unclipped) interval equal a direct computation with
    s^2 = var_A/n_A + var_B/n_B and d = mean_B - mean_A."""
    beyond_one = 0
    for na, ma, va, nb, mb, vb, tau2, alpha in MEANS_CASES:
        state = start_sequential(tau2, alpha, min_events=10, bounded=False)
        look = sequential_update_means(state, na, ma, va, nb, mb, vb)
        d, s2 = mb - ma, va / na + vb / nb
        llr = 0.5 * math.log(s2 / (s2 + tau2)) + tau2 * d * d / (2 * s2 * (s2 + tau2))
        h = math.sqrt(
            s2 * (s2 + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((s2 + tau2) / s2))
        )
        assert look.evaluated
        assert look.difference == pytest.approx(d, rel=1e-12, abs=1e-12)
        assert look.variance == pytest.approx(s2, rel=1e-12)
        assert look.log_likelihood_ratio == pytest.approx(llr, rel=1e-10, abs=TOL)
        assert look.state.p_value == pytest.approx(min(1.0, math.exp(-llr)), abs=TOL)
        assert look.interval.lower == pytest.approx(d - h, rel=1e-12, abs=1e-12)
        assert look.interval.upper == pytest.approx(d + h, rel=1e-12, abs=1e-12)
        assert (look.state.ci_lower, look.state.ci_upper) == (
            look.interval.lower,
            look.interval.upper,
        )
        assert look.successes_control == look.successes_treatment == 0
        beyond_one += look.interval.upper > 1.0 or look.interval.lower < -1.0
    assert beyond_one >= 20  # numeric intervals are not clipped to [-1, 1]


def test_means_interval_bounds_are_where_lambda_reaches_one_over_alpha() -> None:
    """At d +- h the likelihood ratio equals 1/alpha, and p < alpha iff 0 is outside."""
    for na, ma, va, nb, mb, vb, tau2, alpha in MEANS_CASES:
        look = sequential_update_means(
            start_sequential(tau2, alpha, bounded=False), na, ma, va, nb, mb, vb
        )
        for bound in (look.interval.lower, look.interval.upper):
            llr = log_likelihood_ratio(look.difference, look.variance, tau2, bound)
            assert llr == pytest.approx(math.log(1 / alpha), rel=1e-9, abs=1e-9)
        assert (look.state.p_value < alpha) == look.interval.excludes_zero()


def test_means_running_quantities_intersect_and_carry_over() -> None:
    """Running p is the minimum, the interval the intersection; unevaluated looks carry
    over (n below max(min_events, 2) or zero variance)."""
    state = start_sequential(0.05, 0.05, min_events=10, bounded=False)
    assert (state.ci_lower, state.ci_upper) == (-math.inf, math.inf)
    early = sequential_update_means(state, 9, 1.0, 2.0, 50, 1.5, 2.0)
    assert not early.evaluated and early.state.p_value == 1.0
    assert (early.state.ci_lower, early.state.ci_upper) == (-math.inf, math.inf)
    flat = sequential_update_means(early.state, 20, 1.0, 0.0, 50, 1.0, 0.0)
    assert not flat.evaluated and flat.state.looks == 2
    tiny = sequential_update_means(
        start_sequential(0.05, min_events=0, bounded=False), 1, 1.0, 0.0, 1, 2.0, 0.0
    )
    assert not tiny.evaluated  # a single observation per arm has no variance
    first = sequential_update_means(flat.state, 100, 1.0, 2.0, 100, 1.4, 2.0)
    second = sequential_update_means(first.state, 400, 1.1, 2.0, 400, 1.2, 2.0)
    assert first.evaluated and second.evaluated
    assert second.state.p_value == min(
        first.state.p_value, math.exp(min(0.0, -second.log_likelihood_ratio))
    )
    assert second.state.ci_lower == max(first.interval.lower, second.interval.lower)
    assert second.state.ci_upper == min(first.interval.upper, second.interval.upper)
    with pytest.raises(ValueError, match="cannot decrease"):
        sequential_update_means(second.state, 300, 1.0, 1.0, 400, 1.0, 1.0)


def test_means_verdicts_and_bounded_state_rules() -> None:
    """sequential_verdict works on numeric looks; the proportions default stays bounded."""
    tau2 = 0.01
    ship = sequential_update_means(
        start_sequential(tau2, bounded=False), 5000, 10.0, 9.0, 5000, 10.5, 9.0
    )
    keep = sequential_update_means(
        start_sequential(tau2, bounded=False), 5000, 10.5, 9.0, 5000, 10.0, 9.0
    )
    same = sequential_update_means(
        start_sequential(tau2, bounded=False), 10**6, 10.0, 9.0, 10**6, 10.0, 9.0
    )
    early = sequential_update_means(
        start_sequential(tau2, bounded=False), 50, 10.0, 9.0, 50, 10.2, 9.0
    )
    assert sequential_verdict(ship, 0.2).verdict is Verdict.SHIP_B
    assert sequential_verdict(keep, 0.2).verdict is Verdict.KEEP_A
    assert sequential_verdict(same, 0.2).verdict is Verdict.EQUIVALENT
    cont = sequential_verdict(early, 0.2)
    assert cont.verdict is Verdict.CONTINUE
    assert cont.additional_per_arm is not None and cont.additional_per_arm > 0
    assert start_sequential(tau2).bounded and (
        start_sequential(tau2).ci_lower,
        start_sequential(tau2).ci_upper,
    ) == (-1.0, 1.0)
    with pytest.raises(ValueError, match="unbounded"):
        sequential_update_means(start_sequential(tau2), 50, 1.0, 1.0, 50, 1.0, 1.0)
    with pytest.raises(ValueError, match="var_control"):
        sequential_update_means(start_sequential(tau2, bounded=False), 50, 1.0, -1.0, 50, 1.0, 1.0)
    with pytest.raises(ValueError, match="mean_treatment"):
        sequential_update_means(
            start_sequential(tau2, bounded=False), 50, 1.0, 1.0, 50, math.nan, 1.0
        )
    with pytest.raises(ValueError, match="inconsistent"):
        SequentialState(alpha=0.05, tau_squared=1.0, ci_lower=1.0, ci_upper=0.0, bounded=False)
    with pytest.raises(ValueError, match="inconsistent"):
        SequentialState(alpha=0.05, tau_squared=1.0, ci_lower=-math.inf, ci_upper=math.inf)


def _normal_paths(
    seed: int, runs: int, looks: int, step: int, shift: float
) -> tuple[npt.NDArray[np.float64], ...]:
    """Cumulative (mean, sample variance) per look for two arms of N(0, 1) and N(shift, 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for mu in (0.0, shift):
        x = rng.normal(mu, 1.0, (runs, looks, step))
        s = np.cumsum(x.sum(axis=2), axis=1)
        ss = np.cumsum((x * x).sum(axis=2), axis=1)
        n = np.arange(1, looks + 1) * step
        mean = s / n
        var = (ss - n * mean * mean) / (n - 1)
        out += [mean, var]
    return tuple(out)


def test_means_aa_false_positive_rate_stays_below_alpha() -> None:
    """2,000 seeded A/A runs of normal data, a look every 100 per arm up to 2,000 (20
    looks), tau^2 from the default rule for delta = 0.1 sd: the false-positive rate stays
    below alpha (asserted < 0.07 for the statistical margin), and B = A + 0.25 sd is found."""
    runs, looks, step, alpha = 2000, 20, 100, 0.05
    r = optimal_mixing_ratio(alpha)
    tau2 = r * (0.1 / (boundary_z(r, alpha) + float(special.ndtri(0.8)))) ** 2
    ma, va, mb, vb = _normal_paths(11, runs, looks, step, 0.0)
    rejected = 0
    for i in range(runs):
        state = start_sequential(tau2, alpha, bounded=False)
        for k in range(looks):
            n = (k + 1) * step
            state = sequential_update_means(
                state, n, ma[i, k], va[i, k], n, mb[i, k], vb[i, k]
            ).state
        rejected += state.p_value < alpha
    assert rejected / runs < 0.07, rejected
    ma, va, mb, vb = _normal_paths(12, 200, looks, step, 0.25)
    found = 0
    for i in range(200):
        state = start_sequential(tau2, alpha, bounded=False)
        for k in range(looks):
            n = (k + 1) * step
            state = sequential_update_means(
                state, n, ma[i, k], va[i, k], n, mb[i, k], vb[i, k]
            ).state
        found += state.ci_lower > 0.0
    assert found / 200 > 0.8, found

"""The deployment's sequential tests (sidecar/core/canary/sequential.py): the likelihood
ratios against scipy, the supermartingale property under the exact conditional law, the
pooled-quantile exceedances, decisions, guards, the recorded baseline, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from sidecar.core.canary.sequential import (
    DEFAULT_RATE_RATIOS,
    DeploymentAnalysis,
    Evidence,
    IntervalCounts,
    RecordedBaseline,
    SequentialConfig,
    exceedances,
    interval_counts,
    logsumexp,
    mixture_log_e,
    quantile_ratios,
    rate_log_lr,
)
from sidecar.core.canary.window import VariantWindow

THETAS = np.array(DEFAULT_RATE_RATIOS)


@pytest.mark.parametrize(
    ("x", "total", "share"),
    [(0, 0, 0.05), (1, 1, 0.05), (3, 4, 0.5), (0, 7, 0.25), (12, 40, 0.3), (250, 300, 0.5)],
)
def test_conditional_ratio_is_the_binomial_likelihood_ratio(
    x: int, total: int, share: float
) -> None:
    """x log(theta) - T log(1 + p (theta - 1)) = binom.logpmf(x, T, q) - binom.logpmf(x, T,
    p) with q = theta p / (theta p + 1 - p): the conditional Poisson test."""
    got = rate_log_lr(x, total, share, THETAS)
    q = THETAS * share / (THETAS * share + 1.0 - share)
    want = stats.binom.logpmf(x, total, q) - stats.binom.logpmf(x, total, share)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("x", "n", "r0"), [(0, 300, 0.002), (5, 300, 0.002), (40, 500, 0.05)])
def test_one_sample_ratio_is_the_bernoulli_odds_ratio(x: int, n: int, r0: float) -> None:
    """Against a null rate r0, alternative odds theta r0 / (1 - r0)."""
    got = rate_log_lr(x, n, r0, THETAS)
    rho = THETAS * r0 / (1.0 - r0 + THETAS * r0)
    want = stats.binom.logpmf(x, n, rho) - stats.binom.logpmf(x, n, r0)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("total", "good", "drawn"), [(600, 3, 300), (600, 300, 300), (6000, 3000, 300), (50, 10, 45)]
)
def test_ratio_is_a_supermartingale_under_the_hypergeometric_null(
    total: int, good: int, drawn: int
) -> None:
    """Fixed requests per arm: the canary's events given T are hypergeometric. The
    binomial ratio's expectation is then <= 1 for every theta (convex order), and exactly
    1 under the binomial (Poisson) null."""
    share = drawn / total
    xs = np.arange(0, min(good, drawn) + 1)
    log_pmf = stats.hypergeom.logpmf(xs, total, good, drawn)
    log_e = special.logsumexp(log_pmf[:, None] + rate_log_lr(xs, good, share, THETAS), axis=0)
    assert np.all(log_e <= 1e-9)
    xs = np.arange(0, good + 1)
    log_pmf = stats.binom.logpmf(xs, good, share)
    log_e = special.logsumexp(log_pmf[:, None] + rate_log_lr(xs, good, share, THETAS), axis=0)
    np.testing.assert_allclose(log_e, 0.0, atol=1e-9)


def test_mixture_is_the_weighted_mean_of_the_ratios() -> None:
    log_lr = np.array([[0.5, -3.0, 2.0], [-1.0, 0.0, 1.0]])
    w = np.log(np.array([0.2, 0.3, 0.5]))
    want = np.log((np.exp(log_lr) * np.exp(w)).sum(axis=1))
    np.testing.assert_allclose(mixture_log_e(log_lr, w), want, rtol=1e-12)
    assert special.logsumexp(log_lr[0] + w) == pytest.approx(mixture_log_e(log_lr, w)[0], rel=1e-12)


def _window(values: list[float], counts: list[int], errors: int = 0) -> VariantWindow:
    w = VariantWindow()
    w.record_many("OK", values, counts)
    if errors:
        w.record_many("INTERNAL", [0.0], [errors])
    return w


def test_exceedances_use_the_pooled_quantile_symmetrically() -> None:
    """The threshold is the pooled quantile's bucket: swapping the arms swaps the counts,
    and the counts are the requests in strictly higher buckets of the expanded data."""
    c = _window([0.010, 0.020, 0.040], [50, 100, 150])
    s = _window([0.010, 0.020, 0.030], [300, 200, 100])
    ca, cn, sa, sn = exceedances(c, s, 0.5)
    assert (cn, sn) == (300, 600)
    sa2, sn2, ca2, cn2 = exceedances(s, c, 0.5)
    assert (ca, cn, sa, sn) == (ca2, cn2, sa2, sn2)
    pooled = np.concatenate([c.latency_buckets().expand(), s.latency_buckets().expand()])
    cut = np.sort(pooled)[math.floor(0.5 * (pooled.size - 1))]  # the pooled median's bucket
    assert ca == int(np.sum(c.latency_buckets().expand() > cut))
    assert sa == int(np.sum(s.latency_buckets().expand() > cut))
    assert exceedances(VariantWindow(), VariantWindow(), 0.5) == (0, 0, 0, 0)


def test_config_is_validated() -> None:
    for bad in (
        {"error_share": 0.5},  # shares no longer sum to 1
        {"false_rollback_rate": math.nan},
        {"false_rollback_rate": 1.0},
        {"rate_ratios": ()},
        {"rate_ratios": (0.5,)},
        {"baseline_drift": 0.5},
        {"baseline_latency_share": math.inf},
    ):
        with pytest.raises(ValueError):
            SequentialConfig(**bad)  # type: ignore[arg-type]
    c = SequentialConfig()
    total = sum(c.alpha(t) for t in ("error_rate", "timeout_rate", "latency_p50", "latency_p95",
                                     "baseline_error_rate", "baseline_latency"))  # fmt: skip
    assert total == pytest.approx(c.false_rollback_rate, rel=1e-12)


def _counts(ce: int, se: int, n: int = 300) -> IntervalCounts:
    return IntervalCounts(n, n, ce, se, 0, 0, (0, n - ce, 0, n - se), (0, n - ce, 0, n - se))


def test_healthy_canary_passes_and_a_10x_regression_is_rolled_back() -> None:
    a = DeploymentAnalysis(SequentialConfig(), "v2 vs v1")
    for _ in range(30):
        d = a.observe(_counts(0, 0), latency_ratios=(1.0, 1.0))
        assert not d.rollback
    assert d.enough_data and d.reason.startswith("PASS (deployment budget 1.00%, check 30)")
    for _ in range(10):
        d = a.observe(_counts(3, 0), latency_ratios=(1.0, 1.0))
        if d.rollback:
            break
    assert d.rollback and "error_rate HIGH" in d.reason and "deployment budget" in d.reason


def test_a_significant_difference_within_the_guard_is_not_rolled_back() -> None:
    """Huge counts, canary 1.5x the stable's error rate: significant, but within the 2x
    guard: PASS."""
    a = DeploymentAnalysis(SequentialConfig(), "d")
    for _ in range(50):
        d = a.observe(_counts(150, 100, 10_000), latency_ratios=(1.0, 1.0))
    assert a.evidence.significant("error_rate")[0] and not d.rollback


def test_evidence_is_vectorised_over_runs_like_one_analysis() -> None:
    rng = np.random.default_rng(7)
    config = SequentialConfig()
    batch = Evidence(config, runs=5)
    singles = [Evidence(config) for _ in range(5)]
    for _ in range(20):
        ce, se = rng.poisson(2, 5), rng.poisson(1, 5)
        batch.add_two_sample("error_rate", ce, np.full(5, 300), se, np.full(5, 300))
        for i, e in enumerate(singles):
            e.add_two_sample("error_rate", ce[i], 300, se[i], 300)
    for i, e in enumerate(singles):
        assert batch.log_e("error_rate")[i] == pytest.approx(e.log_e("error_rate")[0], rel=1e-12)


def test_baseline_judges_a_canary_alone_and_is_gate_free_without_one() -> None:
    """No concurrent stable traffic: against the recorded baseline (tolerating 2x drift);
    with no recorded baseline, the stage is gate-free and says so."""
    alone = IntervalCounts(600, 0, 30, 0, 0, 0, (0, 570, 0, 0), (0, 570, 0, 0), 0)
    a = DeploymentAnalysis(SequentialConfig(), "d")
    d = a.observe(alone, latency_ratios=None, baseline=RecordedBaseline(30_000, 0.001, 0.04))
    assert d.rollback and "baseline_error_rate HIGH" in d.reason
    drift = IntervalCounts(600, 0, 1, 0, 0, 0, (0, 599, 0, 0), (0, 599, 0, 0), 5)
    b = DeploymentAnalysis(SequentialConfig(), "d")
    for _ in range(60):  # 1.7x the recorded rate, within the drift tolerance
        d = b.observe(drift, latency_ratios=None, baseline=RecordedBaseline(30_000, 0.001, 0.04))
    assert not d.rollback and d.enough_data
    c = DeploymentAnalysis(SequentialConfig(), "d")
    d = c.observe(alone, latency_ratios=None, baseline=RecordedBaseline(0, 0.0, 0.0))
    assert not d.rollback and d.enough_data and "gate-free" in d.reason


def test_round_trip_continues_the_same_budget() -> None:
    config = SequentialConfig()
    a = DeploymentAnalysis(config, "v2 vs v1")
    for _ in range(3):
        a.observe(_counts(1, 0), latency_ratios=(1.0, 1.0))
    b = DeploymentAnalysis.from_dict(a.to_dict(), config)
    assert (b.deployment, b.checks, b.totals) == (a.deployment, a.checks, a.totals)
    da = a.observe(_counts(2, 0), latency_ratios=(1.0, 1.0))
    db = b.observe(_counts(2, 0), latency_ratios=(1.0, 1.0))
    assert da.log_e == db.log_e and da.reason == db.reason
    with pytest.raises(ValueError):
        DeploymentAnalysis.from_dict(a.to_dict(), SequentialConfig(rate_ratios=(2.0, 4.0)))
    broken = a.to_dict()
    broken["sums"]["error_rate"][0] = math.nan
    with pytest.raises(ValueError):
        DeploymentAnalysis.from_dict(broken, config)


def test_interval_counts_and_quantile_ratios_read_windows() -> None:
    c = _window([0.010, 0.060], [100, 100], errors=4)
    s = _window([0.010, 0.020], [100, 100])
    counts = interval_counts(c, s, baseline_limit_s=0.030)
    assert (counts.canary_requests, counts.canary_errors, counts.stable_errors) == (204, 4, 0)
    assert counts.canary_above_baseline == 100
    ratios = quantile_ratios(c, s, 0.001)
    assert ratios is not None and ratios[1] > 2.0
    assert quantile_ratios(VariantWindow(), s, 0.001) is None


def test_a_late_regression_is_caught_from_a_recent_start() -> None:
    """Ten hours of healthy checks at a 5/95 split, then 10x errors: the tests started
    later (change points) catch it within minutes, and the reason says since when; the
    first start alone would need far longer (its evidence for large ratios has drifted
    far below 1)."""
    rng = np.random.default_rng(3)
    a = DeploymentAnalysis(SequentialConfig(), "d")

    def minute(rate: float) -> IntervalCounts:
        ce, se = int(rng.binomial(300, rate)), int(rng.binomial(5700, 0.001))
        return IntervalCounts(
            300, 5700, ce, se, 0, 0, (0, 300 - ce, 0, 5700 - se), (0, 300 - ce, 0, 5700 - se)
        )

    for _ in range(600):
        assert not a.observe(minute(0.001), latency_ratios=(1.0, 1.0)).rollback
    first_only = float(mixture_log_e(a.evidence.sums["error_rate"][0, 0], a.evidence.log_weights))
    for _ in range(30):
        d = a.observe(minute(0.01), latency_ratios=(1.0, 1.0))
        if d.rollback:
            break
    assert d.rollback and d.check - 600 <= 15 and "since check" in d.reason
    assert first_only < -20.0  # the deployment-start test alone: e < 2e-9 before the onset


def test_logsumexp_matches_scipy_including_infinite_rows() -> None:
    """The numpy-only logsumexp the controller uses equals scipy's to 1e-9, also with
    -inf entries and a row that is all -inf."""
    rng = np.random.default_rng(7)
    values = rng.normal(0.0, 50.0, size=(6, 9))
    values[1, 3] = -np.inf
    values[2, :] = -np.inf
    values[3, 0] = 700.0
    ours = logsumexp(values, axis=-1)
    theirs = special.logsumexp(values, axis=-1)
    assert np.array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(
        logsumexp(values.T, axis=0)[finite], theirs[finite], rtol=1e-12, atol=1e-9
    )

"""Unit tests for the canary judge (sidecar.core.canary.judge): stages, classifications,
verdicts and reference values."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats
from statsmodels.stats.proportion import binom_test

from sidecar.core.canary import (
    Classification,
    JudgeConfig,
    Judgement,
    LatencyBuckets,
    MetricResult,
    VariantWindow,
    Verdict,
    conditional_binomial_p,
    judge,
    mann_whitney_buckets,
    measure,
    score,
    verdict,
)


def lognormal_latencies(n: int, median: float = 0.020, sigma: float = 0.5) -> np.ndarray:
    """n deterministic latencies spread like a lognormal (its quantiles at (i + 0.5) / n)."""
    probabilities = (np.arange(n) + 0.5) / n
    return np.asarray(median * np.exp(sigma * special.ndtri(probabilities)))


def window(
    requests: int,
    errors: int = 0,
    timeouts: int = 0,
    median: float = 0.020,
    sigma: float = 0.5,
) -> VariantWindow:
    """A window of `requests`, of which `errors` INTERNAL and `timeouts` DEADLINE_EXCEEDED,
    the rest successful with lognormal-shaped latencies (at most 5000 distinct values)."""
    w = VariantWindow()
    ok = requests - errors - timeouts
    if ok:
        distinct = min(ok, 5000)
        counts = np.full(distinct, ok // distinct)
        counts[: ok % distinct] += 1
        w.record_many("OK", lognormal_latencies(distinct, median, sigma), counts)
    if errors:
        w.record_many("INTERNAL", [0.0], [errors])
    if timeouts:
        w.record_many("DEADLINE_EXCEEDED", [0.0], [timeouts])
    return w


def classes(j: Judgement) -> dict[str, Classification]:
    return {m.name: m.classification for m in j.metrics}


# ------------------------------------------------------------------ verdicts


def test_healthy_canary_passes_once_there_is_enough_data() -> None:
    """Same error, timeout and latency profile as the baseline: every metric PASS."""
    j = judge(window(3000, 3, 1), window(57_000, 57, 11))
    assert j.verdict is Verdict.PASS
    assert classes(j) == {n: Classification.PASS for n in ("error_rate", "timeout_rate", "latency")}
    assert j.score == 100.0
    assert j.reason.startswith("PASS: error_rate PASS: canary 0.13% vs baseline 0.12%")


def test_no_data_is_inconclusive_never_pass() -> None:
    """Empty windows: every metric NODATA, verdict INCONCLUSIVE (hold), score 0."""
    j = judge(VariantWindow(), VariantWindow())
    assert j.verdict is Verdict.INCONCLUSIVE
    assert set(classes(j).values()) == {Classification.NODATA}
    assert j.score == 0.0
    assert j.reason.startswith(
        "INCONCLUSIVE (hold): error_rate NODATA: canary 0 requests < 200 minimum, "
        "baseline 0 requests < 200 minimum"
    )
    assert all(m.p_value is None and m.ratio is None for m in j.metrics)


def test_too_little_canary_traffic_holds_even_if_everything_looks_fine() -> None:
    """Below the minimum requests the rates are NODATA, so the verdict is INCONCLUSIVE."""
    j = judge(window(150), window(50_000, 50))
    assert j.verdict is Verdict.INCONCLUSIVE
    assert classes(j) == {
        "error_rate": Classification.NODATA,
        "timeout_rate": Classification.NODATA,
        "latency": Classification.PASS,  # 150 successes >= 100
    }
    assert "canary 150 requests < 200 minimum" in j.reason
    assert j.score == 100.0  # of the metrics with data


def test_clear_error_regression_fails_with_the_numbers_in_the_reason() -> None:
    """1.0% errors against 0.1%: error_rate HIGH, verdict FAIL, values and thresholds shown."""
    j = judge(window(3000, 30), window(57_000, 57))
    m = j.metric("error_rate")
    assert j.verdict is Verdict.FAIL
    assert m.classification is Classification.HIGH
    assert m.canary_value == pytest.approx(0.01) and m.baseline_value == pytest.approx(0.001)
    assert m.ratio == pytest.approx(10.0)
    assert m.p_value is not None and m.p_value < 1e-10
    assert j.reason.startswith(
        "FAIL: error_rate HIGH: canary 1.00% vs baseline 0.10% (ratio 10 > 2.0), p="
    )
    assert j.reason.endswith(" < 1e-4")
    assert j.score == pytest.approx(200.0 / 3.0)


def test_latency_regression_fails() -> None:
    """3x slower successful requests: latency HIGH with p50 and p95 ratios in the reason."""
    j = judge(window(3000, median=0.060), window(57_000))
    m = j.metric("latency")
    assert j.verdict is Verdict.FAIL
    assert m.classification is Classification.HIGH
    assert m.ratio == pytest.approx(3.0, rel=0.03)
    assert m.details["p95_ratio"] == pytest.approx(3.0, rel=0.03)
    assert j.reason.startswith("FAIL: latency HIGH: canary p50 60.2 ms vs baseline 19.6 ms")
    assert " > 1.2), p95 137 ms vs 45.5 ms (ratio 3 > 1.5)" in j.reason
    assert j.reason.endswith("Mann-Whitney p<1e-300 < 1e-4")  # underflowed to 0


def test_tail_only_regression_fails_on_the_p95_guard() -> None:
    """Same median, 10% of canary requests 5x slower: p95 beyond 1.5x, significant."""
    canary = VariantWindow()
    canary.record_many("OK", lognormal_latencies(4500))
    canary.record_many("OK", 5.0 * lognormal_latencies(500))
    m = judge(canary, window(57_000)).metric("latency")
    assert m.classification is Classification.HIGH
    assert m.ratio is not None and m.ratio < 1.2  # p50 within its guard
    assert m.details["p95_ratio"] > 1.5
    assert "<= 1.2" in m.reason and "> 1.5" in m.reason


def test_faster_and_cleaner_canary_is_low_but_passes() -> None:
    """A better canary is LOW on the metrics it improves, and the verdict is PASS."""
    j = judge(window(20_000, 0, median=0.010), window(50_000, 500))
    assert j.verdict is Verdict.PASS
    assert classes(j)["latency"] is Classification.LOW
    assert classes(j)["error_rate"] is Classification.LOW
    assert j.score == 100.0
    assert "(faster)" in j.metric("latency").reason


def test_significant_difference_within_the_guard_passes() -> None:
    """1.5x the baseline's error rate is significant at this volume but within 2x: PASS."""
    m = judge(window(1_000_000, 1500), window(1_000_000, 1000)).metric("error_rate")
    assert m.classification is Classification.PASS
    assert m.p_value is not None and m.p_value < 1e-4
    assert "but within the guard" in m.reason


def test_small_latency_shift_within_the_guards_passes() -> None:
    """A 10% slower canary is significant with this much data but within 1.2x / 1.5x."""
    m = judge(window(20_000, median=0.022), window(200_000)).metric("latency")
    assert m.classification is Classification.PASS
    assert m.p_value is not None and m.p_value < 1e-4
    assert "within the guards" in m.reason


def test_floor_keeps_the_ratio_finite_when_the_baseline_has_no_errors() -> None:
    """0.02% against 0 errors is ratio 0.2 to the 0.1% floor, not infinitely worse."""
    m = judge(window(5000, 1), window(100_000, 0)).metric("error_rate")
    assert m.classification is Classification.PASS
    assert m.ratio == pytest.approx(0.2)
    assert "to the 0.10% floor" in m.reason


def test_real_regression_against_an_error_free_baseline_still_fails() -> None:
    """1% errors against 0 errors: ratio 10 to the floor and significant: HIGH."""
    m = judge(window(5000, 50), window(100_000, 0)).metric("error_rate")
    assert m.classification is Classification.HIGH
    assert m.ratio == pytest.approx(10.0)


def test_timeout_regression_fails() -> None:
    """Timeouts at 1% against 0.02%: timeout_rate HIGH (and error_rate HIGH too)."""
    j = judge(window(5000, 0, 50), window(100_000, 80, 20))
    assert j.metric("timeout_rate").classification is Classification.HIGH
    assert j.verdict is Verdict.FAIL
    assert "timeout_rate HIGH" in j.reason


def test_custom_guards_and_minimums_are_applied() -> None:
    """A stricter error guard turns a within-guard difference into HIGH; larger minimums
    turn data into NODATA."""
    strict = JudgeConfig(max_error_ratio=1.2)
    assert (
        judge(window(1_000_000, 1500), window(1_000_000, 1000), strict)
        .metric("error_rate")
        .classification
        is Classification.HIGH
    )
    picky = JudgeConfig(min_requests=10_000, min_latency_samples=10_000)
    assert judge(window(3000), window(57_000), picky).verdict is Verdict.INCONCLUSIVE


# ------------------------------------------------------------------ stages


def metric(name: str, classification: Classification) -> MetricResult:
    return MetricResult(
        name, classification, None, None, None, 2.0, None, 1e-4, 0, 0, f"{name} {classification}"
    )


def test_score_is_the_share_of_judged_metrics_that_passed() -> None:
    """PASS and LOW count as passed; NODATA is left out; no judged metric scores 0."""
    p, h, low, nd = (
        metric("a", Classification.PASS),
        metric("b", Classification.HIGH),
        metric("c", Classification.LOW),
        metric("d", Classification.NODATA),
    )
    assert score([p, h, low, nd]) == pytest.approx(200.0 / 3.0)
    assert score([nd]) == 0.0
    assert score([]) == 0.0


def test_verdict_fails_on_any_high_even_with_missing_data() -> None:
    """HIGH beats NODATA: a clear regression is not held back by another metric's lack
    of data; without HIGH, NODATA holds; no metrics at all holds too."""
    v, reason = verdict([metric("a", Classification.NODATA), metric("b", Classification.HIGH)])
    assert v is Verdict.FAIL and reason == "FAIL: b HIGH"
    v, _ = verdict([metric("a", Classification.PASS), metric("b", Classification.NODATA)])
    assert v is Verdict.INCONCLUSIVE
    assert verdict([]) == (Verdict.INCONCLUSIVE, "INCONCLUSIVE (hold): no metrics")


def test_measure_reads_counts_and_quantiles() -> None:
    """measure() copies the counters and reads p50/p95 from both windows."""
    m = measure(window(1000, 10, 5), window(2000, 2, 1))
    assert (m.canary_requests, m.canary_errors, m.canary_timeouts) == (1000, 15, 5)
    assert (m.baseline_requests, m.baseline_errors, m.baseline_timeouts) == (2000, 3, 1)
    assert m.canary_latency.total == 985
    assert m.canary_p50 == pytest.approx(0.020, rel=0.02)
    with pytest.raises(ValueError, match="accuracy"):
        measure(VariantWindow(0.01), VariantWindow(0.02))


def test_alpha_override_is_validated_and_recorded() -> None:
    """judge(..., alpha=a) tests at a and says so; a must lie in (0, 1)."""
    j = judge(window(3000, 30), window(57_000, 57), alpha=1e-20)
    assert j.alpha == 1e-20 and all(m.alpha == 1e-20 for m in j.metrics)
    assert j.metric("error_rate").classification is Classification.PASS  # p ~ 1e-14
    with pytest.raises(ValueError, match="alpha"):
        judge(window(10), window(10), alpha=1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"alpha": math.nan},
        {"max_error_ratio": 1.0},
        {"max_p50_ratio": 0.9},
        {"error_rate_floor": 0.0},
        {"timeout_rate_floor": 1.0},
        {"latency_floor_s": -1.0},
        {"min_requests": 0},
        {"min_latency_samples": 1.5},
        {"max_p95_ratio": True},
    ],
)
def test_judge_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    """Every threshold is validated when the configuration is built."""
    with pytest.raises(ValueError):
        JudgeConfig(**kwargs)  # type: ignore[arg-type]


def test_results_are_frozen() -> None:
    """Judgements and metric results cannot be changed after the fact."""
    j = judge(window(3000), window(57_000))
    with pytest.raises(FrozenInstanceError):
        j.verdict = Verdict.FAIL  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        j.metrics[0].p_value = 0.0  # type: ignore[misc]
    with pytest.raises(KeyError):
        j.metric("throughput")


# ------------------------------------------------------------------ reference values


def exact_upper_tail(k: int, n: int, p: Fraction) -> float:
    """P(Binomial(n, p) >= k) in exact rational arithmetic."""
    q = 1 - p
    return float(sum(math.comb(n, i) * p**i * q ** (n - i) for i in range(k, n + 1)))


BINOMIAL_CASES = [
    # canary errors, canary n, baseline errors, baseline n
    (30, 3000, 57, 57_000),
    (3, 3000, 57, 57_000),
    (0, 300, 6, 5700),
    (5, 300, 6, 5700),
    (12, 1200, 23, 22_800),
    (1, 5000, 0, 100_000),
    (50, 5000, 0, 100_000),
    (15, 3000, 57, 57_000),
    (200, 10_000, 300, 10_000),
    (7, 7, 0, 10),
]


@pytest.mark.parametrize(("xc", "nc", "xb", "nb"), BINOMIAL_CASES)
def test_conditional_binomial_p_matches_independent_computations(
    xc: int, nc: int, xb: int, nb: int
) -> None:
    """Both tails agree with scipy.stats.binom, statsmodels' binom_test and exact rational
    arithmetic to 1e-9 (relative)."""
    total = xc + xb
    share = nc / (nc + nb)
    greater = conditional_binomial_p(xc, nc, xb, nb, "greater")
    less = conditional_binomial_p(xc, nc, xb, nb, "less")
    exact_share = Fraction(nc, nc + nb)
    references_greater = [
        float(stats.binom.sf(xc - 1, total, share)),
        float(binom_test(xc, total, share, alternative="larger")),
        exact_upper_tail(xc, total, exact_share),
    ]
    references_less = [
        float(stats.binom.cdf(xc, total, share)),
        float(binom_test(xc, total, share, alternative="smaller")),
        1.0 - exact_upper_tail(xc + 1, total, exact_share) if xc < total else 1.0,
    ]
    for ref in references_greater:
        assert math.isclose(greater, ref, rel_tol=1e-9, abs_tol=1e-300), (greater, ref)
    for ref in references_less[:2]:
        assert math.isclose(less, ref, rel_tol=1e-9, abs_tol=1e-300), (less, ref)
    assert math.isclose(less, references_less[2], rel_tol=1e-9, abs_tol=1e-12)


def test_conditional_binomial_p_without_events_and_with_bad_input() -> None:
    """No events in either arm carry no evidence (p = 1); counts are validated."""
    assert conditional_binomial_p(0, 1000, 0, 1000) == 1.0
    for args in [(-1, 10, 0, 10), (0, 0, 0, 10), (11, 10, 0, 10), (1.0, 10, 0, 10)]:
        with pytest.raises(ValueError):
            conditional_binomial_p(*args)  # type: ignore[arg-type]


def buckets_from(keys: list[int], counts: list[int]) -> LatencyBuckets:
    k = np.array(keys, dtype=np.int64)
    order = np.argsort(k)
    k = k[order]
    return LatencyBuckets(k, k.astype(np.float64) * 1e-3, np.array(counts, float)[order])


BUCKETS = st.dictionaries(st.integers(-50, 50), st.integers(1, 40), min_size=1, max_size=25)


@settings(max_examples=80, deadline=None)
@given(BUCKETS, BUCKETS, st.sampled_from(["greater", "less", "two-sided"]))
def test_mann_whitney_on_buckets_matches_scipy_on_expanded_ties(
    canary: dict[int, int], baseline: dict[int, int], alternative: str
) -> None:
    """U and p equal scipy.stats.mannwhitneyu on the expanded tied data to 1e-9."""
    c = buckets_from(list(canary), list(canary.values()))
    b = buckets_from(list(baseline), list(baseline.values()))
    ours = mann_whitney_buckets(c, b, alternative)  # type: ignore[arg-type]
    ref = stats.mannwhitneyu(c.expand(), b.expand(), alternative=alternative, method="asymptotic")
    assert math.isclose(ours.u, float(ref.statistic), rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(ours.p_value, float(ref.pvalue), rel_tol=1e-9, abs_tol=1e-300)


def test_judge_latency_p_value_matches_scipy_on_the_windows_buckets() -> None:
    """The latency metric's p-value is scipy's one-sided Mann-Whitney on the sketch
    buckets of both windows, expanded to tied values."""
    rng = np.random.default_rng(7)
    canary, baseline = VariantWindow(), VariantWindow()
    canary.record_many("OK", rng.lognormal(math.log(0.021), 0.5, 800))
    baseline.record_many("OK", rng.lognormal(math.log(0.020), 0.5, 9000))
    canary.record_many("OK", [0.0, 0.0])  # the zero bucket takes part too
    m = judge(canary, baseline, JudgeConfig(min_requests=1)).metric("latency")
    ref = stats.mannwhitneyu(
        canary.latency_buckets().expand(),
        baseline.latency_buckets().expand(),
        alternative="greater",
        method="asymptotic",
    )
    assert m.p_value is not None
    assert math.isclose(m.p_value, float(ref.pvalue), rel_tol=1e-9)
    assert math.isclose(m.details["u"], float(ref.statistic), rel_tol=1e-12)


def test_mann_whitney_on_all_tied_values_carries_no_evidence() -> None:
    """When every value falls in one bucket the variance is 0: p = 1."""
    one = buckets_from([3], [10])
    assert mann_whitney_buckets(one, buckets_from([3], [5])).p_value == 1.0
    with pytest.raises(ValueError):
        mann_whitney_buckets(one, buckets_from([3], [0]))

"""Unit tests for the shadow report (sidecar.core.shadow.report)."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.core.shadow import (
    Comparison,
    Estimate,
    LatencyOutlier,
    NoiseAdjustment,
    Recommendation,
    ShadowAnalysis,
    ShadowRecorder,
    ShadowSummary,
    ShadowThresholds,
    analyse_shadow,
)
from sidecar.core.stats import difference_interval, wilson_interval

TOL = 1e-9


def summary(
    compared: int,
    agreed: int,
    *,
    errors: dict[str, int] | None = None,
    sent: int | None = None,
    comparator: str = "top1",
    primary_p95: float | None = 0.100,
    shadow_p95: float | None = 0.110,
    ratio_p95: float | None = 1.10,
    variant: str = "candidate",
) -> ShadowSummary:
    """A summary with exactly these numbers (sent defaults to compared + errors)."""
    errors = errors or {}
    return ShadowSummary(
        shadow_variant=variant,
        comparator=comparator,
        sampled=compared + sum(errors.values()),
        sent=compared + sum(errors.values()) if sent is None else sent,
        dropped=0,
        compared=compared,
        agreed=agreed,
        agreement_rate=agreed / compared if compared else None,
        errors_by_status=MappingProxyType(errors),
        latency_count=compared,
        primary_p50=None if primary_p95 is None else primary_p95 / 2,
        primary_p95=primary_p95,
        shadow_p50=None if shadow_p95 is None else shadow_p95 / 2,
        shadow_p95=shadow_p95,
        ratio_p50=None if ratio_p95 is None else 1.0,
        ratio_p95=ratio_p95,
        examples=(),
        in_flight=0,
    )


def line(analysis: ShadowAnalysis, prefix: str) -> str:
    (found,) = [r for r in analysis.reasons if r.startswith(prefix)]
    return found


# ------------------------------------------------------------------ each recommendation


def test_insufficient_data_says_how_many_more() -> None:
    """Fewer than min_comparisons comparisons: INSUFFICIENT_DATA with the count missing."""
    a = analyse_shadow(summary(200, 190), primary_error_rate=0.001)
    assert a.recommendation is Recommendation.INSUFFICIENT_DATA
    assert a.reasons[0] == "insufficient data: 200 of 1000 comparisons; 800 more needed"
    # The other checks still report their (provisional) numbers.
    assert line(a, "agreement:").startswith("agreement: 95.00% (190 of 200; 95% Wilson ")
    assert line(a, "agreement:").endswith("; provisional: 200 of 1000 comparisons")
    assert a.agreement is not None and a.agreement.value == 0.95


def test_exactly_min_comparisons_is_enough() -> None:
    """min_comparisons comparisons are enough (the check is 'fewer than')."""
    a = analyse_shadow(summary(1000, 990), primary_error_rate=0.0)
    assert a.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert a.reasons[0] == "data: 1000 comparisons (needs >= 1000): ok"


def test_fix_errors_with_the_rates_and_the_limit() -> None:
    """Shadow error rate above max(2 x primary, floor): FIX_ERRORS, naming rates, limit and
    the commonest statuses."""
    a = analyse_shadow(
        summary(2000, 1900, errors={"UNAVAILABLE": 40, "INTERNAL": 5}), primary_error_rate=0.001
    )
    assert a.recommendation is Recommendation.FIX_ERRORS
    assert a.error_rate == pytest.approx(45 / 2045)
    assert a.primary_error_rate == 0.001
    assert line(a, "errors:") == (
        "errors: shadow error rate 2.20% (45 of 2045 calls: UNAVAILABLE 40, INTERNAL 5) vs "
        "primary 0.10%; limit 0.50% = max(2 x primary, floor 0.50%): too high"
    )


@pytest.mark.parametrize(
    ("errors", "primary", "expected"),
    [
        (40, 0.010, Recommendation.PROMOTE_TO_CANARY),  # 40/2000 = 2% = 2 x 1%: at the limit
        (41, 0.010, Recommendation.FIX_ERRORS),  # 2.05% > 2%
        (10, 0.0, Recommendation.PROMOTE_TO_CANARY),  # 0.5% = the floor
        (11, 0.0, Recommendation.FIX_ERRORS),
        (10, None, Recommendation.PROMOTE_TO_CANARY),  # unknown primary: the floor
        (11, None, Recommendation.FIX_ERRORS),
    ],
)
def test_error_limit_boundaries(
    errors: int, primary: float | None, expected: Recommendation
) -> None:
    """The error rate passes at the limit and fails above it, like the rollout gate."""
    s = summary(2000 - errors, 2000 - errors, errors={"UNAVAILABLE": errors})
    a = analyse_shadow(s, primary_error_rate=primary)
    assert a.recommendation is expected
    assert a.error_rate == errors / 2000


def test_a_shadow_that_always_fails_is_told_to_fix_errors() -> None:
    """Errors are judged on calls: 1500 failed calls and no comparison give FIX_ERRORS, not
    an endless INSUFFICIENT_DATA; with fewer calls than min_comparisons it is provisional."""
    a = analyse_shadow(summary(0, 0, errors={"UNAVAILABLE": 1500}), primary_error_rate=0.0)
    assert a.recommendation is Recommendation.FIX_ERRORS
    assert a.agreement is None and a.effective_agreement is None
    assert a.reasons[0] == "insufficient data: 0 of 1000 comparisons; 1000 more needed"
    assert "100.00% (1500 of 1500 calls: UNAVAILABLE 1500)" in line(a, "errors:")
    assert line(a, "agreement:") == "agreement: no comparisons yet: not checked"

    early = analyse_shadow(summary(0, 0, errors={"UNAVAILABLE": 500}), primary_error_rate=0.0)
    assert early.recommendation is Recommendation.INSUFFICIENT_DATA
    assert line(early, "errors:").endswith("too high (provisional: 500 of 1000 calls)")


def test_investigate_disagreement_confidently_below() -> None:
    """80% agreement vs a minimum of 85%: INVESTIGATE, and even the upper bound is below."""
    a = analyse_shadow(summary(2000, 1600), primary_error_rate=0.0)
    assert a.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT
    assert a.effective_agreement == 0.8
    assert line(a, "agreement:") == (
        "agreement: 80.00% (1600 of 2000; 95% Wilson 78.19% to 81.69%): below the minimum "
        "85.00%, confidently (upper bound 81.69%)"
    )


def test_investigate_disagreement_not_yet_conclusive() -> None:
    """The point estimate decides (as in the rollout gate); when the interval still reaches
    the minimum the reason says it is not yet conclusive."""
    a = analyse_shadow(summary(1000, 845), primary_error_rate=0.0)
    assert a.agreement is not None and a.agreement.upper >= 0.85
    assert a.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT
    assert "below the minimum 85.00%, not yet conclusive (upper bound" in line(a, "agreement:")

    ok = analyse_shadow(summary(1000, 855), primary_error_rate=0.0)
    assert ok.agreement is not None and ok.agreement.lower < 0.85
    assert ok.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert "ok (>= 85.00%; lower bound" in line(ok, "agreement:")


def test_optimise_latency_uses_the_ratio_of_p95s() -> None:
    """shadow p95 / primary p95 above 1.5 (the rollout gate's measure): OPTIMISE_LATENCY
    with the ratio, both p95s and, for reading, the p95 of per-pair ratios."""
    a = analyse_shadow(
        summary(2000, 1980, primary_p95=0.100, shadow_p95=0.250, ratio_p95=2.4),
        primary_error_rate=0.0,
    )
    assert a.recommendation is Recommendation.OPTIMISE_LATENCY
    assert line(a, "latency:") == (
        "latency: p95 ratio 2.50 (shadow p95 / primary p95; shadow p95 250.0 ms, "
        "primary p95 100.0 ms; p95 of per-pair ratios 2.40) vs max 1.5: too slow"
    )


def test_latency_falls_back_to_the_per_pair_ratio() -> None:
    """Without both p95s the p95 of per-pair ratios is used; without either the check is
    skipped."""
    a = analyse_shadow(
        summary(2000, 1980, primary_p95=None, shadow_p95=None, ratio_p95=3.0),
        primary_error_rate=0.0,
    )
    assert a.recommendation is Recommendation.OPTIMISE_LATENCY
    assert "p95 ratio 3.00 (p95 of per-pair shadow/primary" in line(a, "latency:")

    none = analyse_shadow(
        summary(2000, 1980, primary_p95=0.0, shadow_p95=0.3, ratio_p95=None),
        primary_error_rate=0.0,
    )
    assert none.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert line(none, "latency:") == "latency: no latency ratio recorded: not checked"


def test_ratio_of_p95s_decides_as_in_the_rollout_gate() -> None:
    """Per-pair ratios carry both calls' jitter: a per-pair p95 of 2.0 does not count when
    the shadow's p95 is only 1.2 times the primary's (the gate would pass it too)."""
    a = analyse_shadow(
        summary(2000, 1980, primary_p95=0.1, shadow_p95=0.12, ratio_p95=2.0),
        primary_error_rate=0.0,
    )
    assert a.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert "p95 ratio 1.20 (shadow p95 / primary p95" in line(a, "latency:")


def test_promote_to_canary_when_every_check_passes() -> None:
    """Enough data, few errors, high agreement, latency in bounds: PROMOTE_TO_CANARY, with
    one 'ok' line per check in order."""
    a = analyse_shadow(summary(5000, 4900, errors={"CANCELLED": 3}), primary_error_rate=0.002)
    assert a.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert len(a.reasons) == 4
    assert [r.split(":")[0] for r in a.reasons] == ["data", "errors", "agreement", "latency"]
    assert all(r.endswith("ok") or "ok (>=" in r for r in a.reasons), a.reasons
    assert a.noise is None
    assert a.effective_agreement == a.summary.agreement_rate == 0.98


# ------------------------------------------------------------------ ordering


def test_errors_beat_disagreement_and_latency() -> None:
    """A candidate failing every check is told to fix its errors first."""
    s = summary(2000, 1000, errors={"INTERNAL": 500}, shadow_p95=0.9, ratio_p95=9.0)
    a = analyse_shadow(s, primary_error_rate=0.0)
    assert a.recommendation is Recommendation.FIX_ERRORS
    assert line(a, "agreement:").endswith("confidently (upper bound 52.19%)")
    assert line(a, "latency:").endswith("too slow")


def test_disagreement_beats_latency() -> None:
    """Disagreement and slowness: INVESTIGATE_DISAGREEMENT first."""
    a = analyse_shadow(summary(2000, 1000, shadow_p95=0.9, ratio_p95=9.0), primary_error_rate=0.0)
    assert a.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT


def test_insufficient_data_beats_disagreement_and_latency() -> None:
    """With too few comparisons a bad agreement or latency is only provisional."""
    a = analyse_shadow(summary(100, 10, shadow_p95=0.9, ratio_p95=9.0), primary_error_rate=0.0)
    assert a.recommendation is Recommendation.INSUFFICIENT_DATA


# ------------------------------------------------------------------ noise


def test_noise_is_subtracted_from_the_candidates_disagreement() -> None:
    """10% candidate disagreement minus 8% noise = 2% adjusted: effective agreement 98%."""
    candidate = summary(10_000, 9_000)
    noise = summary(10_000, 9_200, variant="stable")
    a = analyse_shadow(candidate, primary_error_rate=0.0, noise=noise)
    assert a.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert a.noise is not None
    assert (a.noise.compared, a.noise.agreed) == (10_000, 9_200)
    assert a.noise.noise_disagreement.value == pytest.approx(0.08)
    assert a.noise.candidate_disagreement.value == pytest.approx(0.10)
    assert a.noise.adjusted_disagreement.value == pytest.approx(0.02)
    assert a.noise.adjusted_disagreement.method == "newcombe"
    assert a.effective_agreement == pytest.approx(0.98)
    assert a.agreement is not None and a.agreement.value == 0.9  # the raw rate is kept
    text = line(a, "agreement:")
    assert "noise mirror disagreement 8.00% (800 of 10000)" in text
    assert "adjusted disagreement 2.00% (95% Newcombe " in text
    assert "effective agreement 98.00%: ok (>= 85.00%)" in text


def test_noise_turns_investigate_into_promote() -> None:
    """The same candidate is INVESTIGATE on its raw agreement and PROMOTE once the primary's
    own noise is subtracted: 90% vs a 95% minimum, and 80% vs the default 85%."""
    strict = ShadowThresholds(min_agreement=0.95)
    candidate = summary(10_000, 9_000)
    noise = summary(10_000, 9_200)
    raw = analyse_shadow(candidate, primary_error_rate=0.0, thresholds=strict)
    assert raw.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT
    adjusted = analyse_shadow(candidate, primary_error_rate=0.0, noise=noise, thresholds=strict)
    assert adjusted.recommendation is Recommendation.PROMOTE_TO_CANARY

    candidate80 = summary(2000, 1600)
    assert (
        analyse_shadow(candidate80, primary_error_rate=0.0).recommendation
        is Recommendation.INVESTIGATE_DISAGREEMENT
    )
    with_noise = analyse_shadow(candidate80, primary_error_rate=0.0, noise=summary(2000, 1840))
    assert with_noise.recommendation is Recommendation.PROMOTE_TO_CANARY
    assert with_noise.effective_agreement == pytest.approx(0.88)


def test_noise_cannot_hide_a_real_disagreement() -> None:
    """30% candidate disagreement, 5% noise: 75% effective agreement is still INVESTIGATE."""
    a = analyse_shadow(summary(4000, 2800), primary_error_rate=0.0, noise=summary(4000, 3800))
    assert a.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT
    assert a.effective_agreement == pytest.approx(0.75)
    assert "effective agreement 75.00%: below the minimum 85.00%, confidently" in line(
        a, "agreement:"
    )


def test_more_noise_than_candidate_disagreement_clamps_at_full_agreement() -> None:
    """A negative adjusted disagreement is reported as is; the effective agreement is 1."""
    a = analyse_shadow(summary(2000, 1900), primary_error_rate=0.0, noise=summary(2000, 1800))
    assert a.noise is not None
    assert a.noise.adjusted_disagreement.value == pytest.approx(-0.05)
    assert a.noise.adjusted_disagreement.upper < 0
    assert a.effective_agreement == 1.0
    assert a.recommendation is Recommendation.PROMOTE_TO_CANARY


def test_noise_with_too_few_comparisons_is_not_subtracted() -> None:
    """A noise mirror below min_comparisons is ignored (and the reason says so)."""
    a = analyse_shadow(summary(2000, 1600), primary_error_rate=0.0, noise=summary(999, 900))
    assert a.noise is None
    assert a.effective_agreement == 0.8
    assert a.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT
    assert "noise not subtracted: the noise mirror has 999 of 1000 comparisons" in line(
        a, "agreement:"
    )


def test_noise_with_another_comparator_is_not_subtracted() -> None:
    """Disagreement rates under different comparators are not comparable."""
    a = analyse_shadow(
        summary(2000, 1600, comparator="top1"),
        primary_error_rate=0.0,
        noise=summary(2000, 1840, comparator="exact"),
    )
    assert a.noise is None
    assert a.recommendation is Recommendation.INVESTIGATE_DISAGREEMENT
    assert "the noise mirror compares with 'exact', the candidate with 'top1'" in line(
        a, "agreement:"
    )


def test_noise_for_a_candidate_without_comparisons() -> None:
    """Nothing compared yet: no agreement, no adjustment, whatever the noise mirror has."""
    a = analyse_shadow(summary(0, 0), primary_error_rate=None, noise=summary(2000, 1900))
    assert (a.agreement, a.noise, a.effective_agreement, a.error_rate) == (None, None, None, None)
    assert a.recommendation is Recommendation.INSUFFICIENT_DATA
    assert line(a, "errors:") == "errors: no shadow calls sent yet: not checked"


# ------------------------------------------------------------------ intervals


def _cases() -> list[tuple[int, int, int, int, float]]:
    """(candidate compared, agreed, noise compared, agreed, alpha): random and edge cases."""
    rng = np.random.default_rng(20240611)
    cases = [
        (1000, 1000, 1000, 1000, 0.05),  # no disagreement anywhere
        (1000, 0, 1000, 1000, 0.05),  # the candidate always disagrees
        (1, 0, 1000, 1, 0.05),
        (1, 1, 1000, 0, 0.10),  # the noise mirror always disagrees
        (5000, 4999, 5000, 4990, 0.01),
        (1200, 1100, 40_000, 39_000, 0.2),
    ]
    while len(cases) < 60:
        nc = int(rng.integers(1, 50_000))
        nn = int(rng.integers(1000, 50_000))
        cases.append(
            (
                nc,
                int(rng.binomial(nc, rng.uniform(0.5, 1.0))),
                nn,
                int(rng.binomial(nn, rng.uniform(0.8, 1.0))),
                float(rng.choice([0.01, 0.05, 0.1, 0.2])),
            )
        )
    return cases


def test_agreement_interval_matches_statsmodels_wilson() -> None:
    """The agreement Estimate is statsmodels proportion_confint(method='wilson') to 1e-9."""
    for nc, ac, _, _, alpha in _cases():
        a = analyse_shadow(
            summary(nc, ac), primary_error_rate=0.0, thresholds=ShadowThresholds(alpha=alpha)
        )
        assert a.agreement is not None
        low, upp = proportion_confint(ac, nc, alpha=alpha, method="wilson")
        assert a.agreement.value == ac / nc
        assert a.agreement.lower == pytest.approx(low, abs=TOL), (nc, ac, alpha)
        assert a.agreement.upper == pytest.approx(upp, abs=TOL), (nc, ac, alpha)
        assert a.agreement.level == pytest.approx(1 - alpha)
        assert a.agreement.method == "wilson"


def test_noise_intervals_match_statsmodels() -> None:
    """Both disagreement rates are statsmodels Wilson intervals, and the adjusted one is
    confint_proportions_2indep(compare='diff', method='newcomb') of candidate minus noise
    (and the existing difference_interval), to 1e-9."""
    for nc, ac, nn, an, alpha in _cases():
        t = ShadowThresholds(alpha=alpha)
        a = analyse_shadow(
            summary(nc, ac), primary_error_rate=0.0, noise=summary(nn, an), thresholds=t
        )
        assert a.noise is not None
        dc, dn = nc - ac, nn - an
        for est, (x, n) in (
            (a.noise.candidate_disagreement, (dc, nc)),
            (a.noise.noise_disagreement, (dn, nn)),
        ):
            low, upp = proportion_confint(x, n, alpha=alpha, method="wilson")
            assert est.value == x / n
            assert (est.lower, est.upper) == pytest.approx((low, upp), abs=TOL)
            assert est.method == "wilson"
        adj = a.noise.adjusted_disagreement
        low, upp = confint_proportions_2indep(
            dc, nc, dn, nn, compare="diff", method="newcomb", alpha=alpha
        )
        assert adj.value == pytest.approx(dc / nc - dn / nn, abs=1e-15)
        assert adj.lower == pytest.approx(float(low), abs=TOL), (nc, ac, nn, an, alpha)
        assert adj.upper == pytest.approx(float(upp), abs=TOL), (nc, ac, nn, an, alpha)
        ours = difference_interval(dn, nn, dc, nc, alpha)
        assert (adj.lower, adj.upper, adj.level) == (ours.lower, ours.upper, ours.confidence)
        assert adj.level == pytest.approx(1 - alpha)
        assert a.effective_agreement == pytest.approx(1 - max(0.0, dc / nc - dn / nn), abs=1e-15)


def test_wilson_of_disagreement_mirrors_wilson_of_agreement() -> None:
    """Sanity: the disagreement interval is 1 minus the agreement interval, flipped."""
    a = analyse_shadow(summary(3000, 2700), primary_error_rate=0.0, noise=summary(3000, 2900))
    assert a.agreement is not None and a.noise is not None
    d = a.noise.candidate_disagreement
    assert d.lower == pytest.approx(1 - a.agreement.upper, abs=1e-12)
    assert d.upper == pytest.approx(1 - a.agreement.lower, abs=1e-12)
    w = wilson_interval(2700, 3000)
    assert (a.agreement.lower, a.agreement.upper) == (w.lower, w.upper)


# ------------------------------------------------------------------ inputs and shapes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_comparisons": 0},
        {"min_comparisons": 10.0},
        {"min_comparisons": True},
        {"min_agreement": 1.01},
        {"min_agreement": -0.1},
        {"min_agreement": float("nan")},
        {"max_p95_ratio": 0.0},
        {"max_p95_ratio": float("inf")},
        {"max_error_ratio": -1.0},
        {"error_rate_floor": 1.5},
        {"alpha": 0.0},
        {"alpha": 1.0},
        {"alpha": "0.05"},
    ],
)
def test_bad_thresholds_raise(kwargs: dict[str, Any]) -> None:
    """Invalid thresholds are ValueErrors at construction."""
    with pytest.raises(ValueError):
        ShadowThresholds(**kwargs)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_primary_error_rate_raises(rate: float) -> None:
    """The primary error rate is None or a rate in [0, 1]."""
    with pytest.raises(ValueError, match="primary_error_rate"):
        analyse_shadow(summary(2000, 1900), primary_error_rate=rate)


def test_error_rate_denominator_after_a_reset() -> None:
    """Calls started before a reset finish after it: the rate stays within [0, 1]."""
    s = summary(5, 5, errors={"UNAVAILABLE": 1}, sent=0)
    a = analyse_shadow(s, primary_error_rate=0.0)
    assert a.error_rate == pytest.approx(1 / 6)


def test_recommendation_values_are_the_proto_numbers() -> None:
    """Recommendation.X.value is the number of RECOMMEND_X in ShadowRecommendation."""
    for r in Recommendation:
        assert cpb.ShadowRecommendation.Value(f"RECOMMEND_{r.name}") == r.value
    assert len(Recommendation) == len(cpb.ShadowRecommendation.keys()) - 1


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (Estimate, cpb.Estimate),
        (LatencyOutlier, cpb.LatencyOutlier),
        (NoiseAdjustment, cpb.NoiseAdjustment),
    ],
)
def test_result_dataclasses_mirror_the_proto_messages(cls: Any, message: Any) -> None:
    """Field names and order are those of the proto message, for a 1:1 conversion."""
    assert [f.name for f in dataclasses.fields(cls)] == [f.name for f in message.DESCRIPTOR.fields]


def test_analysis_fields_cover_the_report() -> None:
    """Every ShadowReport field is a ShadowAnalysis field or comes from its summary."""
    analysis = {f.name for f in dataclasses.fields(ShadowAnalysis)}
    summary_fields = {f.name for f in dataclasses.fields(ShadowSummary)}
    from_latency = {"latency"}  # LatencySummary is built from the summary's p50/p95 fields
    missing = (
        {f.name for f in cpb.ShadowReport.DESCRIPTOR.fields}
        - analysis
        - summary_fields
        - from_latency
    )
    assert missing == set()


def test_end_to_end_from_a_recorder() -> None:
    """A real recorder's summary goes through: 1200 comparisons, 3% disagreement, shadow
    30% slower, a few errors -> PROMOTE_TO_CANARY, outliers carried in the summary."""
    rec = ShadowRecorder("candidate", "top1", keep_outliers=5)
    for i in range(1200):
        rec.sampled()
        rec.started()
        primary = 0.010 + 0.00001 * (i % 100)
        shadow = primary * (1.3 if i != 600 else 4.0)
        rec.finished_compared(
            Comparison(i % 33 != 0, "differ"),
            primary,
            shadow,
            request_id=f"r{i}",
            targeting_key="k",
            primary_variant="stable",
            primary={},
            shadow={},
            unix_time=float(i),
        )
    for _ in range(3):
        rec.started()
        rec.finished_error("DEADLINE_EXCEEDED")
    a = analyse_shadow(rec.summary(), primary_error_rate=0.001)
    assert a.recommendation is Recommendation.PROMOTE_TO_CANARY, a.reasons
    assert a.summary.compared == 1200
    assert a.error_rate == pytest.approx(3 / 1203)
    assert a.summary.latency_outliers[0].request_id == "r600"
    assert a.summary.latency_outliers[0].ratio == pytest.approx(4.0)
    assert a.summary.ratio_p95 == pytest.approx(1.3, rel=0.011)  # the sketch's accuracy
    assert f"p95 of per-pair ratios {a.summary.ratio_p95:.2f}" in line(a, "latency:")

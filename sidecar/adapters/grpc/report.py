"""Pure translation of the experiment, shadow and drift results into Control messages.

Bounded: ids and keys a client chose (request ids, targeting keys, tensor names) are
clipped; `fit_shadow_report` / `fit_experiment_report` leave out the largest optional
parts (history, examples, drift bins) when a report would exceed the answer budget.
"""

from __future__ import annotations

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.core.experiment.analysis import (
    ArmResult,
    ExperimentResult,
    ExperimentVerdict,
    MetricResult,
    SegmentMixCheck,
    SegmentResult,
)
from sidecar.core.experiment.drift import DriftResult
from sidecar.core.limits import CONTROL_LIMITS, ControlLimits, clip
from sidecar.core.shadow import ShadowSummary
from sidecar.core.shadow.report import Recommendation, ShadowAnalysis
from sidecar.core.stats.intervals import Estimate

_VERDICTS = {
    ExperimentVerdict.SHIP_B: cpb.VERDICT_SHIP_B,
    ExperimentVerdict.KEEP_A: cpb.VERDICT_KEEP_A,
    ExperimentVerdict.EQUIVALENT: cpb.VERDICT_EQUIVALENT,
    ExperimentVerdict.CONTINUE: cpb.VERDICT_CONTINUE,
    ExperimentVerdict.BLOCKED: cpb.VERDICT_BLOCKED,
}
_RECOMMENDATIONS = {
    Recommendation.INSUFFICIENT_DATA: cpb.RECOMMEND_INSUFFICIENT_DATA,
    Recommendation.FIX_ERRORS: cpb.RECOMMEND_FIX_ERRORS,
    Recommendation.INVESTIGATE_DISAGREEMENT: cpb.RECOMMEND_INVESTIGATE_DISAGREEMENT,
    Recommendation.OPTIMISE_LATENCY: cpb.RECOMMEND_OPTIMISE_LATENCY,
    Recommendation.PROMOTE_TO_CANARY: cpb.RECOMMEND_PROMOTE_TO_CANARY,
}


def estimate(e: Estimate) -> cpb.Estimate:
    return cpb.Estimate(value=e.value, lower=e.lower, upper=e.upper, level=e.level, method=e.method)


def _arm(a: ArmResult) -> cpb.ArmResult:
    return cpb.ArmResult(
        variant=a.variant,
        n=a.n,
        successes=a.successes,
        value=estimate(a.value),
        std_dev=a.std_dev,
        users=a.users,
        keyless=a.keyless,
    )


def _segment(s: SegmentResult) -> cpb.SegmentResult:
    return cpb.SegmentResult(
        segment=s.segment,
        control=_arm(s.control),
        treatment=_arm(s.treatment),
        difference=estimate(s.difference),
        p_value=s.p_value,
        adjusted_p_value=s.adjusted_p_value,
        significant=s.significant,
        winner=s.winner,
    )


def _metric(m: MetricResult) -> cpb.MetricResult:
    return cpb.MetricResult(
        metric=m.metric,
        kind=m.kind,
        higher_is_better=m.higher_is_better,
        minimum_effect=m.minimum_effect,
        control=_arm(m.control),
        treatment=_arm(m.treatment),
        difference=estimate(m.difference),
        relative_lift=estimate(m.relative_lift),
        p_value=m.p_value,
        fixed_horizon_p_value=m.fixed_horizon_p_value,
        verdict=_VERDICTS[m.verdict],
        reason=m.reason,
        additional_per_arm=m.additional_per_arm,
        planned_per_arm=m.planned_per_arm,
        correction=m.correction,
        segments=[_segment(s) for s in m.segments],
        simpson_warning=m.simpson_warning,
        history=[
            cpb.LookPoint(
                unix_time=p.unix_time,
                n_control=p.n_control,
                n_treatment=p.n_treatment,
                difference=p.difference,
                lower=p.lower,
                upper=p.upper,
                p_value=p.p_value,
            )
            for p in m.history
        ],
        tau_squared=m.tau_squared,
        alpha=m.alpha,
        unit=m.unit,
        design_effect=m.design_effect,
        planned_control=m.planned_control,
        planned_treatment=m.planned_treatment,
        expected_seconds=m.expected_seconds,
    )


_ID_BYTES = CONTROL_LIMITS.key_bytes


def _f(value: float | None) -> float:
    return float(value) if value is not None else 0.0


def shadow_report(
    summary: ShadowSummary | None, analysis: ShadowAnalysis | None = None
) -> cpb.ShadowReport:
    if summary is None:
        return cpb.ShadowReport()
    message = cpb.ShadowReport(
        shadow_variant=summary.shadow_variant,
        comparator=summary.comparator,
        sampled=summary.sampled,
        sent=summary.sent,
        dropped=summary.dropped,
        compared=summary.compared,
        agreed=summary.agreed,
        agreement_rate=_f(summary.agreement_rate),
        errors_by_status=dict(summary.errors_by_status),
        latency=cpb.LatencySummary(
            count=summary.latency_count,
            primary_p50_seconds=_f(summary.primary_p50),
            primary_p95_seconds=_f(summary.primary_p95),
            shadow_p50_seconds=_f(summary.shadow_p50),
            shadow_p95_seconds=_f(summary.shadow_p95),
            ratio_p50=_f(summary.ratio_p50),
            ratio_p95=_f(summary.ratio_p95),
        ),
        examples=[
            cpb.Disagreement(
                request_id=clip(e.request_id, _ID_BYTES),
                targeting_key=clip(e.targeting_key, _ID_BYTES),
                primary_variant=e.primary_variant,
                detail=e.detail,
                primary_output=e.primary_output,
                shadow_output=e.shadow_output,
                unix_time=e.unix_time,
            )
            for e in summary.examples
        ],
        in_flight=summary.in_flight,
        latency_outliers=[
            cpb.LatencyOutlier(
                request_id=clip(o.request_id, _ID_BYTES),
                targeting_key=clip(o.targeting_key, _ID_BYTES),
                primary_seconds=o.primary_seconds,
                shadow_seconds=o.shadow_seconds,
                ratio=o.ratio,
                unix_time=o.unix_time,
            )
            for o in summary.latency_outliers
        ],
    )
    if analysis is None:
        return message
    if analysis.agreement is not None:
        message.agreement.CopyFrom(estimate(analysis.agreement))
    message.error_rate = _f(analysis.error_rate)
    message.primary_error_rate = _f(analysis.primary_error_rate)
    message.recommendation = _RECOMMENDATIONS[analysis.recommendation]
    message.reasons.extend(analysis.reasons)
    noise = analysis.noise
    if noise is not None:
        message.noise.CopyFrom(
            cpb.NoiseAdjustment(
                compared=noise.compared,
                agreed=noise.agreed,
                noise_disagreement=estimate(noise.noise_disagreement),
                candidate_disagreement=estimate(noise.candidate_disagreement),
                adjusted_disagreement=estimate(noise.adjusted_disagreement),
            )
        )
    return message


def drift_report(result: DriftResult | None, sampled: int = 0, dropped: int = 0) -> cpb.DriftReport:
    if result is None:
        return cpb.DriftReport(enabled=False)
    return cpb.DriftReport(
        enabled=True,
        moderate_threshold=result.moderate,
        major_threshold=result.major,
        sampled=sampled,
        dropped=dropped,
        reference=result.reference,
        worst_level=result.worst_level,
        features=[
            cpb.DriftFeature(
                name=clip(f.name, _ID_BYTES),
                kind=f.kind,
                variant=f.variant,
                reference_n=f.reference_n,
                current_n=f.current_n,
                psi=f.psi,
                level=f.level,
                ks_statistic=f.ks_statistic,
                ks_p_value=f.ks_p_value,
                edges=list(f.edges),
                reference_share=list(f.reference_share),
                current_share=list(f.current_share),
                categorical=f.categorical,
            )
            for f in result.features
        ],
    )


def experiment_report(
    result: ExperimentResult,
    *,
    revision: int,
    shadow: cpb.ShadowReport | None = None,
    drift: cpb.DriftReport | None = None,
) -> cpb.ExperimentReport:
    srm = result.srm
    return cpb.ExperimentReport(
        generated_unix_time=result.generated_unix,
        epoch=result.epoch,
        started_unix_time=result.started_unix,
        control_variant=result.control,
        treatment_variant=result.treatment,
        srm=cpb.SampleRatioCheck(
            arms=[
                cpb.ArmCount(
                    variant=a.variant,
                    observed=a.observed,
                    observed_share=a.observed_share,
                    expected_share=a.expected_share,
                )
                for a in srm.arms
            ],
            chi_square=srm.chi_square,
            p_value=srm.p_value,
            threshold=srm.threshold,
            mismatch=srm.mismatch,
            detail=srm.detail,
            unit=srm.unit,
        ),
        metrics=[_metric(m) for m in result.metrics],
        shadow=shadow,
        drift=drift,
        warnings=list(result.warnings),
        looks=result.looks,
        last_look_unix_time=result.last_look_unix,
        revision=revision,
        unit=result.unit,
        alpha=result.alpha,
        segment_mix=_segment_mix(result.segment_mix),
    )


def _segment_mix(mix: SegmentMixCheck | None) -> cpb.SegmentMixCheck | None:
    if mix is None:
        return None
    return cpb.SegmentMixCheck(
        p_value=mix.p_value,
        chi_square=mix.chi_square,
        checked=mix.checked,
        mismatch=mix.mismatch,
        detail=mix.detail,
    )


def fit_shadow_report(
    report: cpb.ShadowReport, budget: int, limits: ControlLimits = CONTROL_LIMITS
) -> cpb.ShadowReport:
    """`report` within `budget` bytes: free texts clipped; when still too large, the
    examples and then the latency outliers are left out, and a reason says so."""
    text = limits.shown_text_bytes
    for example in report.examples:
        example.detail = clip(example.detail, text)
        example.primary_output = clip(example.primary_output, text)
        example.shadow_output = clip(example.shadow_output, text)
    for field in ("examples", "latency_outliers"):
        if report.ByteSize() <= budget:
            break
        report.ClearField(field)
        report.reasons.append(f"{field} left out: the report would exceed the message limit")
    return report


def fit_experiment_report(report: cpb.ExperimentReport, budget: int) -> cpb.ExperimentReport:
    """`report` within `budget` bytes: when too large, the per-look history, then the
    shadow examples and outliers, then the drift bins are left out, and a warning says so."""

    def clear_history() -> None:
        for metric in report.metrics:
            metric.ClearField("history")

    def clear_shadow_lists() -> None:
        report.shadow.ClearField("examples")
        report.shadow.ClearField("latency_outliers")

    def clear_drift_bins() -> None:
        for feature in report.drift.features:
            for field in ("edges", "reference_share", "current_share"):
                feature.ClearField(field)

    steps = (
        ("the per-look history", clear_history),
        ("the shadow examples", clear_shadow_lists),
        ("the drift bins", clear_drift_bins),
    )
    for what, leave_out in steps:
        if report.ByteSize() <= budget:
            break
        leave_out()
        report.warnings.append(f"{what} left out: the report would exceed the message limit")
    return report

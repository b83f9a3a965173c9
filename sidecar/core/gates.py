"""Rollout gates: pure assessment of a stage from plain readings.

The rollout controller (`sidecar/app/rollout.py`) measures (windows, the shadow report,
the A/B and drift monitors), hands the readings to the functions here, and acts on the
answer. Like Argo Rollouts' analysis (`utils/evaluate/evaluate.go`): every gate is
PASS, FAIL or WAIT; the stage's status is the worst of its gates (any FAIL fails, else any
WAIT holds, else it passes); nothing measured holds (WAIT), it never passes.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.core.canary.judge import Verdict
from sidecar.core.rollout import Stage
from sidecar.core.shadow.report import ShadowAnalysis, ShadowThresholds

__all__ = [
    "Evaluation",
    "GateReading",
    "GateResult",
    "GateStatus",
    "ShadowReading",
    "canary_gates",
    "duration_gate",
    "external_gate",
    "failure_reason",
    "shadow_gates",
    "worst",
]


class GateStatus(enum.StrEnum):
    """A gate's (and a stage's) outcome. WAIT holds the stage: too little data, or a
    monitor that has not decided yet."""

    PASS = "PASS"
    FAIL = "FAIL"
    WAIT = "WAIT"


def worst(statuses: Iterable[GateStatus]) -> GateStatus:
    """Any FAIL -> FAIL, else any WAIT -> WAIT, else PASS; nothing measured -> WAIT."""
    seen = set(statuses)
    if not seen:
        return GateStatus.WAIT
    if GateStatus.FAIL in seen:
        return GateStatus.FAIL
    if GateStatus.WAIT in seen:
        return GateStatus.WAIT
    return GateStatus.PASS


def _status(measured: bool, ok: bool) -> GateStatus:
    """WAIT until enough is measured, then PASS or FAIL."""
    if not measured:
        return GateStatus.WAIT
    return GateStatus.PASS if ok else GateStatus.FAIL


@dataclass(frozen=True)
class GateResult:
    """One gate of a stage, as shown by GetRollout."""

    name: str
    status: GateStatus
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class GateReading:
    """What an external monitor (the A/B test, drift) says now."""

    status: GateStatus
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class Evaluation:
    """The canary judge's answer for one check, with its repeated-check analysis."""

    verdict: Verdict
    reason: str
    rollback: bool  # the analysis layer decided to roll back (e.g. failure limit reached)


@dataclass(frozen=True)
class ShadowReading:
    """What the shadow stage reads from the shadow report (:func:`analyse_shadow`)."""

    compared: int
    agreed: int
    sent: int
    errors: int
    primary_p95: float | None
    shadow_p95: float | None
    error_rate: float | None
    """The shadow report's error rate (None: no call sent), so gate and report agree."""
    effective_agreement: float | None = None
    """Agreement after subtracting the model's own noise (noise mirror), when measured."""

    @staticmethod
    def from_analysis(analysis: ShadowAnalysis) -> ShadowReading:
        s = analysis.summary
        return ShadowReading(
            compared=s.compared,
            agreed=s.agreed,
            sent=s.sent,
            errors=s.errors,
            primary_p95=s.primary_p95,
            shadow_p95=s.shadow_p95,
            error_rate=analysis.error_rate,
            effective_agreement=(
                analysis.effective_agreement if analysis.noise is not None else None
            ),
        )


def failure_reason(gates: Iterable[GateResult]) -> str:
    """The failed gates, `name: detail` joined by '; '."""
    return "; ".join(f"{g.name}: {g.detail}" for g in gates if g.status is GateStatus.FAIL)


# ---- gates every stage has -------------------------------------------------------------


def duration_gate(stage: Stage, elapsed: float) -> GateResult:
    return GateResult(
        "min_duration",
        GateStatus.PASS if elapsed >= stage.min_duration_s else GateStatus.WAIT,
        elapsed,
        stage.min_duration_s,
        f"{elapsed:.0f}s of {stage.min_duration_s:.0f}s",
    )


# ---- canary stage ----------------------------------------------------------------------


def health_gate(evaluation: Evaluation) -> GateResult:
    passed = evaluation.verdict is Verdict.PASS
    if evaluation.rollback:
        status = GateStatus.FAIL
    else:
        status = GateStatus.PASS if passed else GateStatus.WAIT
    return GateResult(
        "health",
        status,
        1.0 if passed else 0.0,
        1.0,
        f"{evaluation.verdict.value}: {evaluation.reason}",
    )


def samples_gate(stage: Stage, canary_requests: int) -> GateResult:
    return GateResult(
        "min_samples",
        GateStatus.PASS if canary_requests >= stage.min_samples else GateStatus.WAIT,
        float(canary_requests),
        float(stage.min_samples),
        f"{canary_requests} of {stage.min_samples} canary requests",
    )


def external_gate(name: str, reading: GateReading | None) -> GateResult:
    """An external monitor's reading as a gate; None (no monitor) holds the stage."""
    if reading is None:
        return GateResult(name, GateStatus.WAIT, 0.0, 0.0, f"no {name} monitor configured")
    return GateResult(name, reading.status, reading.value, reading.threshold, reading.detail)


def canary_gates(
    stage: Stage,
    elapsed: float,
    *,
    health: Evaluation,
    canary_requests: int,
    ab: GateReading | None = None,
    drift: GateReading | None = None,
) -> tuple[GateResult, ...]:
    """A canary stage: the judge's health verdict, minimum samples, the A/B and drift
    gates where the stage asks for them (None: no monitor), minimum duration."""
    gates = [health_gate(health), samples_gate(stage, canary_requests)]
    if stage.ab_gate:
        gates.append(external_gate("ab_test", ab))
    if stage.max_drift_psi > 0:
        gates.append(external_gate("drift", drift))
    return (*gates, duration_gate(stage, elapsed))


# ---- shadow stage ----------------------------------------------------------------------


def shadow_gates(
    stage: Stage,
    elapsed: float,
    *,
    reading: ShadowReading | None,
    stable_error_rate: float,
    thresholds: ShadowThresholds,
) -> tuple[GateResult, ...]:
    """A shadow stage: comparisons, agreement (noise subtracted when measured), the p95
    latency ratio, the shadow error rate against the stable's, minimum duration."""
    if reading is None:
        shadow = GateResult("shadow", GateStatus.WAIT, 0, 0, "no shadow comparison configured")
        return (shadow, duration_gate(stage, elapsed))
    enough = reading.compared >= stage.min_samples
    gates = [
        GateResult(
            "comparisons",
            GateStatus.PASS if enough else GateStatus.WAIT,
            float(reading.compared),
            float(stage.min_samples),
            f"{reading.compared} of {stage.min_samples} comparisons",
        ),
        _agreement_gate(reading, enough, thresholds),
    ]
    latency = _latency_gate(reading, enough, thresholds)
    if latency is not None:
        gates.append(latency)
    gates.append(_error_gate(stage, reading, stable_error_rate, thresholds))
    return (*gates, duration_gate(stage, elapsed))


def _agreement_gate(reading: ShadowReading, enough: bool, t: ShadowThresholds) -> GateResult:
    if not reading.compared:
        return GateResult("agreement", GateStatus.WAIT, 0.0, t.min_agreement, "no comparisons yet")
    agreement = reading.agreed / reading.compared
    note = ""
    if reading.effective_agreement is not None:
        note = f" after subtracting the model's own noise (raw {agreement:.1%})"
        agreement = reading.effective_agreement
    return GateResult(
        "agreement",
        _status(enough, agreement >= t.min_agreement),
        agreement,
        t.min_agreement,
        f"agreement {agreement:.1%}{note} (needs >= {t.min_agreement:.0%})",
    )


def _latency_gate(reading: ShadowReading, enough: bool, t: ShadowThresholds) -> GateResult | None:
    if not (reading.primary_p95 and reading.shadow_p95):
        return None
    ratio = reading.shadow_p95 / reading.primary_p95
    return GateResult(
        "shadow_p95_ratio",
        _status(enough, ratio <= t.max_p95_ratio),
        ratio,
        t.max_p95_ratio,
        f"shadow p95 {reading.shadow_p95 * 1e3:.1f} ms vs stable "
        f"{reading.primary_p95 * 1e3:.1f} ms (ratio {ratio:.2f}, needs <= {t.max_p95_ratio})",
    )


def _error_gate(
    stage: Stage, reading: ShadowReading, stable_rate: float, t: ShadowThresholds
) -> GateResult:
    shadow_rate = reading.error_rate or 0.0
    limit = max(t.max_error_ratio * stable_rate, t.error_rate_floor)
    # Judged on calls sent, not on comparisons: a shadow whose calls all fail is never
    # compared, and must fail the stage rather than hold it forever.
    return GateResult(
        "shadow_error_rate",
        _status(reading.sent >= stage.min_samples, shadow_rate <= limit),
        shadow_rate,
        limit,
        f"shadow errors {shadow_rate:.2%} vs stable {stable_rate:.2%} (limit {limit:.2%})",
    )

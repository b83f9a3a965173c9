"""The pure gate assessment (sidecar.core.gates): worst-of, the canary and shadow stage
gates from plain readings, and one shadow error formula shared with the shadow report."""

from __future__ import annotations

import pytest

from sidecar.core.canary.judge import Verdict
from sidecar.core.gates import (
    Evaluation,
    GateReading,
    GateStatus,
    ShadowReading,
    canary_gates,
    duration_gate,
    failure_reason,
    shadow_gates,
    worst,
)
from sidecar.core.rollout import Stage, StageKind
from sidecar.core.shadow import Comparison, ShadowRecorder, analyse_shadow
from sidecar.core.shadow.report import ShadowThresholds, shadow_error_rate

P, F, W = GateStatus.PASS, GateStatus.FAIL, GateStatus.WAIT
CANARY = Stage("c5", StageKind.CANARY, 500, min_duration_s=60.0, min_samples=100)
SHADOW = Stage("shadow", StageKind.SHADOW, 0, min_duration_s=0.0, min_samples=50)
HEALTHY = Evaluation(Verdict.PASS, "no difference", rollback=False)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), W),  # nothing measured holds, never passes
        ((P,), P),
        ((P, P), P),
        ((P, W), W),
        ((W, F, P), F),
        ((F,), F),
    ],
)
def test_worst_fails_on_any_fail_then_waits_on_any_wait(
    statuses: tuple[GateStatus, ...], expected: GateStatus
) -> None:
    """Any FAIL -> FAIL, else any WAIT -> WAIT, else PASS; an empty list is WAIT."""
    assert worst(statuses) is expected


def test_gate_status_is_an_enum_with_the_proto_names() -> None:
    """The three statuses are enum members whose values are the names the protos use."""
    assert [s.value for s in GateStatus] == ["PASS", "FAIL", "WAIT"]


def test_duration_gate_waits_until_the_minimum_duration() -> None:
    """min_duration waits below the stage's minimum and passes at it."""
    assert duration_gate(CANARY, 59.9).status is W
    assert duration_gate(CANARY, 60.0).status is P


def test_canary_stage_passes_only_when_every_gate_passes() -> None:
    """Healthy judge + enough samples + duration over: PASS; too few samples: WAIT."""
    gates = canary_gates(CANARY, 61.0, health=HEALTHY, canary_requests=100)
    assert [g.name for g in gates] == ["health", "min_samples", "min_duration"]
    assert worst(g.status for g in gates) is P
    fewer = canary_gates(CANARY, 61.0, health=HEALTHY, canary_requests=99)
    assert worst(g.status for g in fewer) is W


def test_canary_stage_fails_when_the_analysis_decides_to_roll_back() -> None:
    """A rollback decision fails the health gate, whatever the other gates say."""
    bad = Evaluation(Verdict.FAIL, "error_rate: canary 40% vs stable 0%", rollback=True)
    gates = canary_gates(CANARY, 1.0, health=bad, canary_requests=5)
    assert worst(g.status for g in gates) is F
    assert failure_reason(gates).startswith("health: FAIL: error_rate")


def test_inconclusive_judge_holds_the_stage() -> None:
    """An inconclusive verdict (not a rollback) is WAIT, not PASS."""
    unsure = Evaluation(Verdict.INCONCLUSIVE, "too few requests", rollback=False)
    gates = canary_gates(CANARY, 61.0, health=unsure, canary_requests=1000)
    assert gates[0].status is W and worst(g.status for g in gates) is W


def test_external_gates_follow_the_stage_and_hold_without_a_monitor() -> None:
    """The A/B and drift gates appear only when the stage asks; no monitor -> WAIT; a
    monitor's FAIL fails the stage."""
    stage = Stage("c50", StageKind.CANARY, 5000, 0.0, 0, ab_gate=True, max_drift_psi=0.2)
    gates = canary_gates(stage, 1.0, health=HEALTHY, canary_requests=0)
    by_name = {g.name: g for g in gates}
    assert by_name["ab_test"].status is W and "no ab_test monitor" in by_name["ab_test"].detail
    assert by_name["drift"].status is W
    drifted = GateReading(F, 0.3, 0.2, "largest PSI 0.300 (x); limit 0.2")
    gates = canary_gates(
        stage, 1.0, health=HEALTHY, canary_requests=0, ab=GateReading(P, 0.01, 0.05, "ship"),
        drift=drifted,
    )  # fmt: skip
    assert worst(g.status for g in gates) is F and "drift: largest PSI" in failure_reason(gates)


def reading(compared: int, agreed: int, sent: int, errors: int) -> ShadowReading:
    rate = errors / max(sent, errors + compared) if max(sent, errors + compared) else None
    return ShadowReading(compared, agreed, sent, errors, 0.010, 0.012, rate)


def test_shadow_stage_gates() -> None:
    """Enough agreeing comparisons at a similar latency and error rate: PASS; low
    agreement: FAIL; too few comparisons: WAIT; no shadow configured: WAIT."""
    t = ShadowThresholds()
    ok = shadow_gates(
        SHADOW, 1.0, reading=reading(60, 60, 60, 0), stable_error_rate=0.0, thresholds=t
    )
    assert [g.name for g in ok] == [
        "comparisons", "agreement", "shadow_p95_ratio", "shadow_error_rate", "min_duration",
    ]  # fmt: skip
    assert worst(g.status for g in ok) is P
    low = shadow_gates(
        SHADOW, 1.0, reading=reading(60, 30, 60, 0), stable_error_rate=0.0, thresholds=t
    )
    assert worst(g.status for g in low) is F and "agreement" in failure_reason(low)
    few = shadow_gates(
        SHADOW, 1.0, reading=reading(10, 10, 10, 0), stable_error_rate=0.0, thresholds=t
    )
    assert worst(g.status for g in few) is W
    none = shadow_gates(SHADOW, 1.0, reading=None, stable_error_rate=0.0, thresholds=t)
    assert worst(g.status for g in none) is W


def test_shadow_whose_calls_all_fail_fails_the_stage() -> None:
    """Never compared, but judged on calls sent: the error gate fails instead of waiting."""
    gates = shadow_gates(
        SHADOW, 1.0, reading=reading(0, 0, 60, 60), stable_error_rate=0.0,
        thresholds=ShadowThresholds(),
    )  # fmt: skip
    assert worst(g.status for g in gates) is F
    assert failure_reason(gates).startswith("shadow_error_rate: shadow errors 100.00%")


def test_gate_and_report_read_the_same_shadow_error_rate() -> None:
    """For one recorder, the shadow report's error rate and the shadow gate's value are the
    same figure, also after a reset when calls started before it finish after it."""
    rec = ShadowRecorder("candidate", "top1")
    for i in range(80):
        rec.started()
        if i % 10 == 0:
            rec.finished_error("UNAVAILABLE")
        else:
            rec.finished_compared(
                Comparison(True, ""), 0.01, 0.012, request_id=f"r{i}", targeting_key="k",
                primary_variant="stable", primary={}, shadow={}, unix_time=float(i),
            )  # fmt: skip
    for _ in range(5):
        rec.started()
    before = rec.summary()
    rec.reset()  # five calls in flight finish after the reset: errors + compared > sent
    for _ in range(5):
        rec.finished_error("DEADLINE_EXCEEDED")
    after = rec.summary()
    assert after.errors + after.compared > after.sent
    for summary in (before, after):
        analysis = analyse_shadow(summary, primary_error_rate=0.0)
        gates = shadow_gates(
            SHADOW,
            1.0,
            reading=ShadowReading.from_analysis(analysis),
            stable_error_rate=0.0,
            thresholds=ShadowThresholds(),
        )
        gate = next(g for g in gates if g.name == "shadow_error_rate")
        assert analysis.error_rate is not None
        assert gate.value == analysis.error_rate == shadow_error_rate(summary)
        assert 0.0 <= gate.value <= 1.0

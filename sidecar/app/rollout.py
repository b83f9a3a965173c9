"""The health checker and rollout controller: measure -> evaluate -> assess -> act.

Every `interval` seconds (`tick`):
- No plan, canary serving (weight > 0, kill switch off): the canary is judged against the
  stable variant serving at the same time over the last `lookback` seconds; a rollback
  decision takes the same path as Control.Rollback, as principal `health-checker`.
- A plan running: the current stage's gates are evaluated on everything since the stage
  started (shadow: agreement, shadow latency and errors against stable, comparisons;
  canary: the health verdict, minimum duration, minimum samples, and where the stage asks
  for them the A/B verdict of the experiment and the drift threshold). Pass advances, Fail
  rolls back, Wait (Inconclusive, too little data, Continue) holds.
Acting never waits on alerts: the alert sink schedules its own work.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import structlog

from sidecar.app.control import ControlService, all_traffic_to
from sidecar.app.state import Snapshot
from sidecar.core.canary.analysis import AnalysisConfig, CanaryAnalysis, Decision
from sidecar.core.canary.window import CumulativeWindows, RollingWindows, VariantWindow
from sidecar.core.rollout import (
    DEFAULT_PLAN,
    Baseline,
    Phase,
    PlanError,
    RolloutProgress,
    Stage,
    StageKind,
    validate_plan,
)
from sidecar.core.routing import BASIS_POINTS
from sidecar.core.shadow.report import ShadowThresholds
from sidecar.core.state import DesiredState
from sidecar.errors import FailedPrecondition, InvalidRequest, SidecarError

log = structlog.get_logger("sidecar.health")

HEALTH_CHECKER = "health-checker"
CONTROLLER = "rollout-controller"


class Evaluation(NamedTuple):
    verdict: str  # PASS | FAIL | INCONCLUSIVE
    reason: str
    rollback: bool  # the analysis layer decided to roll back (e.g. failure limit reached)


class Evaluator(Protocol):
    """Judge + repeated-check analysis (fresh state per stage)."""

    def reset(self) -> None: ...

    def evaluate(
        self,
        canary: VariantWindow,
        stable: VariantWindow,
        recent: tuple[VariantWindow, VariantWindow] | None = None,
    ) -> Evaluation: ...


RECENT_SPAN = 600.0  # once a stage is older, the last 10 minutes are judged on their own too


class AlertSink(Protocol):
    def alert(self, event: str, fields: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class GateResult:
    name: str
    status: str  # PASS | FAIL | WAIT
    value: float
    threshold: float
    detail: str


@dataclass(frozen=True)
class AnalysisSettings:
    interval: float = 60.0
    lookback: float = 300.0
    stale_after: float = 48 * 3600.0
    # The shadow stage's gates use the shadow report's thresholds (min_comparisons aside:
    # a stage has its own min_samples).
    shadow: ShadowThresholds = field(default_factory=ShadowThresholds)


class GateReading(NamedTuple):
    """What an external gate (the A/B test, drift) says now."""

    status: str  # PASS | FAIL | WAIT
    value: float
    threshold: float
    detail: str


class ShadowReading(NamedTuple):
    compared: int
    agreed: int
    sent: int
    errors: int
    primary_p95: float | None
    shadow_p95: float | None
    # Agreement after subtracting the model's own noise (noise mirror), when measured.
    effective_agreement: float | None = None


class HealthChecker:
    def __init__(
        self,
        *,
        control: ControlService,
        windows: RollingWindows,
        evaluator_factory: Callable[[], Evaluator],
        settings: AnalysisSettings,
        stable_ready: Callable[[], Awaitable[bool]],
        alerts: AlertSink,
        shadow: Callable[[], ShadowReading | None] = lambda: None,
        reset_shadow: Callable[[], None] = lambda: None,
        has_shadow: bool = False,
        ab_gate: Callable[[], GateReading] | None = None,
        drift_gate: Callable[[float], GateReading] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.control = control
        self.windows = windows
        self._new_evaluator = evaluator_factory
        self.settings = settings
        self._stable_ready = stable_ready
        self.alerts = alerts
        self._shadow = shadow
        self._reset_shadow = reset_shadow
        self.has_shadow = has_shadow
        self._ab_gate = ab_gate
        self._drift_gate = drift_gate
        self._clock = clock
        self.evaluator = evaluator_factory()
        self.verdicts: dict[str, int] = {}
        self.last_verdict = ""
        self.gates: tuple[GateResult, ...] = ()
        self.stage_samples = 0
        self._cumulative: CumulativeWindows | None = None
        self._stage_key: tuple[float, int] | None = None
        self._warned: set[str] = set()

    # ---- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        progress = self.control.snapshot().state.rollout
        if progress is not None and progress.phase.active:
            log.warning(
                "rollout.resumed",
                stage=progress.stage.name if progress.stage else None,
                phase=progress.phase.value,
                message="resumed after restart: stage time kept, stage samples restart at 0",
            )
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the checker must keep running
                log.exception("health.tick_failed")
            await asyncio.sleep(self.settings.interval)

    async def tick(self) -> None:
        now = self._clock()
        snap = self.control.snapshot()
        state = snap.state
        self._lifecycle(state, now)
        progress = state.rollout
        if progress is not None and progress.phase is Phase.RUNNING:
            await self._drive(snap, progress, now)
            return
        self._stage_key = None
        if state.kill_switch or snap.flag.canary is None:
            return
        if state.weights.get(snap.flag.canary, 0) <= 0:
            return
        canary = self.windows.window(snap.flag.canary, now, self.settings.lookback)
        stable = self.windows.window(snap.flag.stable, now, self.settings.lookback)
        evaluation = self._evaluate(canary, stable)
        if evaluation.rollback:
            await self._roll_back(f"health check FAIL: {evaluation.reason}", HEALTH_CHECKER)

    # ---- plan ------------------------------------------------------------------------

    async def _drive(self, snap: Snapshot, progress: RolloutProgress, now: float) -> None:
        stage = progress.stage
        if stage is None:
            return
        key = (progress.stage_started_unix, progress.stage_index)
        if key != self._stage_key:  # entering a stage (or resuming one after a restart)
            self._stage_key = key
            self.gates = ()
            self.stage_samples = 0
            self._cumulative = CumulativeWindows(now)
            self.evaluator = self._new_evaluator()
            if stage.kind is StageKind.SHADOW:
                self._reset_shadow()
            await self._enter(snap, progress, stage)
            return
        assert self._cumulative is not None
        try:
            self._cumulative.advance(self.windows, now)
        except ValueError:  # a gap longer than the ring: start counting again
            self._cumulative = CumulativeWindows(now)
            return
        elapsed = progress.elapsed(now)
        if stage.kind is StageKind.SHADOW:
            gates = self._shadow_gates(stage, snap)
        elif stage.kind is StageKind.CANARY:
            gates = self._canary_gates(stage, snap)
        else:
            await self._promote(progress)
            return
        gates = (*gates, self._duration_gate(stage, elapsed))
        self.gates = gates
        failed = [g for g in gates if g.status == "FAIL"]
        if failed:
            reason = "; ".join(f"{g.name}: {g.detail}" for g in failed)
            await self._roll_back(
                f"rollout stage {stage.name} gate failed: {reason}", HEALTH_CHECKER
            )
            return
        if all(g.status == "PASS" for g in gates):
            await self._advance(progress, f"stage {stage.name} gates passed")

    async def _enter(self, snap: Snapshot, progress: RolloutProgress, stage: Stage) -> None:
        canary = snap.flag.canary
        if canary is None or stage.kind is StageKind.PROMOTE:
            return
        bp = stage.canary_bp if stage.kind is StageKind.CANARY else 0
        if snap.state.weights.get(canary, 0) == bp:
            return
        weights = {n: 0 for n in snap.state.weights} | {snap.flag.stable: BASIS_POINTS - bp}
        weights[canary] = bp
        await self.control.apply(
            principal=CONTROLLER,
            method="RolloutStage",
            reason=f"rollout stage {stage.name}: canary at {bp / 100:g}%",
            expected_revision=0,
            mutate=lambda s: s.evolve(weights=weights),
        )

    def _duration_gate(self, stage: Stage, elapsed: float) -> GateResult:
        done = elapsed >= stage.min_duration_s
        return GateResult(
            "min_duration",
            "PASS" if done else "WAIT",
            elapsed,
            stage.min_duration_s,
            f"{elapsed:.0f}s of {stage.min_duration_s:.0f}s",
        )

    def _canary_gates(self, stage: Stage, snap: Snapshot) -> tuple[GateResult, ...]:
        assert self._cumulative is not None and snap.flag.canary is not None
        canary = self._cumulative.window(snap.flag.canary)
        stable = self._cumulative.window(snap.flag.stable)
        self.stage_samples = canary.requests
        recent = None
        now = self._clock()
        if self._cumulative.last - self._cumulative.start > RECENT_SPAN:
            recent = (
                self.windows.window(snap.flag.canary, now, RECENT_SPAN),
                self.windows.window(snap.flag.stable, now, RECENT_SPAN),
            )
        evaluation = self._evaluate(canary, stable, recent)
        health = GateResult(
            "health",
            "FAIL" if evaluation.rollback else "PASS" if evaluation.verdict == "PASS" else "WAIT",
            1.0 if evaluation.verdict == "PASS" else 0.0,
            1.0,
            f"{evaluation.verdict}: {evaluation.reason}",
        )
        samples = GateResult(
            "min_samples",
            "PASS" if canary.requests >= stage.min_samples else "WAIT",
            float(canary.requests),
            float(stage.min_samples),
            f"{canary.requests} of {stage.min_samples} canary requests",
        )
        gates = [health, samples]
        if stage.ab_gate:
            gates.append(self._external("ab_test", self._ab_gate, None))
        if stage.max_drift_psi > 0:
            gates.append(self._external("drift", self._drift_gate, stage.max_drift_psi))
        return tuple(gates)

    @staticmethod
    def _external(
        name: str, read: Callable[..., GateReading] | None, threshold: float | None
    ) -> GateResult:
        if read is None:
            return GateResult(name, "WAIT", 0.0, 0.0, f"no {name} monitor configured")
        try:
            r = read() if threshold is None else read(threshold)
        except Exception as exc:  # a gate that cannot be read holds the stage
            log.exception("health.gate_unreadable", gate=name)
            return GateResult(name, "WAIT", 0.0, 0.0, f"{name} unreadable: {exc}")
        return GateResult(name, r.status, r.value, r.threshold, r.detail)

    def _shadow_gates(self, stage: Stage, snap: Snapshot) -> tuple[GateResult, ...]:
        g = self.settings.shadow
        reading = self._shadow()
        if reading is None:
            return (GateResult("shadow", "WAIT", 0, 0, "no shadow comparison configured"),)
        self.stage_samples = reading.compared
        assert self._cumulative is not None
        stable = self._cumulative.window(snap.flag.stable)
        enough = reading.compared >= stage.min_samples
        agreement = reading.agreed / reading.compared if reading.compared else math.nan
        noise_note = ""
        if reading.effective_agreement is not None and reading.compared:
            noise_note = f" after subtracting the model's own noise (raw {agreement:.1%})"
            agreement = reading.effective_agreement
        gates = [
            GateResult(
                "comparisons",
                "PASS" if enough else "WAIT",
                float(reading.compared),
                float(stage.min_samples),
                f"{reading.compared} of {stage.min_samples} comparisons",
            )
        ]
        wait = "WAIT"
        gates.append(
            GateResult(
                "agreement",
                wait if not enough else "PASS" if agreement >= g.min_agreement else "FAIL",
                agreement if reading.compared else 0.0,
                g.min_agreement,
                f"agreement {agreement:.1%}{noise_note} (needs >= {g.min_agreement:.0%})"
                if reading.compared
                else "no comparisons yet",
            )
        )
        if reading.primary_p95 and reading.shadow_p95:
            ratio = reading.shadow_p95 / reading.primary_p95
            gates.append(
                GateResult(
                    "shadow_p95_ratio",
                    wait if not enough else "PASS" if ratio <= g.max_p95_ratio else "FAIL",
                    ratio,
                    g.max_p95_ratio,
                    f"shadow p95 {reading.shadow_p95 * 1e3:.1f} ms vs stable "
                    f"{reading.primary_p95 * 1e3:.1f} ms (ratio {ratio:.2f}, "
                    f"needs <= {g.max_p95_ratio})",
                )
            )
        shadow_rate = reading.errors / reading.sent if reading.sent else 0.0
        stable_rate = stable.error_rate or 0.0
        limit = max(g.max_error_ratio * stable_rate, g.error_rate_floor)
        # Judged on calls sent, not on comparisons: a shadow whose calls all fail is never
        # compared, and must fail the stage rather than hold it forever.
        sent_enough = reading.sent >= stage.min_samples
        gates.append(
            GateResult(
                "shadow_error_rate",
                wait if not sent_enough else "PASS" if shadow_rate <= limit else "FAIL",
                shadow_rate,
                limit,
                f"shadow errors {shadow_rate:.2%} vs stable {stable_rate:.2%} (limit {limit:.2%})",
            )
        )
        return tuple(gates)

    async def _advance(self, progress: RolloutProgress, why: str) -> None:
        nxt = progress.stage_index + 1
        now = self._clock()

        def mutate(s: DesiredState) -> DesiredState:
            current = s.rollout
            if current is None or current.stage_index != progress.stage_index:
                raise FailedPrecondition("rollout: changed meanwhile")
            return s.evolve(
                rollout=current.evolve(
                    stage_index=nxt, stage_started_unix=now, paused_seconds=0.0, message=why
                )
            )

        stage = progress.stages[nxt] if nxt < len(progress.stages) else None
        await self.control.apply(
            principal=CONTROLLER,
            method="RolloutAdvance",
            reason=f"{why}; next: {stage.name if stage else 'done'}",
            expected_revision=0,
            mutate=mutate,
        )
        self.gates = ()  # the next stage's gates are evaluated from its next tick
        self.stage_samples = 0
        log.info("rollout.advanced", to=stage.name if stage else None, why=why)
        if stage is None:
            await self._finish(Phase.SUCCEEDED, "plan completed")

    async def _promote(self, progress: RolloutProgress) -> None:
        try:
            await self.control.promote(CONTROLLER, "rollout plan: promote stage reached", 0)
        except SidecarError as exc:
            self.gates = (GateResult("promote", "WAIT", 0, 0, exc.message),)
            return
        await self._finish(Phase.SUCCEEDED, "promoted")

    async def _finish(self, phase: Phase, message: str) -> None:
        def mutate(s: DesiredState) -> DesiredState:
            if s.rollout is None:
                return s
            return s.evolve(rollout=s.rollout.evolve(phase=phase, message=message))

        await self.control.apply(
            principal=CONTROLLER,
            method="RolloutFinish",
            reason=message,
            expected_revision=0,
            mutate=mutate,
        )
        self.alerts.alert("rollout.finished", {"phase": phase.value, "message": message})

    # ---- shared ----------------------------------------------------------------------

    def _evaluate(
        self,
        canary: VariantWindow,
        stable: VariantWindow,
        recent: tuple[VariantWindow, VariantWindow] | None = None,
    ) -> Evaluation:
        evaluation = self.evaluator.evaluate(canary, stable, recent)
        self.verdicts[evaluation.verdict] = self.verdicts.get(evaluation.verdict, 0) + 1
        self.last_verdict = f"{evaluation.verdict}: {evaluation.reason}"
        return evaluation

    async def _roll_back(self, reason: str, principal: str) -> None:
        started = self._clock()
        try:
            await self.control.rollback(principal, reason, 0)
        except SidecarError as exc:
            log.error("health.rollback_failed", reason=reason, error=exc.message)
            return
        self.alerts.alert(
            "canary.rolled_back",
            {"reason": reason, "principal": principal, "seconds": self._clock() - started},
        )

    def _lifecycle(self, state: DesiredState, now: float) -> None:
        for variant, since in state.held_full_since.items():
            if now - since > self.settings.stale_after and variant not in self._warned:
                self._warned.add(variant)
                log.warning(
                    "flag.stale",
                    variant=variant,
                    hours_at_100=round((now - since) / 3600, 1),
                    message="variant held at 100% without being promoted",
                )

    def warnings(self, state: DesiredState, now: float) -> list[str]:
        return [
            f"variant {v!r} has held 100% of the traffic for {(now - t) / 3600:.1f} h "
            "without being promoted (promote it or roll back)"
            for v, t in state.held_full_since.items()
            if now - t > self.settings.stale_after
        ]

    # ---- operator verbs --------------------------------------------------------------

    async def start(
        self, principal: str, reason: str, expected_revision: int, stages: tuple[Stage, ...],
        force: bool,
    ) -> Snapshot:  # fmt: skip
        has_experiment = self._ab_gate is not None
        stages = stages or tuple(
            replace(s, ab_gate=s.ab_gate and has_experiment)
            for s in DEFAULT_PLAN
            if self.has_shadow or s.kind is not StageKind.SHADOW
        )
        try:
            skips = validate_plan(stages, has_shadow=self.has_shadow, has_experiment=has_experiment)
        except PlanError as exc:
            raise InvalidRequest(f"{exc.field}: {exc.message}") from None
        if skips and not force:
            raise FailedPrecondition(
                "plan skips stages: " + "; ".join(skips) + ". Pass force with a reason to do it"
            )
        if not await self._stable_ready():
            raise FailedPrecondition("stable: the stable variant is not ready; no rollout starts")
        snap = self.control.snapshot()
        if snap.flag.canary is None:
            raise FailedPrecondition("canary: no canary variant configured")
        if snap.state.kill_switch:
            raise FailedPrecondition("kill_switch: is on; turn it off before a rollout")
        if snap.state.rollout is not None and snap.state.rollout.phase.active:
            raise FailedPrecondition("rollout: one is already running; abort it first")
        now = self._clock()
        stable = self.windows.window(snap.flag.stable, now, self.settings.lookback)
        baseline = Baseline(
            stable.requests,
            stable.error_rate or 0.0,
            stable.quantile(0.5) or 0.0,
            stable.quantile(0.95) or 0.0,
        )
        progress = RolloutProgress(
            stages=stages,
            phase=Phase.RUNNING,
            stage_index=0,
            started_unix=now,
            stage_started_unix=now,
            baseline=baseline,
            message="started",
            forced=tuple(skips),
        )
        weights = all_traffic_to(snap.state.weights, snap.flag.stable)
        log.info("rollout.baseline", requests=baseline.requests, error_rate=baseline.error_rate)
        return await self.control.apply(
            principal=principal,
            method="StartRollout",
            reason=reason + (f" [FORCED, skips: {'; '.join(skips)}]" if skips else ""),
            expected_revision=expected_revision,
            mutate=lambda s: s.evolve(rollout=progress, weights=weights),
        )

    async def pause(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        now = self._clock()

        def mutate(s: DesiredState) -> DesiredState:
            if s.rollout is None or s.rollout.phase is not Phase.RUNNING:
                raise FailedPrecondition("rollout: none is running")
            return s.evolve(
                rollout=s.rollout.evolve(phase=Phase.PAUSED, paused_at=now, message=reason)
            )

        return await self.control.apply(
            principal=principal, method="PauseRollout", reason=reason,
            expected_revision=expected_revision, mutate=mutate,
        )  # fmt: skip

    async def resume(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        now = self._clock()

        def mutate(s: DesiredState) -> DesiredState:
            r = s.rollout
            if r is None or r.phase is not Phase.PAUSED:
                raise FailedPrecondition("rollout: none is paused")
            return s.evolve(
                rollout=r.evolve(
                    phase=Phase.RUNNING,
                    paused_seconds=r.paused_seconds + (now - r.paused_at),
                    paused_at=0.0,
                    message=reason,
                )
            )

        return await self.control.apply(
            principal=principal, method="ResumeRollout", reason=reason,
            expected_revision=expected_revision, mutate=mutate,
        )  # fmt: skip

    async def abort(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        snap = self.control.snapshot()
        if snap.state.rollout is None or not snap.state.rollout.phase.active:
            raise FailedPrecondition("rollout: none is running or paused")
        return await self.control.rollback(
            principal, reason, expected_revision, end_rollout=Phase.ABORTED
        )


class DrillResult(NamedTuple):
    rolled_back: bool
    detection_seconds: float
    revert_seconds: float
    verdict_reason: str
    restored_revision: int


async def run_drill(checker: HealthChecker, principal: str, reason: str) -> DrillResult:
    """Rehearse an automatic rollback: the checker is shown a failing canary (synthetic
    observations, in its own evaluator; the model servers are not touched), the real
    evaluation and the real Rollback path run, then the state is restored (new revision,
    original content). Every step is audited."""
    if not reason.strip():
        raise InvalidRequest("reason: must not be empty")
    control = checker.control
    snap = control.snapshot()
    original = snap.state
    canary = snap.flag.canary
    if canary is None:
        raise FailedPrecondition("canary: no canary variant configured; nothing to drill")
    if original.kill_switch:
        raise FailedPrecondition("kill_switch: is on; a drill needs canary traffic to remove")
    if original.weights.get(canary, 0) == 0:
        weights = {n: 0 for n in original.weights} | {canary: 100}
        weights[snap.flag.stable] = BASIS_POINTS - 100
        await control.apply(
            principal=principal, method="DrillSetup", reason=f"drill: {reason}",
            expected_revision=0, mutate=lambda s: s.evolve(weights=weights),
        )  # fmt: skip
    injected = checker._clock()
    failing, healthy = VariantWindow(), VariantWindow()
    failing.record_many("OK", [0.01], [500])
    failing.record_many("UNAVAILABLE", [0.01], [500])
    healthy.record_many("OK", [0.01], [1000])
    evaluator = checker._new_evaluator()
    evaluation = evaluator.evaluate(failing, healthy)
    for _ in range(20):  # the analysis layer may want several consecutive failures
        if evaluation.rollback:
            break
        evaluation = evaluator.evaluate(failing, healthy)
    verdict_at = checker._clock()
    rolled_back = False
    if evaluation.rollback:
        await control.rollback(HEALTH_CHECKER, f"DRILL ({reason}): {evaluation.reason}", 0)
        rolled_back = True
    reverted_at = checker._clock()
    restored = await control.apply(
        principal=principal,
        method="DrillRestore",
        reason=f"drill finished: state of revision {original.revision} restored",
        expected_revision=0,
        mutate=lambda s: original.evolve(promotions=s.promotions),
    )
    return DrillResult(
        rolled_back,
        verdict_at - injected,
        reverted_at - verdict_at,
        evaluation.reason,
        restored.revision,
    )


class JudgeEvaluator:
    """`Evaluator` over the canary judge and its repeated-check analysis (alpha spent
    across the planned checks; failure limits). A finished analysis (planned checks used
    without a rollback) starts a fresh one."""

    def __init__(self, config: AnalysisConfig) -> None:
        self.config = config
        self.analysis = CanaryAnalysis(config)

    def reset(self) -> None:
        self.analysis = CanaryAnalysis(self.config)

    def evaluate(
        self,
        canary: VariantWindow,
        stable: VariantWindow,
        recent: tuple[VariantWindow, VariantWindow] | None = None,
    ) -> Evaluation:
        if self.analysis.done:
            self.reset()
        decision = self.analysis.check(canary, stable, recent=recent)
        return Evaluation(
            decision.verdict.value, decision.reason, decision.decision is Decision.ROLLBACK
        )

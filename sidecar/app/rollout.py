"""The rollout controller: measure -> assess -> act, every `analysis.interval` seconds.

`RolloutController.tick(now)`:
- measure: read the windows (the last `lookback` seconds; or everything since the stage
  started), the shadow report, the A/B and drift monitors;
- assess: the pure functions of `sidecar.core.gates` (and the canary judge) turn the
  readings into gate results; the stage's status is the worst of them;
- act: only through `ControlService`, like an operator (persisted and audited): enter a
  stage (set its weights), advance, roll back, promote, finish.

With no plan and a serving canary (weight > 0, kill switch off), the canary is judged
against the stable variant serving at the same time over the last `lookback` seconds; a
rollback takes the same path as Control.Rollback, as principal `health-checker`. With a
plan running, the stage's gates decide: PASS advances, FAIL rolls back, WAIT holds.
Acting never waits on alerts: the alert sink schedules its own work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import structlog

from sidecar.app.control import ControlService, rules_elsewhere
from sidecar.app.ports import AlwaysLeader, Leadership
from sidecar.app.state import Snapshot
from sidecar.config import AnalysisConfig
from sidecar.core.canary.judge import Verdict
from sidecar.core.canary.sequential import (
    DeploymentAnalysis,
    RecordedBaseline,
    SequentialConfig,
    interval_counts,
    quantile_ratios,
)
from sidecar.core.canary.window import CumulativeWindows, VariantWindow, WindowSource
from sidecar.core.gates import (
    Evaluation,
    GateReading,
    GateResult,
    GateStatus,
    ShadowReading,
    canary_gates,
    failure_reason,
    shadow_gates,
    worst,
)
from sidecar.core.limits import CONTROL_LIMITS, clip
from sidecar.core.rollout import (
    Baseline,
    Phase,
    RolloutProgress,
    Stage,
    StageKind,
    overdue,
    projected_finish,
)
from sidecar.core.routing import BASIS_POINTS
from sidecar.core.shadow.report import ShadowThresholds
from sidecar.core.state import DesiredState
from sidecar.errors import FailedPrecondition, InvalidRequest, SidecarError, StaleRevision

log = structlog.get_logger("sidecar.health")

HEALTH_CHECKER = "health-checker"
CONTROLLER = "rollout-controller"

__all__ = [
    "CONTROLLER",
    "HEALTH_CHECKER",
    "AlertSink",
    "DrillResult",
    "Evaluator",
    "JudgeEvaluator",
    "RolloutController",
    "automatic_rollback",
    "moves_traffic",
    "run_drill",
    "stable_baseline",
]


def moves_traffic(state: DesiredState) -> bool:
    """Whether a Rollback of `state` sends traffic back to stable (a non-stable variant
    has weight, a plan is running, or a user override or segment rule in force names
    another variant: the rollback suspends it) rather than reverting the last promotion. Automatic
    rollbacks act only then, at the revision they checked: a second rollback racing the
    first (the fast path, the judge, an operator, another fleet member) must never turn
    into a promotion revert."""
    running = state.rollout is not None and state.rollout.phase.active
    weighted = any(w > 0 for n, w in state.weights.items() if n != state.stable)
    return running or weighted or rules_elsewhere(state)


ROLLBACK_ATTEMPTS = 3


async def automatic_rollback(
    control: ControlService, principal: str, reason: str
) -> Snapshot | None:
    """Roll back as `principal` when it moves traffic (`moves_traffic`), at the revision
    checked; re-checked when another write got in first (up to `ROLLBACK_ATTEMPTS`
    times). None when there was nothing to roll back; the reason is clipped to the bound,
    never refused by it. Raises the `SidecarError` of the last attempt (ABORTED when
    others kept writing first, e.g. a fleet member whose change has not arrived yet)."""
    reason = clip(reason, CONTROL_LIMITS.reason_bytes)
    for attempt in range(ROLLBACK_ATTEMPTS):
        snap = control.snapshot()
        if not moves_traffic(snap.state):
            return None
        try:
            return await control.rollback(principal, reason, snap.revision)
        except StaleRevision:
            if attempt == ROLLBACK_ATTEMPTS - 1:
                raise
    return None


Pair = tuple[VariantWindow, VariantWindow]


class Evaluator(Protocol):
    """The deployment's sequential tests: one budget from the canary's first check to a
    promote, a rollback or a new canary variant (never renewed per stage or per look)."""

    def last_check(self, deployment: str) -> float | None:
        """When ``deployment`` was last checked (None: never, or another deployment)."""
        ...

    def evaluate(
        self,
        deployment: str,
        interval: Pair,
        context: Pair,
        *,
        now: float,
        baseline: Baseline | None = None,
    ) -> Evaluation:
        """Judge the (canary, stable) windows of the interval since the last check;
        ``context`` windows give the latency guard's quantiles; ``baseline``: the stage has
        no concurrent stable traffic, judge against what was recorded before the rollout."""
        ...

    def end(self, why: str) -> None:
        """The deployment is over (rollback or promote); the next check starts a new one."""
        ...


class CanaryCheckpoint(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, data: Mapping[str, Any]) -> None: ...


class AlertSink(Protocol):
    def alert(self, event: str, fields: Mapping[str, Any]) -> None: ...


def stable_baseline(windows: WindowSource, lookback: float) -> Callable[[str, float], Baseline]:
    """The baseline a rollout records at its start: the stable's last `lookback` seconds."""

    def baseline(variant: str, now: float) -> Baseline:
        stable = windows.window(variant, now, lookback)
        return Baseline(
            stable.requests,
            stable.error_rate or 0.0,
            stable.quantile(0.5) or 0.0,
            stable.quantile(0.95) or 0.0,
        )

    return baseline


class RolloutController:
    """Drives a rollout plan and watches a canary with no plan: `tick(now)` measures,
    assesses with `sidecar.core.gates`, and acts through `ControlService` (principals
    `rollout-controller` for stage moves, `health-checker` for rollbacks). `gates`,
    `stage_samples`, `last_verdict` and `verdicts` are what GetRollout and the metrics
    show."""

    def __init__(
        self,
        *,
        control: ControlService,
        windows: WindowSource,
        evaluator_factory: Callable[[], Evaluator],
        analysis: AnalysisConfig,
        shadow_thresholds: ShadowThresholds,
        alerts: AlertSink,
        shadow: Callable[[], ShadowReading | None] = lambda: None,
        reset_shadow: Callable[[], None] = lambda: None,
        ab_gate: Callable[[], GateReading] | None = None,
        drift_gate: Callable[[float], GateReading] | None = None,
        clock: Callable[[], float] = time.time,
        leadership: Leadership | None = None,
    ) -> None:
        self.control = control
        self.windows = windows
        self.new_evaluator = evaluator_factory
        self.analysis = analysis
        self.shadow_thresholds = shadow_thresholds
        self.alerts = alerts
        self._shadow = shadow
        self._reset_shadow = reset_shadow
        self._ab_gate = ab_gate
        self._drift_gate = drift_gate
        self.clock = clock
        self.leadership: Leadership = leadership or AlwaysLeader()
        self.evaluator = evaluator_factory()
        self._leading = False  # whether `lead()` found this sidecar leading last time
        self.verdicts: dict[str, int] = {}
        self.last_verdict = ""
        self.gates: tuple[GateResult, ...] = ()
        self.stage_samples = 0
        self._cumulative: CumulativeWindows | None = None
        self._stage_key: tuple[float, int] | None = None
        self._warned: set[str] = set()
        # The stage past its progress deadline (its key) and the warning saying so; and one
        # whose sample minimum, at the rate so far, would be met only after it.
        self._stalled: tuple[tuple[float, int], str] | None = None
        self._at_risk: tuple[tuple[float, int], str] | None = None

    def reconfigure(self, analysis: AnalysisConfig) -> None:
        """New analysis settings (configuration reload), read from the next tick: the tick
        interval, the stale-variant report, the progress deadline. The judge is not rebuilt
        (its thresholds and false-rollback budget need a restart)."""
        self.analysis = analysis

    # ---- the loop --------------------------------------------------------------------

    async def run(self) -> None:
        """The timer loop: `tick(clock())` every `analysis.interval` seconds."""
        progress = self.control.snapshot().state.rollout
        if progress is not None and progress.phase.active:
            log.warning(
                "rollout.resumed",
                stage=progress.stage.name if progress.stage else None,
                phase=progress.phase.value,
                message="resumed after restart: stage time kept, stage samples restart at 0",
            )
        while True:
            led = False
            try:
                led = await self.lead()
            except asyncio.CancelledError:
                raise
            except Exception:  # the controller must keep running
                log.exception("health.tick_failed")
            # A follower checks the lease often, so it acts soon after it takes over.
            await asyncio.sleep(
                self.analysis.interval if led else min(self.analysis.interval, 0.25)
            )

    async def lead(self) -> bool:
        """`tick(clock())` when this sidecar leads the fleet, with the lease's fencing
        token set for its writes (so a deposed leader's late write is refused); False (and
        nothing done) on a follower. A follower that takes over re-enters the running
        stage from the shared progress (stage time kept, stage samples from then on) and
        rebuilds its evaluator, which restores the deployment's budget from the checkpoint
        the previous leader kept (in a fleet: shared in Redis)."""
        if not self.leadership.is_leader():
            self._stage_key = None
            self._leading = False
            return False
        if not self._leading:
            self.evaluator = self.new_evaluator()
            self._leading = True
        with self.leadership.fenced():
            await self.tick(self.clock())
        return True

    async def tick(self, now: float) -> None:
        """One round of measure -> assess -> act at time `now`."""
        snap = self.control.snapshot()
        self._lifecycle(snap.state, now)
        progress = snap.state.rollout
        if progress is not None and progress.phase is Phase.RUNNING:
            await self._drive(snap, progress, now)
            return
        self._stage_key = None
        await self._check_canary(snap, now)

    # ---- no plan: the automatic canary check -----------------------------------------

    async def _check_canary(self, snap: Snapshot, now: float) -> None:
        canary = snap.flag.canary
        if canary is None or snap.state.weights.get(canary, 0) <= 0:
            self.evaluator.end("canary at 0%")  # e.g. rolled back by an operator
            return
        if snap.state.kill_switch:
            return
        lookback = self.analysis.lookback
        evaluation = self._evaluate(
            snap,
            (
                self.windows.window(canary, now, lookback),
                self.windows.window(snap.flag.stable, now, lookback),
            ),
            now,
        )
        if evaluation.rollback:
            await self._roll_back(f"health check FAIL: {evaluation.reason}", HEALTH_CHECKER)

    # ---- plan ------------------------------------------------------------------------

    async def _drive(self, snap: Snapshot, progress: RolloutProgress, now: float) -> None:
        stage = progress.stage
        if stage is None:
            return
        key = (progress.stage_started_unix, progress.stage_index)
        if key != self._stage_key:  # entering a stage (or resuming one after a restart)
            self._start_stage(key, stage, now)
            await self._enter(snap, stage)
            return
        if not self._measure_since_stage_start(now):
            return
        if stage.kind is StageKind.PROMOTE:
            await self._promote()
            return
        self.gates = self._assess(stage, snap, progress, now)
        status = worst(g.status for g in self.gates)
        if status is GateStatus.FAIL:
            reason = failure_reason(self.gates)
            await self._roll_back(
                f"rollout stage {stage.name} gate failed: {reason}", HEALTH_CHECKER
            )
        elif status is GateStatus.PASS:
            await self._advance(progress, f"stage {stage.name} gates passed", now)
        else:
            await self._progress_deadline(key, progress, now)

    async def _progress_deadline(
        self, key: tuple[float, int], progress: RolloutProgress, now: float
    ) -> None:
        """A stage still waiting past its progress deadline: warn (status, log, alert and
        metric, once per stage), and roll back when `analysis.progress_deadline_abort`."""
        over = overdue(progress, now, self.analysis.progress_deadline)
        stage = progress.stage
        self._at_risk = None
        if over is None or stage is None:
            self._stalled = None
            self._project(key, progress, now)
            return
        waiting = "; ".join(
            f"{g.name}: {g.detail}" for g in self.gates if g.status is GateStatus.WAIT
        )
        deadline = progress.elapsed(now) - over
        message = (
            f"rollout stage {stage.name} is past its progress deadline ({deadline:g} s) by "
            f"{over:.0f} s, still waiting on: {waiting or 'its gates'}"
        )
        first = self._stalled is None or self._stalled[0] != key
        self._stalled = (key, message)
        if first:
            log.warning("rollout.progress_deadline_exceeded", stage=stage.name, message=message)
            self.alerts.alert(
                "rollout.progress_deadline_exceeded", {"stage": stage.name, "message": message}
            )
        if self.analysis.progress_deadline_abort:
            await self._roll_back(message, CONTROLLER)

    def _project(self, key: tuple[float, int], progress: RolloutProgress, now: float) -> None:
        """Before the deadline: warn when the sample minimum, at the rate seen so far,
        would be reached only after it."""
        stage, elapsed = progress.stage, progress.elapsed(now)
        deadline = (stage.progress_deadline_s if stage else 0) or self.analysis.progress_deadline
        gate = next((g for g in self.gates if g.name == "min_samples"), None)
        if stage is None or deadline <= 0 or gate is None or gate.status is not GateStatus.WAIT:
            return
        finish = projected_finish(gate.value, gate.threshold, elapsed)
        if finish is not None and finish > deadline:
            self._at_risk = (
                key,
                f"rollout stage {stage.name} will miss its progress deadline ({deadline:g} s): "
                f"at the rate so far its {gate.threshold:.0f} samples take about "
                f"{finish:.0f} s (raise the traffic share or lower min_samples)",
            )

    def stalled(self, state: DesiredState) -> str:
        """The progress-deadline warning of the stage `state` is in ("" when none)."""
        return self._current(self._stalled, state)

    @staticmethod
    def _current(noted: tuple[tuple[float, int], str] | None, state: DesiredState) -> str:
        """The noted message while `state`'s rollout is RUNNING in that stage, else ""."""
        progress = state.rollout
        if noted is None or progress is None or progress.phase is not Phase.RUNNING:
            return ""
        key, message = noted
        return message if key == (progress.stage_started_unix, progress.stage_index) else ""

    def _start_stage(self, key: tuple[float, int], stage: Stage, now: float) -> None:
        self._stage_key = key
        self.gates = ()
        self.stage_samples = 0
        self._cumulative = CumulativeWindows(now)
        if stage.kind is StageKind.SHADOW:
            self._reset_shadow()

    def _measure_since_stage_start(self, now: float) -> bool:
        """Fold the rolling windows into the stage's cumulative ones; False after a gap
        longer than the ring (counting starts again)."""
        assert self._cumulative is not None
        try:
            self._cumulative.advance(self.windows, now)
        except ValueError:
            self._cumulative = CumulativeWindows(now)
            return False
        return True

    def _assess(
        self, stage: Stage, snap: Snapshot, progress: RolloutProgress, now: float
    ) -> tuple[GateResult, ...]:
        """Measure the stage's readings, then assess them with the core's gate functions."""
        elapsed = progress.elapsed(now)
        if stage.kind is StageKind.SHADOW:
            return self._assess_shadow(stage, snap, elapsed)
        # No concurrent stable traffic (the 100% stage): judged against the baseline
        # recorded before the rollout (gate-free, said so, when none was recorded).
        alone = snap.state.weights.get(snap.flag.stable, 0) == 0
        return self._assess_canary(stage, snap, elapsed, now, progress.baseline if alone else None)

    def _assess_shadow(
        self, stage: Stage, snap: Snapshot, elapsed: float
    ) -> tuple[GateResult, ...]:
        assert self._cumulative is not None
        reading = self._shadow()
        if reading is not None:
            self.stage_samples = reading.compared
        stable = self._cumulative.window(snap.flag.stable)
        return shadow_gates(
            stage,
            elapsed,
            reading=reading,
            stable_error_rate=stable.error_rate or 0.0,
            thresholds=self.shadow_thresholds,
        )

    def _assess_canary(
        self, stage: Stage, snap: Snapshot, elapsed: float, now: float, baseline: Baseline | None
    ) -> tuple[GateResult, ...]:
        assert self._cumulative is not None and snap.flag.canary is not None
        canary = self._cumulative.window(snap.flag.canary)
        stable = self._cumulative.window(snap.flag.stable)
        self.stage_samples = canary.requests
        ab = self._read("ab_test", self._ab_gate) if stage.ab_gate else None
        drift = None
        if stage.max_drift_psi > 0:
            drift = self._read("drift", self._drift_gate, stage.max_drift_psi)
        return canary_gates(
            stage,
            elapsed,
            health=self._evaluate(snap, (canary, stable), now, baseline),
            canary_requests=canary.requests,
            ab=ab,
            drift=drift,
        )

    @staticmethod
    def _read(
        name: str, read: Callable[..., GateReading] | None, *args: float
    ) -> GateReading | None:
        """An external monitor's reading; None when there is none. A monitor that cannot
        be read holds the stage."""
        if read is None:
            return None
        try:
            return read(*args)
        except Exception as exc:
            log.exception("health.gate_unreadable", gate=name)
            return GateReading(GateStatus.WAIT, 0.0, 0.0, f"{name} unreadable: {exc}")

    # ---- acting (always through ControlService) --------------------------------------

    async def _enter(self, snap: Snapshot, stage: Stage) -> None:
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

    async def _advance(self, progress: RolloutProgress, why: str, now: float) -> None:
        nxt = progress.stage_index + 1

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

    async def _promote(self) -> None:
        try:
            await self.control.promote(CONTROLLER, "rollout plan: promote stage reached", 0)
        except SidecarError as exc:
            self.gates = (GateResult("promote", GateStatus.WAIT, 0, 0, exc.message),)
            return
        self.evaluator.end("promoted")
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

    async def _roll_back(self, reason: str, principal: str) -> None:
        started = self.clock()
        try:
            if await automatic_rollback(self.control, principal, reason) is None:
                log.info("health.rollback_skipped", reason=reason, why="already on stable")
                return
        except SidecarError as exc:
            log.error("health.rollback_failed", reason=reason, error=exc.message)
            return
        self.evaluator.end("rolled back")
        self.alerts.alert(
            "canary.rolled_back",
            {"reason": reason, "principal": principal, "seconds": self.clock() - started},
        )

    # ---- shared ----------------------------------------------------------------------

    def _evaluate(
        self, snap: Snapshot, context: Pair, now: float, baseline: Baseline | None = None
    ) -> Evaluation:
        """One check of the deployment: the interval since its last check (complete
        buckets; consecutive checks partition time, so nothing is counted twice, also
        across stages and restarts), judged by the deployment's evaluator."""
        canary, stable = snap.flag.canary, snap.flag.stable
        assert canary is not None
        deployment = f"{canary} vs {stable}"
        start = self.evaluator.last_check(deployment)
        earliest = now - self.windows.horizon_s + self.windows.bucket_s
        if start is None:
            start = now - self.analysis.lookback
        start = min(max(start, earliest), now)
        interval = (
            self.windows.since(canary, start, now),
            self.windows.since(stable, start, now),
        )
        evaluation = self.evaluator.evaluate(
            deployment, interval, context, now=now, baseline=baseline
        )
        verdict = evaluation.verdict.value
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        self.last_verdict = f"{verdict}: {evaluation.reason}"
        return evaluation

    def _lifecycle(self, state: DesiredState, now: float) -> None:
        for variant, since in state.held_full_since.items():
            if now - since > self._stale_after and variant not in self._warned:
                self._warned.add(variant)
                log.warning(
                    "flag.stale",
                    variant=variant,
                    hours_at_100=round((now - since) / 3600, 1),
                    message="variant held at 100% without being promoted",
                )

    @property
    def _stale_after(self) -> float:
        return self.analysis.stale_after_hours * 3600

    def warnings(self, state: DesiredState, now: float) -> list[str]:
        stalled = self.stalled(state)
        at_risk = self._current(self._at_risk, state)
        return [
            *([stalled] if stalled else []),
            *([at_risk] if at_risk else []),
            *(
                f"variant {v!r} has held 100% of the traffic for {(now - t) / 3600:.1f} h "
                "without being promoted (promote it or roll back)"
                for v, t in state.held_full_since.items()
                if now - t > self._stale_after
            ),
        ]


class DrillResult(NamedTuple):
    rolled_back: bool
    detection_seconds: float
    revert_seconds: float
    verdict_reason: str
    restored_revision: int


async def run_drill(controller: RolloutController, principal: str, reason: str) -> DrillResult:
    """Rehearse an automatic rollback: the controller is shown a failing canary (synthetic
    observations, in its own evaluator; the model servers are not touched), the real
    evaluation and the real Rollback path run, then the state is restored (new revision,
    original content). Every step is audited."""
    if not reason.strip():
        raise InvalidRequest("reason: must not be empty")
    control = controller.control
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
    injected = controller.clock()
    failing, healthy = VariantWindow(), VariantWindow()
    failing.record_many("OK", [0.01], [500])
    failing.record_many("UNAVAILABLE", [0.01], [500])
    healthy.record_many("OK", [0.01], [1000])
    current = controller.evaluator
    config = current.config if isinstance(current, JudgeEvaluator) else SequentialConfig()
    evaluator = JudgeEvaluator(config)  # the configured guards; its own budget, not persisted
    for check in range(20):  # the sequential tests may want several checks
        evaluation = evaluator.evaluate(
            "drill", (failing, healthy), (failing, healthy), now=float(check)
        )
        if evaluation.rollback:
            break
    verdict_at = controller.clock()
    rolled_back = False
    if evaluation.rollback:
        why = clip(f"DRILL ({reason}): {evaluation.reason}", CONTROL_LIMITS.reason_bytes)
        await control.rollback(HEALTH_CHECKER, why, 0)
        rolled_back = True
    reverted_at = controller.clock()
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
    """`Evaluator` over :class:`~sidecar.core.canary.sequential.DeploymentAnalysis`: one
    false-rollback budget per deployment, kept across stages, stage lengths and (with a
    checkpoint) restarts. A checkpoint that cannot be read is logged and alerted as a
    new budget, never renewed silently."""

    def __init__(
        self,
        config: SequentialConfig,
        checkpoint: CanaryCheckpoint | None = None,
        alerts: AlertSink | None = None,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.alerts = alerts
        self.analysis: DeploymentAnalysis | None = None
        self._last_check: float | None = None
        if checkpoint is not None:
            self._restore(checkpoint)

    def _restore(self, checkpoint: CanaryCheckpoint) -> None:
        try:
            data = checkpoint.load()
            if data and data.get("analysis"):
                self.analysis = DeploymentAnalysis.from_dict(data["analysis"], self.config)
                self._last_check = float(data["last_check"])
        except (ValueError, KeyError, TypeError) as exc:
            self.analysis = None
            log.error(
                "canary.budget_unreadable",
                error=str(exc),
                message="canary budget state unreadable: the next check starts a new budget",
            )
            if self.alerts is not None:
                self.alerts.alert("canary.budget_unreadable", {"error": str(exc)})
            return
        if self.analysis is not None:
            log.info(
                "canary.budget_restored",
                deployment=self.analysis.deployment,
                checks=self.analysis.checks,
            )

    def _save(self) -> None:
        if self.checkpoint is None:
            return
        data = {
            "analysis": None if self.analysis is None else self.analysis.to_dict(),
            "last_check": self._last_check,
        }
        try:
            self.checkpoint.save(data)
        except OSError as exc:
            log.error("canary.budget_not_saved", error=str(exc))

    def last_check(self, deployment: str) -> float | None:
        if self.analysis is None or self.analysis.deployment != deployment:
            return None
        return self._last_check

    def evaluate(
        self,
        deployment: str,
        interval: Pair,
        context: Pair,
        *,
        now: float,
        baseline: Baseline | None = None,
    ) -> Evaluation:
        if self.analysis is None or self.analysis.deployment != deployment:
            if self.analysis is not None:
                log.info(
                    "canary.deployment_ended",
                    deployment=self.analysis.deployment,
                    why=f"new deployment {deployment}",
                )
            self.analysis = DeploymentAnalysis(self.config, deployment)
            log.info(
                "canary.deployment_started",
                deployment=deployment,
                budget=self.config.false_rollback_rate,
            )
        recorded = None
        limit = None
        if baseline is not None:
            recorded = RecordedBaseline(baseline.requests, baseline.error_rate, baseline.p95_s)
            if baseline.requests > 0 and baseline.p95_s > 0:
                limit = self.config.judge.max_p95_ratio * baseline.p95_s
        counts = interval_counts(interval[0], interval[1], limit)
        ratios = quantile_ratios(context[0], context[1], self.config.judge.latency_floor_s)
        decision = self.analysis.observe(counts, latency_ratios=ratios, baseline=recorded)
        self._last_check = now
        self._save()
        if decision.rollback:
            verdict = Verdict.FAIL
        elif decision.enough_data:
            verdict = Verdict.PASS
        else:
            verdict = Verdict.INCONCLUSIVE
        return Evaluation(verdict, decision.reason, decision.rollback)

    def end(self, why: str) -> None:
        if self.analysis is None:
            return
        log.info("canary.deployment_ended", deployment=self.analysis.deployment, why=why)
        self.analysis = None
        self._last_check = None
        self._save()

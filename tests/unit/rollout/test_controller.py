"""The rollout controller and the rollout verbs, driven tick by tick on a fake clock:
in-memory state store and audit log, traffic recorded straight into the windows, scripted
shadow readings. No server, no sleeping: each test says what happens after how many
seconds of (fake) time."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest

from sidecar.adapters.store.memory import MemoryStateStore
from sidecar.app.control import ControlService, RolloutSetup
from sidecar.app.rollout import (
    JudgeEvaluator,
    RolloutController,
    run_drill,
    stable_baseline,
)
from sidecar.app.state import StateHolder
from sidecar.config import parse_config
from sidecar.core.canary.window import RollingWindows
from sidecar.core.gates import GateReading, GateStatus, ShadowReading
from sidecar.core.rollout import Phase, Stage, StageKind
from sidecar.core.shadow.report import ShadowThresholds
from sidecar.core.state import DesiredState
from sidecar.errors import FailedPrecondition
from sidecar.testing.clock import FakeClock
from sidecar.testing.inprocess import FAST_ANALYSIS, config_dict

ADDRESS = "127.0.0.1:1"  # never dialled: nothing here talks to a model server


class RecordingAlerts:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def alert(self, event: str, fields: Mapping[str, Any]) -> None:
        self.events.append((event, dict(fields)))


class MemoryCheckpoint:
    """The budget's checkpoint in memory (a JSON round trip, like the file)."""

    def __init__(self) -> None:
        self.text: str | None = None
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return None if self.text is None else dict(json.loads(self.text))

    def save(self, data: Mapping[str, Any]) -> None:
        self.text = json.dumps(data)
        self.saves += 1


class Harness:
    """A controller over a real ControlService with in-memory stores and a fake clock."""

    def __init__(
        self,
        weights: dict[str, int],
        *,
        shadow: bool = False,
        experiment: bool = False,
        **analysis: Any,
    ) -> None:
        variants: dict[str, Any] = {"stable": ADDRESS, "canary": ADDRESS}
        if shadow:
            variants["shadow"] = (ADDRESS, "shadow")
        raw = config_dict(
            variants,
            weights=weights,
            shadow={"variant": "shadow"} if shadow else None,
            analysis={**FAST_ANALYSIS, **analysis},
        )
        config = parse_config(raw, "<test>")
        self.analysis = a = config.analysis
        self.clock = FakeClock()
        self.windows = RollingWindows(a.bucket, a.horizon)
        self.audit = MemoryStateStore()  # the store keeps the audit entries
        self.alerts = RecordingAlerts()
        self.ready: dict[str, bool] = {"stable": True, "canary": True}
        self.served: dict[str, int] = {}
        self.shadow_reading: ShadowReading | None = None
        self.ab: GateReading | Exception = GateReading(GateStatus.WAIT, 1.0, 0.05, "no look yet")
        self.experiment = experiment
        self.checkpoint: MemoryCheckpoint | None = None
        state = DesiredState.from_flag(config.flag, unix_time=self.clock())
        self.control = ControlService(
            holder=StateHolder(config.flag, state),
            template=config.flag,
            store=self.audit,
            ready=self._ready,
            served=lambda: self.served,
            clock=self.clock,
            rollouts=RolloutSetup(
                has_shadow=shadow,
                has_experiment=experiment,
                baseline=stable_baseline(self.windows, a.lookback),
            ),
        )
        self.controller = self.new_controller()

    def new_controller(self) -> RolloutController:
        """A controller as a (re)started sidecar builds it, over the same state."""
        return RolloutController(
            control=self.control,
            windows=self.windows,
            evaluator_factory=lambda: JudgeEvaluator(self.analysis.deployment(), self.checkpoint),
            analysis=self.analysis,
            shadow_thresholds=ShadowThresholds(),
            alerts=self.alerts,
            shadow=lambda: self.shadow_reading,
            ab_gate=self._ab if self.experiment else None,
            clock=self.clock,
        )

    def _ab(self) -> GateReading:
        if isinstance(self.ab, Exception):
            raise self.ab
        return self.ab

    async def _ready(self, variant: str) -> bool:
        return self.ready.get(variant, False)

    @property
    def state(self) -> DesiredState:
        return self.control.snapshot().state

    def serve(self, variant: str, requests: int, status: str = "OK") -> None:
        """`requests` requests of `variant` that ended now, 10 ms each."""
        if requests:
            self.windows.record_many(variant, self.clock(), status, [0.010], [requests])
            self.served[variant] = self.served.get(variant, 0) + requests

    async def tick(self, **traffic: int | tuple[int, str]) -> None:
        """Traffic during one interval, then the controller's tick at the interval's end."""
        for variant, spec in traffic.items():
            n, status = spec if isinstance(spec, tuple) else (spec, "OK")
            self.serve(variant, n, status)
        self.clock.advance(self.analysis.interval)
        await self.controller.tick(self.clock())

    def methods(self) -> list[str]:
        return [e.method for e in self.audit.entries]


async def test_healthy_canary_is_kept_and_a_failing_one_rolled_back() -> None:
    """Healthy: 30 ticks (3 s of fake time) without a rollback. Then the canary fails:
    rolled back within 5 s, through ControlService as `health-checker`, audited with
    the judge's reason, and alerted."""
    h = Harness({"stable": 8000, "canary": 2000})
    for _ in range(30):
        await h.tick(stable=40, canary=10)
    assert h.state.weights["canary"] == 2000  # healthy: no rollback
    assert "Rollback" not in h.methods() and h.controller.verdicts.get("PASS", 0) > 0
    failed_at = h.clock()
    for _ in range(100):
        await h.tick(stable=40, canary=(10, "INTERNAL"))
        if h.state.weights["canary"] == 0:
            break
    detected = h.clock() - failed_at
    assert h.state.weights["canary"] == 0 and h.state.updated_by == "health-checker"
    rollback = h.audit.entries[-1]
    assert (rollback.method, rollback.principal) == ("Rollback", "health-checker")
    assert "error_rate" in rollback.reason and "FAIL" in rollback.reason
    assert detected < 5.0
    event, fields = h.alerts.events[0]
    assert event == "canary.rolled_back" and "error_rate" in fields["reason"]


async def test_no_plan_and_no_canary_traffic_means_no_judging() -> None:
    """With the canary at 0% (or the kill switch on) the automatic check does nothing."""
    h = Harness({"stable": 10_000, "canary": 0})
    for _ in range(20):
        await h.tick(stable=50)
    assert h.controller.verdicts == {} and h.methods() == []


PLAN = (
    Stage("shadow", StageKind.SHADOW, 0, min_duration_s=0.3, min_samples=50),
    Stage("canary-5", StageKind.CANARY, 500, min_duration_s=0.5, min_samples=10),
    Stage("canary-25", StageKind.CANARY, 2500, min_duration_s=0.5, min_samples=40),
    Stage("promote", StageKind.PROMOTE),
)


async def test_healthy_plan_walks_shadow_to_promote() -> None:
    """shadow -> 5% -> 25% -> promote: each stage advances only when its gates pass; the
    canary ends as stable; every step is audited."""
    h = Harness({"stable": 10_000, "canary": 0}, shadow=True)
    started = await h.control.start_rollout("ops", "ship v2", 0, PLAN, force=False)
    assert started.state.rollout is not None
    assert started.state.rollout.phase is Phase.RUNNING
    assert started.state.rollout.stage is PLAN[0]
    h.shadow_reading = ShadowReading(60, 60, 60, 0, 0.010, 0.011, 0.0)
    seen: set[str] = set()
    for _ in range(200):
        rollout = h.state.rollout
        assert rollout is not None
        if rollout.phase is Phase.SUCCEEDED:
            break
        seen.add(rollout.stage.name if rollout.stage else "")
        bp = h.state.weights.get("canary", 0)
        await h.tick(stable=(10_000 - bp) // 100, canary=bp // 100)
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.SUCCEEDED
    assert rollout.stage is not None and rollout.stage.name == "promote"
    assert h.controller.verdicts.get("PASS", 0) > 0
    assert h.state.stable == "canary" and h.state.weights["canary"] == 10_000
    assert {"shadow", "canary-5", "canary-25"} <= seen
    methods = h.methods()
    assert methods.count("RolloutAdvance") == 3 and "Promote" in methods
    assert methods.count("RolloutStage") == 2
    assert ("rollout.finished", {"phase": "SUCCEEDED", "message": "promoted"}) in h.alerts.events


async def test_stage_holds_while_a_gate_waits() -> None:
    """Too few canary requests for the stage: gates WAIT and the stage holds, whatever
    the time spent."""
    h = Harness({"stable": 10_000, "canary": 0})
    plan = (Stage("c5", StageKind.CANARY, 500, min_duration_s=0.0, min_samples=10**9),)
    await h.control.start_rollout("ops", "go", 0, plan, force=False)
    for _ in range(40):
        await h.tick(stable=95, canary=5)
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.RUNNING and rollout.stage_index == 0
    gates = {g.name: g for g in h.controller.gates}
    assert gates["min_samples"].status is GateStatus.WAIT
    assert 0 < h.controller.stage_samples == gates["min_samples"].value <= 40 * 5


async def test_plan_rolls_back_when_the_canary_fails_a_stage() -> None:
    """A canary failing during its stage: the plan ends ROLLED_BACK, traffic on stable."""
    h = Harness({"stable": 10_000, "canary": 0})
    plan = (
        Stage("canary-5", StageKind.CANARY, 500, min_duration_s=60, min_samples=10_000),
        Stage("promote", StageKind.PROMOTE),
    )
    await h.control.start_rollout("ops", "try", 0, plan, force=False)
    for _ in range(10):  # 1 s healthy
        await h.tick(stable=95, canary=5)
    assert h.state.weights["canary"] == 500
    for _ in range(200):
        await h.tick(stable=95, canary=(5, "UNAVAILABLE"))
        rollout = h.state.rollout
        if rollout is not None and rollout.phase is Phase.ROLLED_BACK:
            break
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.ROLLED_BACK
    assert h.state.weights["canary"] == 0 and h.state.stable == "stable"
    assert "gate failed: health" in h.audit.entries[-1].reason


async def test_shadow_stage_fails_when_every_shadow_call_fails() -> None:
    """A shadow whose calls all fail is never compared; its error gate is judged on calls
    sent, so the shadow stage rolls back instead of waiting forever."""
    h = Harness({"stable": 10_000, "canary": 0}, shadow=True)
    plan = (
        Stage("shadow", StageKind.SHADOW, 0, min_samples=50),
        Stage("promote", StageKind.PROMOTE),
    )
    await h.control.start_rollout("ops", "try", 0, plan, force=True)
    h.shadow_reading = ShadowReading(0, 0, 60, 60, None, None, 1.0)
    for _ in range(5):
        await h.tick(stable=100)
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.ROLLED_BACK
    rollback = [e for e in h.audit.entries if e.method == "Rollback"][-1]
    assert "shadow_error_rate" in rollback.reason


async def test_skipping_stages_needs_force_and_is_audited() -> None:
    """shadow straight to 100% is refused (FailedPrecondition, nothing changes); with
    force and a reason it starts and the audit log names the skip."""
    h = Harness({"stable": 10_000, "canary": 0}, shadow=True)
    plan = (
        Stage("shadow", StageKind.SHADOW, 0, min_samples=10),
        Stage("all-in", StageKind.CANARY, 10_000, min_samples=10),
    )
    before = h.control.snapshot().revision
    with pytest.raises(FailedPrecondition) as info:
        await h.control.start_rollout("ops", "yolo", 0, plan, force=False)
    assert "skips" in info.value.message and "force" in info.value.message
    assert h.control.snapshot().revision == before
    forced = await h.control.start_rollout("ops", "hotfix, reviewed", 0, plan, force=True)
    assert forced.state.rollout is not None and forced.state.rollout.phase is Phase.RUNNING
    entry = h.audit.entries[-1]
    assert entry.method == "StartRollout" and "FORCED" in entry.reason


async def test_rollout_refused_when_stable_is_not_ready() -> None:
    """No rollout starts while the stable variant is not ready."""
    h = Harness({"stable": 10_000, "canary": 0})
    h.ready["stable"] = False
    with pytest.raises(FailedPrecondition) as info:
        await h.control.start_rollout("ops", "go", 0, (), force=True)
    assert "stable" in info.value.message and h.state.rollout is None


async def test_pause_resume_abort() -> None:
    """Pause holds the plan (paused time does not count towards the stage), resume
    continues it, abort sends everything to stable; pausing nothing is refused."""
    h = Harness({"stable": 10_000, "canary": 0})
    plan = (Stage("c5", StageKind.CANARY, 500, min_samples=10**9),)
    await h.control.start_rollout("ops", "go", 0, plan, force=False)
    await h.tick()
    assert h.state.weights["canary"] == 500
    h.clock.advance(10.0)
    paused = await h.control.pause_rollout("ops", "lunch", 0)
    assert paused.state.rollout is not None and paused.state.rollout.phase is Phase.PAUSED
    h.clock.advance(3600.0)
    await h.controller.tick(h.clock())  # a paused plan is not driven
    resumed = await h.control.resume_rollout("ops", "back", 0)
    rollout = resumed.state.rollout
    assert rollout is not None and rollout.phase is Phase.RUNNING
    assert rollout.elapsed(h.clock()) == pytest.approx(10.1)
    aborted = await h.control.abort_rollout("ops", "changed my mind", 0)
    assert aborted.state.rollout is not None and aborted.state.rollout.phase is Phase.ABORTED
    assert h.state.weights["canary"] == 0
    with pytest.raises(FailedPrecondition):
        await h.control.pause_rollout("ops", "x", 0)


async def test_restart_mid_plan_resumes_the_stage() -> None:
    """A controller built anew over a state mid-plan resumes the stage it was in (stage
    time kept) without rewriting it."""
    h = Harness({"stable": 10_000, "canary": 0})
    plan = (
        Stage("c5", StageKind.CANARY, 500, min_samples=10**9),
        Stage("promote", StageKind.PROMOTE),
    )
    started = await h.control.start_rollout("ops", "go", 0, plan, force=False)
    await h.tick()
    assert h.state.weights["canary"] == 500
    revision = h.control.snapshot().revision
    h.clock.advance(30.0)
    h.controller = h.new_controller()
    await h.tick(stable=95, canary=5)
    rollout = h.state.rollout
    assert started.state.rollout is not None and rollout is not None
    assert rollout.phase is Phase.RUNNING and rollout.stage is not None
    assert rollout.stage.name == "c5"
    assert rollout.stage_started_unix == started.state.rollout.stage_started_unix
    assert rollout.elapsed(h.clock()) > 30.0 and h.control.snapshot().revision == revision


async def test_drill_rehearses_rollback_and_restores_state() -> None:
    """The drill shows the controller's evaluator a failing canary, rolls back through
    ControlService as `health-checker`, then restores the previous state's content."""
    h = Harness({"stable": 9000, "canary": 1000})
    before = h.control.snapshot()
    report = await run_drill(h.controller, "ops", "quarterly drill")
    after = h.control.snapshot()
    assert report.rolled_back and "error_rate" in report.verdict_reason
    assert dict(after.state.weights) == dict(before.state.weights)
    assert after.revision == report.restored_revision == before.revision + 2
    assert [(e.method, e.principal) for e in h.audit.entries[-2:]] == [
        ("Rollback", "health-checker"), ("DrillRestore", "ops"),
    ]  # fmt: skip
    assert "DRILL" in h.audit.entries[-2].reason


async def test_variant_held_at_full_traffic_is_reported() -> None:
    """A canary held at 100% longer than the configured age is reported."""
    h = Harness({"stable": 10_000, "canary": 0}, stale_after_hours=0.0001)  # 0.36 s
    await h.control.set_weights("ops", "all in", 0, {"stable": 0, "canary": 10_000})
    assert not h.controller.warnings(h.state, h.clock())
    h.clock.advance(0.5)
    await h.controller.tick(h.clock())
    warnings = h.controller.warnings(h.state, h.clock())
    assert any("canary" in w and "100%" in w for w in warnings)


async def test_ab_gate_holds_while_undecided_and_rolls_back_on_keep_a() -> None:
    """A stage waiting for the A/B test holds while the test waits or cannot be read, and
    rolls back (audited with the gate's detail) once it says Keep A."""
    h = Harness({"stable": 10_000, "canary": 0}, experiment=True)
    plan = (
        Stage("c50", StageKind.CANARY, 5000, min_samples=10, ab_gate=True),
        Stage("promote", StageKind.PROMOTE),
    )
    await h.control.start_rollout("ops", "A/B", 0, plan, force=True)
    for _ in range(20):
        await h.tick(stable=50, canary=50)
    gates = {g.name: g for g in h.controller.gates}
    assert gates["ab_test"].status is GateStatus.WAIT and gates["health"].status is GateStatus.PASS
    h.ab = RuntimeError("tracker busy")
    await h.tick(stable=50, canary=50)
    gates = {g.name: g for g in h.controller.gates}
    assert gates["ab_test"].status is GateStatus.WAIT
    assert "ab_test unreadable: tracker busy" in gates["ab_test"].detail
    h.ab = GateReading(GateStatus.FAIL, 0.001, 0.05, "correct: KEEP_A: B is worse")
    await h.tick(stable=50, canary=50)
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.ROLLED_BACK
    rollback = h.audit.entries[-1]
    assert rollback.principal == "health-checker" and "ab_test: correct: KEEP_A" in rollback.reason


FULL_PLAN = (
    Stage("c5", StageKind.CANARY, 500, min_duration_s=0.5, min_samples=10),
    Stage("c50", StageKind.CANARY, 5000, min_duration_s=0.5, min_samples=40),
    Stage("c100", StageKind.CANARY, 10_000, min_duration_s=0.5, min_samples=40),
    Stage("promote", StageKind.PROMOTE),
)


async def _walk(h: Harness, alone_errors: int = 0) -> list[tuple[str, str, int]]:
    """Tick through the plan with traffic split by the weights (plus `alone_errors`
    failed canary requests per tick at 100%); returns (stage, deployment, checks)."""
    seen: list[tuple[str, str, int]] = []
    for _ in range(300):
        rollout = h.state.rollout
        assert rollout is not None
        if not rollout.phase.active:
            break
        bp = h.state.weights.get("canary", 0)
        if bp == 10_000:
            h.serve("canary", alone_errors, "INTERNAL")
        await h.tick(stable=(10_000 - bp) // 100, canary=bp // 100)
        analysis = getattr(h.controller.evaluator, "analysis", None)
        if analysis is not None and rollout.stage is not None:
            seen.append((rollout.stage.name, analysis.deployment, analysis.checks))
    return seen


async def test_one_budget_spans_every_stage_and_the_100pct_stage_finishes() -> None:
    """One deployment from the first canary check to promote: the sequential tests'
    checks keep counting across stages (never a fresh budget per stage), and the 100%
    stage, with no stable traffic, is judged against the baseline recorded at the
    rollout's start and finishes."""
    h = Harness({"stable": 10_000, "canary": 0})
    for _ in range(20):
        await h.tick(stable=100)  # the stable's baseline, recorded at the start
    await h.control.start_rollout("ops", "ship", 0, FULL_PLAN, force=True)
    rollout = h.state.rollout
    assert rollout is not None and rollout.baseline.requests > 0
    seen = await _walk(h)
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.SUCCEEDED
    assert {s for s, _, _ in seen} >= {"c5", "c50", "c100"}
    assert {d for _, d, _ in seen} == {"canary vs stable"}
    checks = [c for _, _, c in seen]
    assert checks == sorted(checks) and checks[-1] == len(set(checks))  # one count, never reset
    assert "PASS" in h.controller.verdicts
    assert (
        h.state.stable == "canary" and h.controller.evaluator.last_check("canary vs stable") is None
    )


async def test_100pct_stage_rolls_back_against_the_recorded_baseline() -> None:
    """At 100% the canary has no concurrent stable: 10% errors against a baseline with
    none roll it back, with the baseline test named."""
    h = Harness({"stable": 10_000, "canary": 0})
    for _ in range(20):
        await h.tick(stable=100)
    await h.control.start_rollout("ops", "ship", 0, FULL_PLAN, force=True)
    await _walk(h, alone_errors=10)
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.ROLLED_BACK
    assert rollout.stage is not None and rollout.stage.name == "c100"
    assert "baseline_error_rate HIGH" in h.audit.entries[-1].reason


async def test_100pct_stage_without_a_baseline_is_gate_free_and_says_so() -> None:
    h = Harness({"stable": 10_000, "canary": 0})
    await h.control.start_rollout("ops", "ship", 0, FULL_PLAN, force=True)
    rollout = h.state.rollout
    assert rollout is not None and rollout.baseline.requests == 0
    details: list[str] = []
    for _ in range(300):
        rollout = h.state.rollout
        assert rollout is not None
        if not rollout.phase.active:
            break
        bp = h.state.weights.get("canary", 0)
        await h.tick(stable=(10_000 - bp) // 100, canary=bp // 100)
        details += [g.detail for g in h.controller.gates if g.name == "health"]
    assert rollout is not None and rollout.phase is Phase.SUCCEEDED
    assert any("gate-free" in d for d in details)


async def test_the_budget_survives_a_restart_and_ends_with_the_rollback() -> None:
    """No plan: the deployment's evidence is checkpointed at every check; a restarted
    controller continues the same deployment (check numbers go on, nothing renewed); a
    rollback ends it."""
    h = Harness({"stable": 8000, "canary": 2000})
    h.checkpoint = MemoryCheckpoint()
    h.controller = h.new_controller()
    for _ in range(10):
        await h.tick(stable=40, canary=10)
    assert h.checkpoint.saves == 10
    h.controller = h.new_controller()  # a restart
    restored = h.controller.evaluator
    assert restored.last_check("canary vs stable") == h.clock()
    await h.tick(stable=40, canary=10)
    assert "check 11" in h.controller.last_verdict
    for _ in range(100):
        await h.tick(stable=40, canary=(10, "INTERNAL"))
        if h.state.weights["canary"] == 0:
            break
    assert h.state.weights["canary"] == 0
    assert h.checkpoint.load() == {"analysis": None, "last_check": None}


async def test_an_operator_rollback_ends_the_deployment() -> None:
    """No plan: the canary's weight going to 0 (an operator's rollback) ends the
    deployment; serving the canary again later is a new deployment (check 1)."""
    h = Harness({"stable": 8000, "canary": 2000})
    for _ in range(5):
        await h.tick(stable=40, canary=10)
    assert "check 5" in h.controller.last_verdict
    await h.control.rollback("ops", "not today", 0)
    await h.tick(stable=50)
    assert h.controller.evaluator.last_check("canary vs stable") is None
    await h.control.set_weights("ops", "again", 0, {"stable": 8000, "canary": 2000})
    await h.tick(stable=40, canary=10)
    assert "check 1)" in h.controller.last_verdict

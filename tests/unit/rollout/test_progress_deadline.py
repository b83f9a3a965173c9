"""The progress deadline: a rollout stage still waiting on a gate past its deadline is
reported (status warning, log, alert, metric reading) once, never silently; with
`analysis.progress_deadline_abort` it is rolled back. Fake clock, no sleeping."""

from __future__ import annotations

from test_controller import Harness

from sidecar.core.rollout import (
    Phase,
    RolloutProgress,
    Stage,
    StageKind,
    overdue,
    projected_finish,
)

# A stage whose sample minimum cannot be met at 5% of 100 requests per tick.
STALLING = (Stage("c5", StageKind.CANARY, 500, min_duration_s=0.0, min_samples=10**9),)


async def test_a_stalled_stage_raises_the_progress_deadline_warning() -> None:
    """Deadline 2 s (ticks of 0.1 s): before it, only the projection (the sample minimum
    cannot be met in time at this rate); after it, one status warning naming the stage and
    the gate it waits on, one alert; the rollout keeps RUNNING."""
    h = Harness({"stable": 10_000, "canary": 0}, progress_deadline=2.0)
    await h.control.start_rollout("ops", "go", 0, STALLING, force=False)
    for _ in range(15):  # 1.5 s
        await h.tick(stable=95, canary=5)
    (early,) = h.controller.warnings(h.state, h.clock())
    assert "c5 will miss its progress deadline" in early and "samples take about" in early
    assert h.controller.stalled(h.state) == ""
    assert not [e for e, _ in h.alerts.events if e == "rollout.progress_deadline_exceeded"]
    for _ in range(10):  # 2.5 s
        await h.tick(stable=95, canary=5)
    warnings = h.controller.warnings(h.state, h.clock())
    assert len(warnings) == 1
    assert "c5" in warnings[0] and "progress deadline" in warnings[0]
    assert "min_samples" in warnings[0]
    alerts = [f for e, f in h.alerts.events if e == "rollout.progress_deadline_exceeded"]
    assert len(alerts) == 1 and alerts[0]["stage"] == "c5"
    rollout = h.state.rollout
    assert rollout is not None and rollout.phase is Phase.RUNNING
    assert "Rollback" not in h.methods()


async def test_a_stage_deadline_beats_the_default_and_abort_rolls_back() -> None:
    """The stage's own deadline (1 s) wins over the configured one (1 h); with abort on,
    the stalled stage is rolled back: traffic back on stable, the rollout no longer
    active, and the warning gone with it."""
    h = Harness(
        {"stable": 10_000, "canary": 0}, progress_deadline=3600.0, progress_deadline_abort=True
    )
    plan = (
        Stage(
            "c5", StageKind.CANARY, 500, min_duration_s=0.0, min_samples=10**9,
            progress_deadline_s=1.0,
        ),
    )  # fmt: skip
    await h.control.start_rollout("ops", "go", 0, plan, force=False)
    for _ in range(30):
        await h.tick(stable=95, canary=5)
    rollout = h.state.rollout
    assert rollout is not None and not rollout.phase.active
    assert h.state.weights["canary"] == 0 and "Rollback" in h.methods()
    assert h.controller.warnings(h.state, h.clock()) == []


async def test_a_stage_on_course_to_meet_its_minimum_raises_nothing() -> None:
    """Samples arriving fast enough for the deadline: no projection warning, no stall."""
    h = Harness({"stable": 10_000, "canary": 0}, progress_deadline=20.0)
    plan = (Stage("c5", StageKind.CANARY, 500, min_duration_s=0.0, min_samples=10**6),)
    await h.control.start_rollout("ops", "go", 0, plan, force=False)
    for _ in range(10):  # 1 s, 10 canary requests a tick: 10**6 would take 10**4 s
        await h.tick(stable=90, canary=10)
    assert len(h.controller.warnings(h.state, h.clock())) == 1  # this one cannot make it
    fast = Harness({"stable": 10_000, "canary": 0}, progress_deadline=20.0)
    plan = (Stage("c5", StageKind.CANARY, 500, min_duration_s=30.0, min_samples=1000),)
    await fast.control.start_rollout("ops", "go", 0, plan, force=False)
    for _ in range(10):  # 100 canary requests a second: 1000 within 10 s
        await fast.tick(stable=90, canary=10)
    assert fast.controller.warnings(fast.state, fast.clock()) == []


def test_projected_finish() -> None:
    assert projected_finish(100, 1000, 10.0) == 100.0
    assert projected_finish(0, 1000, 10.0) is None
    assert projected_finish(2000, 1000, 10.0) == 10.0


def test_overdue_counts_running_time_only() -> None:
    """Paused time does not count; a paused rollout and a deadline of 0 are never overdue."""
    stage = Stage("c5", StageKind.CANARY, 500)
    running = RolloutProgress((stage,), Phase.RUNNING, 0, 0.0, 100.0, paused_seconds=30.0)
    assert overdue(running, 100.0 + 30.0 + 60.0, 60.0) is None
    assert overdue(running, 100.0 + 30.0 + 75.0, 60.0) == 15.0
    assert overdue(running, 10_000.0, 0.0) is None
    paused = running.evolve(phase=Phase.PAUSED, paused_at=150.0)
    assert overdue(paused, 10_000.0, 60.0) is None

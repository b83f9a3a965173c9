"""The fast path's actor (`sidecar.app.fastpath.FastRollback`) over a real ControlService
with an in-memory store and a fake clock: it rolls back once, through the same verb as
the judge, audited with its reason; it never rolls back twice, never reverts a promotion,
and takes a concurrent writer's conflict quietly."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sidecar.adapters.store.memory import MemoryStateStore
from sidecar.app.control import ControlService
from sidecar.app.fastpath import FastRollback
from sidecar.app.ports import AuditEntry, RevisionConflict
from sidecar.app.rollout import HEALTH_CHECKER, automatic_rollback, moves_traffic
from sidecar.app.state import StateHolder
from sidecar.config import parse_config
from sidecar.core.canary.fastpath import FastRollbackSettings, HardFailureDetector
from sidecar.core.state import DesiredState
from sidecar.testing.clock import FakeClock
from sidecar.testing.inprocess import config_dict

ADDRESS = "127.0.0.1:1"  # never dialled


class RecordingAlerts:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def alert(self, event: str, fields: Mapping[str, Any]) -> None:
        self.events.append((event, dict(fields)))


class ConflictingStore(MemoryStateStore):
    """A fleet store where another member keeps committing first (compare-and-set)."""

    def commit(self, state: DesiredState, entry: AuditEntry) -> None:
        raise RevisionConflict("state: revision moved on (another member wrote first)")


class Harness:
    def __init__(self, weights: dict[str, int], store: MemoryStateStore | None = None) -> None:
        config = parse_config(
            config_dict({"stable": ADDRESS, "canary": ADDRESS}, weights=weights), "<test>"
        )
        self.clock = FakeClock()
        self.store = store or MemoryStateStore()
        self.alerts = RecordingAlerts()
        self.control = ControlService(
            holder=StateHolder(config.flag, DesiredState.from_flag(config.flag)),
            template=config.flag,
            store=self.store,
            ready=self._ready,
            served=lambda: {"stable": 1, "canary": 1},
            clock=self.clock,
        )
        self.fast = FastRollback(
            HardFailureDetector(FastRollbackSettings()),
            snapshot=self.control.snapshot,
            rollback=lambda principal, reason: automatic_rollback(self.control, principal, reason),
            alerts=self.alerts,
            clock=self.clock,
        )

    async def _ready(self, variant: str) -> bool:
        return True

    def requests(self, variant: str, status: str, n: int) -> None:
        for _ in range(n):
            self.fast.record(variant, self.clock(), 0.001, status)

    @property
    def state(self) -> DesiredState:
        return self.control.snapshot().state

    def rollbacks(self) -> list[AuditEntry]:
        return [e for e in self.store.entries if e.method == "Rollback"]


async def test_a_dead_canary_is_rolled_back_once_with_the_reason_audited_and_alerted() -> None:
    """20 UNAVAILABLE canary answers trip the fast path once (later ones are not judged
    while it acts); the rollback is the ControlService's, as health-checker, audited with
    the counts, alerted like the judge's; then the detector starts afresh."""
    h = Harness({"stable": 5000, "canary": 5000})
    h.requests("stable", "OK", 25)
    h.requests("canary", "UNAVAILABLE", 200)
    assert h.fast.trips == 1 and h.fast.pending is not None
    assert await h.fast.act(h.fast.pending) is True
    assert h.state.weights["canary"] == 0 and h.state.updated_by == HEALTH_CHECKER
    [entry] = h.rollbacks()
    assert entry.principal == HEALTH_CHECKER
    assert entry.reason == (
        "fast-path: canary failed 20 of 20 requests in the last 0.25 s (stable: 0 of 25 in 5 s)"
    )
    assert h.alerts.events == [
        (
            "canary.rolled_back",
            {"reason": entry.reason, "principal": HEALTH_CHECKER, "seconds": 0.0},
        )
    ]
    assert h.fast.detector.record("canary", h.clock(), "UNAVAILABLE") is None  # reset


async def test_acting_again_is_a_no_op_and_never_reverts_a_promotion() -> None:
    """After a promotion (v1 -> v2) and a new canary share for v1, the fast path rolls the
    share back; a second act for the same trip finds nothing to roll back and leaves the
    promotion alone (a plain Rollback at that point would revert it)."""
    h = Harness({"stable": 5000, "canary": 5000})
    await h.control.promote("ops", "ship canary", 0)  # canary is stable now
    await h.control.set_weights("ops", "v1 again", 0, {"canary": 8000, "stable": 2000})
    assert (h.state.stable, h.state.canary) == ("canary", "stable")
    h.requests("stable", "UNAVAILABLE", 20)  # "stable" is the canary slot now
    trip = h.fast.pending
    assert trip is not None and trip.canary == "stable"
    assert await h.fast.act(trip) is True
    assert await h.fast.act(trip) is False
    assert len(h.rollbacks()) == 1 and h.fast.skipped == 1
    assert h.state.stable == "canary" and h.state.weights["stable"] == 0
    assert not h.state.promotions[-1].reverted


async def test_no_traffic_elsewhere_or_kill_switch_means_no_rollback() -> None:
    """A trip from requests that reached the canary while it holds no weight (in flight
    at a rollback, or pinned users): nothing to roll back. With the kill switch on:
    nothing either. Neither writes anything."""
    h = Harness({"stable": 10_000, "canary": 0})
    h.requests("canary", "UNAVAILABLE", 20)
    assert h.fast.pending is not None and await h.fast.act(h.fast.pending) is False
    k = Harness({"stable": 5000, "canary": 5000})
    await k.control.set_kill_switch("ops", "incident", 0, True)
    k.requests("canary", "UNAVAILABLE", 20)
    assert k.fast.pending is not None and await k.fast.act(k.fast.pending) is False
    assert h.rollbacks() == [] and k.rollbacks() == []
    assert h.fast.skipped == k.fast.skipped == 1


async def test_a_conflicting_fleet_write_is_taken_quietly() -> None:
    """Another member commits first every time (compare-and-set conflict): the fast path
    retries a bounded number of times, then gives up without raising; nothing changed
    here, and the detector starts afresh so new failures can trip it again."""
    h = Harness({"stable": 5000, "canary": 5000}, store=ConflictingStore())
    h.requests("canary", "UNAVAILABLE", 20)
    assert h.fast.pending is not None
    assert await h.fast.act(h.fast.pending) is False
    assert h.state.weights["canary"] == 5000 and h.fast.skipped == 1
    assert h.alerts.events == []


async def test_the_run_task_acts_on_a_trip_off_the_request_path() -> None:
    """`record` only stores the trip and wakes `run`; the task rolls back; the next trip
    after the rollback (requests still in flight) finds nothing to do."""
    h = Harness({"stable": 5000, "canary": 5000})
    task = asyncio.create_task(h.fast.run())
    try:
        await asyncio.sleep(0)  # the task is waiting
        h.requests("canary", "UNAVAILABLE", 20)
        assert h.rollbacks() == []  # nothing happened on the "request path"
        for _ in range(1000):
            if h.fast.rollbacks and h.fast.pending is None:
                break
            await asyncio.sleep(0)
        assert h.fast.rollbacks == 1 and h.state.weights["canary"] == 0
        h.requests("canary", "UNAVAILABLE", 20)  # in flight at the rollback
        for _ in range(1000):
            if h.fast.skipped and h.fast.pending is None:
                break
            await asyncio.sleep(0)
        assert h.fast.skipped == 1 and len(h.rollbacks()) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_automatic_rollback_only_when_it_moves_traffic() -> None:
    """`moves_traffic`: weight elsewhere or a running plan. `automatic_rollback` returns
    None (no write) once everything is on stable, so the judge's rollback after the fast
    path's (or the other way round) writes nothing."""
    h = Harness({"stable": 5000, "canary": 5000})
    assert moves_traffic(h.state)
    assert await automatic_rollback(h.control, HEALTH_CHECKER, "first") is not None
    assert not moves_traffic(h.state)
    assert await automatic_rollback(h.control, HEALTH_CHECKER, "second") is None
    assert [e.reason for e in h.rollbacks()] == ["first"]


async def test_a_rule_naming_the_canary_is_traffic_a_rollback_moves() -> None:
    """Every weight on stable but a user pinned to the canary: the automatic rollback
    suspends the rule (it moves that user's traffic) and the next one writes nothing; a
    promotion is never reverted."""
    h = Harness({"stable": 10_000, "canary": 0})
    assert not moves_traffic(h.state)
    await h.control.set_user_override("ops", "qa", h.state.revision, "qa-user", "canary")
    assert moves_traffic(h.state)
    assert await automatic_rollback(h.control, HEALTH_CHECKER, "pinned canary failing") is not None
    assert h.state.rules_suspended and h.state.user_overrides == {"qa-user": "canary"}
    assert not moves_traffic(h.state)
    assert await automatic_rollback(h.control, HEALTH_CHECKER, "again") is None
    assert [e.reason for e in h.rollbacks()] == ["pinned canary failing"]

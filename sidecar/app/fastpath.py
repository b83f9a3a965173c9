"""The fast path: roll a hard-failing canary back at once, without waiting for the
statistical judge's next check (`analysis.fast_rollback`).

`FastRollback.record` is one more sink of `VariantStatsProcessor` (every finished request:
variant, end, duration, status). It runs on the request's thread, does constant-time work
(`HardFailureDetector.record`: two counters in a time slot, a sum over the slots on a hard
canary failure) and never raises. When the detector trips it stores the trip and wakes
`run`, the asyncio task that acts; while a trip is pending or being acted on, further
requests are not judged, so one rollback runs at a time.

`act` rolls back through `automatic_rollback` (the same `ControlService.rollback` as the
controller and operators, as `health-checker`, reason ``fast-path: canary failed 23 of 25
requests in 5 s (stable: 0 of 31)``), only when that sends traffic back to stable and at
the revision it checked: already rolled back (by the judge, an operator or another fleet
member) is a no-op, and a write that got in first is re-checked. The alert is the
controller's (`canary.rolled_back`). The detector then starts afresh, so requests still
in flight at the rollback cannot trip it again.

Fleet (`state.backend: redis`): every member judges its own requests and may roll back (a
safety write, not a leader's: no lease fence); the store's compare-and-set makes a second
member's concurrent rollback a conflict, which `act` answers quietly (logged at info).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from sidecar.app.rollout import HEALTH_CHECKER, AlertSink
from sidecar.app.state import Snapshot
from sidecar.core.canary.fastpath import HardFailureDetector, Trip
from sidecar.errors import ErrorCode, SidecarError

log = structlog.get_logger("sidecar.health")

REASON_PREFIX = "fast-path: "

# (principal, reason) -> the snapshot committed, or None when there was nothing to roll
# back (`sidecar.app.rollout.automatic_rollback` over the ControlService).
Rollback = Callable[[str, str], Awaitable[Snapshot | None]]


class FastRollback:
    """The fast path's sink (`record`) and actor (`run` / `act`). `trips`, `rollbacks` and
    `skipped` count what it did."""

    def __init__(
        self,
        detector: HardFailureDetector,
        *,
        snapshot: Callable[[], Snapshot],
        rollback: Rollback,
        alerts: AlertSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.detector = detector
        self._snapshot = snapshot
        self._rollback = rollback
        self.alerts = alerts
        self.clock = clock
        self._seen: Snapshot | None = None
        self._pending: Trip | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.trips = 0
        self.rollbacks = 0
        self.skipped = 0

    @property
    def pending(self) -> Trip | None:
        """The trip waiting to be acted on (None when none)."""
        return self._pending

    def record(self, variant: str, end: float, duration: float, status: str) -> None:
        """A finished request (a `VariantStatsProcessor` sink): constant time, no I/O."""
        snap = self._snapshot()
        if snap is not self._seen:  # a new state: follow its canary and stable (identity)
            self._seen = snap
            self.detector.watch(snap.flag.canary, snap.flag.stable)
        if self._pending is not None:
            return
        trip = self.detector.record(variant, end, status)
        if trip is None:
            return
        self._pending = trip
        self.trips += 1
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    async def run(self) -> None:
        """Act on each trip, one at a time, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        while True:
            if self._pending is None:
                await wake.wait()
            wake.clear()
            trip = self._pending
            if trip is None:
                continue
            try:
                await self.act(trip)
            except asyncio.CancelledError:
                raise
            except Exception:  # the fast path must keep watching
                log.exception("fast_rollback.failed", reason=trip.reason)
            finally:
                self._pending = None

    async def act(self, trip: Trip) -> bool:
        """Roll back for `trip` when the canary it judged still takes traffic; True when
        this call rolled back. The detector starts afresh either way."""
        reason = REASON_PREFIX + trip.reason
        started = self.clock()
        try:
            return await self._act(trip, reason, started)
        finally:
            self.detector.reset()

    async def _act(self, trip: Trip, reason: str, started: float) -> bool:
        snap = self._snapshot()
        if snap.flag.canary != trip.canary or snap.flag.stable != trip.stable:
            return self._skip(reason, "the canary or stable variant changed meanwhile")
        if snap.state.kill_switch:
            return self._skip(reason, "kill switch on: all traffic is on stable")
        try:
            done = await self._rollback(HEALTH_CHECKER, reason)
        except SidecarError as exc:
            if exc.code is ErrorCode.ABORTED:  # another member or an operator wrote first
                return self._skip(reason, f"another write got in first: {exc.message}")
            log.error("fast_rollback.rollback_failed", reason=reason, error=exc.message)
            self.skipped += 1
            return False
        if done is None:
            return self._skip(reason, "already on stable (rolled back, or no weight elsewhere)")
        self.rollbacks += 1
        seconds = self.clock() - started
        log.warning("fast_rollback.rolled_back", reason=reason, revision=done.revision)
        self.alerts.alert(
            "canary.rolled_back",
            {"reason": reason, "principal": HEALTH_CHECKER, "seconds": seconds},
        )
        return True

    def _skip(self, reason: str, why: str) -> bool:
        self.skipped += 1
        log.info("fast_rollback.skipped", reason=reason, why=why)
        return False

"""Drift monitoring on the data plane: sample requests cheaply, decode and track them later.

`offer` runs on every request after the primary answer: it counts, and every
`sample_every`-th request appends (request, response, variant) to a bounded queue; when the
queue is full the item is dropped and counted. It never blocks, decodes or raises.
`drain` (off the request path: the `run` task, or `report`) decodes the queued items and
feeds the pure `DriftTracker`; decode failures are counted and logged once per kind, never
raised. `run` drains in slices of `slice_size` items and yields to the event loop between
slices, so a long queue never stalls request handling for long.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic

import numpy as np
import structlog

from sidecar.app.ports import Req, Resp
from sidecar.core.experiment.drift import DriftResult, DriftTracker

log = structlog.get_logger("sidecar.drift")

_MAX_LOGGED_KINDS = 64


@dataclass(frozen=True, slots=True)
class DriftMonitorReport:
    """The tracker's result plus the monitor's counters (`sampled` includes `dropped`)."""

    drift: DriftResult
    sampled: int
    dropped: int
    decode_errors: int
    failures: int
    pending: int


class DriftMonitor(Generic[Req, Resp]):
    def __init__(
        self,
        tracker: DriftTracker,
        decode_inputs: Callable[[Req], Mapping[str, np.ndarray]],
        decode_outputs: Callable[[Resp], Mapping[str, np.ndarray]],
        *,
        sample_every: int = 1,
        max_pending: int = 1024,
        slice_size: int = 64,
        on_level_change: Callable[[str, str, str], None] | None = None,
        reference_variant: Callable[[], str | None] | None = None,
    ) -> None:
        for name, value in (
            ("sample_every", sample_every),
            ("max_pending", max_pending),
            ("slice_size", slice_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        self.tracker = tracker
        self._decode_inputs = decode_inputs
        self._decode_outputs = decode_outputs
        self.sample_every = sample_every
        self.max_pending = max_pending
        self.slice_size = slice_size
        self._pending: deque[tuple[Req, Resp, str]] = deque()
        self._countdown = sample_every
        self.sampled = 0
        self.dropped = 0
        self.decode_errors = 0
        self.failures = 0  # tracker errors (a bug, not bad data); logged once per kind
        self._logged: set[str] = set()
        self._on_level_change = on_level_change
        self._reference_variant = reference_variant

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, request: Req, response: Resp, variant: str) -> None:
        """Hot path: keep every `sample_every`-th request for later. Never blocks/raises."""
        try:
            self._countdown -= 1
            if self._countdown:
                return
            self._countdown = self.sample_every
            self.sampled += 1
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append((request, response, variant))
        except Exception:  # pragma: no cover - nothing above raises; the contract is absolute
            self.failures += 1

    def drain(self, limit: int | None = None) -> int:
        """Decode up to `limit` queued items (all when None) into the tracker; returns how
        many were taken off the queue. Never raises."""
        taken = 0
        pending = self._pending
        while pending and (limit is None or taken < limit):
            request, response, variant = pending.popleft()
            taken += 1
            try:
                inputs = self._decode_inputs(request)
                outputs = self._decode_outputs(response)
            except Exception as exc:
                self.decode_errors += 1
                self._log_once("drift.decode_failed", f"decode:{type(exc).__name__}", exc)
                continue
            try:
                self.tracker.observe(variant, inputs, outputs)
            except Exception as exc:
                self.failures += 1
                self._log_once("drift.observe_failed", f"observe:{type(exc).__name__}", exc)
        return taken

    def _log_once(self, event: str, kind: str, exc: Exception) -> None:
        if kind in self._logged or len(self._logged) >= _MAX_LOGGED_KINDS:
            return
        self._logged.add(kind)
        log.warning(event, kind=kind, error=repr(exc), note="logged once per kind")

    async def run(self, interval: float) -> None:
        """Every `interval` seconds: drain, `slice_size` items at a time with a yield to the
        event loop in between, then report level changes (`check_levels`). Cancel-safe: a
        cancellation lands between slices, never inside the tracker."""
        if not interval > 0:
            raise ValueError(f"interval must be positive; got {interval!r}")
        while True:
            await asyncio.sleep(interval)
            self.follow_reference()
            while True:
                if self.drain(self.slice_size) < self.slice_size:
                    break
                await asyncio.sleep(0)  # let requests run between slices
            self.check_levels()

    def follow_reference(self) -> None:
        """Predictions are compared with the stable variant's: after a promotion or a
        rollback the new stable's predictions become the reference (a new baseline)."""
        if self._reference_variant is None:
            return
        try:
            name = self._reference_variant()
            if name != self.tracker.reference_variant:
                log.info("drift.reference_variant", variant=name)
                self.tracker.set_reference_variant(name)
        except Exception as exc:
            self.failures += 1
            self._log_once("drift.reference_failed", f"reference:{type(exc).__name__}", exc)

    def check_levels(self) -> list[tuple[str, str, str]]:
        """Drain, then the level changes since the last check (tracker.level_changes): a
        series reaching MODERATE or MAJOR is logged as a warning, others at info; each
        change is passed to `on_level_change(series, old, new)`. Never raises."""
        self.drain()
        try:
            changes = self.tracker.level_changes()
        except Exception as exc:
            self.failures += 1
            self._log_once("drift.levels_failed", f"levels:{type(exc).__name__}", exc)
            return []
        for series, old, new in changes:
            emit = log.warning if new in ("MODERATE", "MAJOR") else log.info
            emit("drift.level_changed", series=series, old=old, new=new)
            if self._on_level_change is not None:
                try:
                    self._on_level_change(series, old, new)
                except Exception as exc:
                    self.failures += 1
                    self._log_once("drift.alert_failed", f"alert:{type(exc).__name__}", exc)
        return changes

    def max_psi(
        self, include: str = "all", *, variant: str | None = None
    ) -> tuple[float, str] | None:
        """For the rollout gate: drain, then the tracker's largest PSI (and which series)."""
        self.drain()
        return self.tracker.max_psi(include, variant=variant)

    def report(self) -> DriftMonitorReport:
        """Drain everything queued, then the tracker's report and the counters."""
        self.drain()
        return DriftMonitorReport(
            drift=self.tracker.report(),
            sampled=self.sampled,
            dropped=self.dropped,
            decode_errors=self.decode_errors,
            failures=self.failures,
            pending=len(self._pending),
        )

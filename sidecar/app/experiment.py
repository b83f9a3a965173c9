"""The experiment between stable (A, control) and canary (B, treatment), wired to the
routing state: epochs follow the weights, looks run on a timer, events are logged and
alerted, and the running state is checkpointed so a restart loses nothing.

The request path only calls `on_snapshot` (when the snapshot object changed) and
`ExperimentTracker.assigned` (one or two dict increments: requests, and users or keyless
requests for the sample-ratio check). Everything else runs in `run`, in the
rollout gate and in `report`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog

from sidecar.app.drift import DriftMonitor, DriftMonitorReport
from sidecar.app.state import Snapshot
from sidecar.core.experiment.analysis import ExperimentResult, ExperimentTracker
from sidecar.core.gates import GateReading, GateStatus, ShadowReading
from sidecar.core.shadow import ShadowRecorder, ShadowSummary
from sidecar.core.shadow.report import ShadowAnalysis, ShadowThresholds, analyse_shadow

log = structlog.get_logger("sidecar.experiment")


class AlertSink(Protocol):
    def alert(self, event: str, fields: Mapping[str, Any]) -> None: ...


class Checkpoint(Protocol):
    def load(self) -> dict[str, Any] | None: ...

    def save(self, data: Mapping[str, Any]) -> None: ...

    def quarantine(self) -> str | None:
        """Move an unreadable checkpoint aside (kept for inspection); its new name."""
        ...


class FileCheckpoint:
    """JSON file, replaced atomically (temp file, fsync, rename, fsync of the folder)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError(f"{self.path}: not valid JSON: nested too deeply") from None
        except ValueError as exc:
            raise ValueError(f"{self.path}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: not a JSON object")
        return data

    def quarantine(self) -> str | None:
        if not self.path.exists():
            return None
        aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
        os.replace(self.path, aside)
        return str(aside)

    def save(self, data: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class ExperimentService:
    def __init__(
        self,
        tracker: ExperimentTracker,
        *,
        snapshot: Callable[[], Snapshot],
        alerts: AlertSink,
        checkpoint: Checkpoint | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.time,
        fleet: Callable[[ExperimentTracker, float], ExperimentTracker] | None = None,
        alerting: Callable[[], bool] = lambda: True,
    ) -> None:
        self.tracker = tracker
        # In a fleet: the tracker the looks, the report and the gate read (this member's
        # counts plus every other member's, `sidecar.adapters.fleet.stats`); alerts only
        # where `alerting()` (the leader), so one event is alerted once.
        self._fleet = fleet
        self._alerting = alerting
        self.snapshot = snapshot
        self.alerts = alerts
        self.checkpoint = checkpoint
        self.interval = interval
        self._clock = clock
        self._synced: Snapshot | None = None
        self.epoch = 0
        self.saved_at = 0.0
        self._srm_warnings: list[str] = []
        # Plain values from the last look, for the Prometheus scrape (another thread).
        self.readings: dict[str, Any] = {}

    @staticmethod
    def restore(
        make: Callable[[dict[str, Any] | None], ExperimentTracker],
        checkpoint: Checkpoint | None,
    ) -> ExperimentTracker:
        """The tracker from the checkpoint if one is readable; a fresh one otherwise (logged)."""
        if checkpoint is None:
            return make(None)
        try:
            data = checkpoint.load()
            tracker = make(data)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # Start a fresh experiment, but never overwrite what could not be read.
            try:
                aside = checkpoint.quarantine()
            except OSError as move_error:
                aside = f"not moved: {move_error}"
            log.error("experiment.checkpoint_unreadable", error=str(exc), moved_to=aside)
            return make(None)
        if data is not None:
            log.info("experiment.restored", epoch=tracker.epoch)
        return tracker

    # ---- the request path --------------------------------------------------------------

    def on_snapshot(self, snap: Snapshot) -> int:
        """Follow a routing change: a new epoch when the variants or weights changed."""
        if snap is not self._synced:
            self._synced = snap
            before = self.epoch
            self.epoch = self.tracker.sync(
                snap.flag.stable, snap.flag.canary, snap.state.weights, self._clock()
            )
            if self.epoch != before and before:
                log.info(
                    "experiment.new_epoch",
                    epoch=self.epoch,
                    control=snap.flag.stable,
                    treatment=snap.flag.canary,
                    weights=dict(snap.state.weights),
                )
        return self.epoch

    # ---- looks -------------------------------------------------------------------------

    def analysed(self) -> ExperimentTracker:
        """The tracker the looks and the report read: this sidecar's own, or in a fleet
        the merged view (refreshed from the latest published counters)."""
        if self._fleet is None:
            return self.tracker
        return self._fleet(self.tracker, self._clock())

    def look(self) -> None:
        self.on_snapshot(self.snapshot())
        now = self._clock()
        tracker = self.analysed()
        events = tracker.look(now)
        result = tracker.report(now, history=False)
        srm = result.srm
        self._srm_warnings = [
            f"{w} (experiment epoch {self.epoch})"
            for w in result.warnings
            if w.lower().startswith("sample ratio mismatch")
        ]
        self.readings = {
            "epoch": self.epoch,
            "srm_mismatch": bool(self._srm_warnings),
            "metrics": {m.metric: (m.verdict.value, m.p_value) for m in result.metrics},
        }
        if not self._alerting():
            return
        started = [("assignments", srm.detail)] if events.srm_started else []
        started += [(metric, "outcome counts") for metric in events.outcome_srm_started]
        for what, detail in started:
            fields = {"epoch": self.epoch, "check": what, "detail": detail}
            log.warning("experiment.sample_ratio_mismatch", **fields)
            self.alerts.alert("experiment.sample_ratio_mismatch", fields)
        if events.srm_cleared or events.outcome_srm_cleared:
            log.info("experiment.sample_ratio_ok", epoch=self.epoch)
        for metric, old, new in events.verdict_changes:
            log.info("experiment.verdict", metric=metric, previous=old, verdict=new)
            if new in ("SHIP_B", "KEEP_A", "EQUIVALENT"):
                self.alerts.alert(
                    "experiment.verdict", {"metric": metric, "verdict": new, "epoch": self.epoch}
                )

    async def save(self) -> None:
        if self.checkpoint is None:
            return
        data = self.tracker.to_dict()
        try:
            await asyncio.to_thread(self.checkpoint.save, data)
            self.saved_at = self._clock()
        except OSError as exc:
            log.error("experiment.checkpoint_failed", error=str(exc))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.look()
                await self.save()
            except asyncio.CancelledError:
                raise
            except Exception:  # the experiment must never stop the sidecar
                log.exception("experiment.look_failed")

    def report(self, metrics: Sequence[str] = (), history: bool = True) -> ExperimentResult:
        self.look()
        return self.analysed().report(self._clock(), metrics, history)

    def status_warnings(self) -> list[str]:
        """Sample-ratio mismatches found at the last look (assignments or outcomes)."""
        return list(self._srm_warnings)


class DriftLevels:
    """Drift series at MODERATE or MAJOR now: alerts when a series reaches one, and keeps
    a status warning while it stays there. `on_change` is the drift monitor's
    `on_level_change`."""

    def __init__(self, alerts: AlertSink | None = None) -> None:
        self.alerts = alerts
        self._drifted: dict[str, tuple[str, str]] = {}  # series -> (level, previous)

    def on_change(self, series: str, old: str, new: str) -> None:
        if new in ("MODERATE", "MAJOR"):
            self._drifted[series] = (new, old)
            if self.alerts is not None:
                self.alerts.alert(
                    "drift.detected", {"series": series, "drift_level": new, "was": old}
                )
        else:
            self._drifted.pop(series, None)

    def current(self) -> dict[str, str]:
        """Series at MODERATE or MAJOR now (series -> level), for metrics."""
        return {series: level for series, (level, _) in self._drifted.items()}

    def warnings(self) -> list[str]:
        return [
            f"drift {level}: {series} (was {was})"
            for series, (level, was) in sorted(self._drifted.items())
        ]


class Insights:
    """Everything the experiment report and the status read, in one place: the experiment,
    the shadow and noise recorders with their analysis, and the drift monitor with the
    levels it reached."""

    def __init__(
        self,
        experiment: ExperimentService,
        *,
        shadow: ShadowRecorder | None = None,
        noise: ShadowRecorder | None = None,
        drift: DriftMonitor[Any, Any] | None = None,
        drift_levels: DriftLevels | None = None,
        primary_error_rate: Callable[[], float | None] = lambda: None,
        shadow_thresholds: ShadowThresholds | None = None,
    ) -> None:
        self.experiment = experiment
        self.shadow = shadow
        self.noise = noise
        self.drift = drift
        self.drift_levels = drift_levels or DriftLevels()
        self._primary_error_rate = primary_error_rate
        self.shadow_thresholds = shadow_thresholds or ShadowThresholds()

    def shadow_analysis(self) -> tuple[ShadowSummary, ShadowAnalysis] | None:
        if self.shadow is None:
            return None
        summary = self.shadow.summary()
        noise = self.noise.summary() if self.noise is not None else None
        analysis = analyse_shadow(
            summary,
            primary_error_rate=self._primary_error_rate(),
            noise=noise,
            thresholds=self.shadow_thresholds,
        )
        return summary, analysis

    def drift_report(self) -> DriftMonitorReport | None:
        return self.drift.report() if self.drift is not None else None

    def warnings(self) -> list[str]:
        """Status warnings: a sample-ratio mismatch at the last look, drifted series."""
        return [*self.experiment.status_warnings(), *self.drift_levels.warnings()]

    def shadow_reading(self) -> ShadowReading | None:
        """What the rollout's shadow stage reads: counts, p95s, and the agreement after
        subtracting the model's own noise when that was measured."""
        read = self.shadow_analysis()
        if read is None:
            return None
        return ShadowReading.from_analysis(read[1])

    def ab_gate(self) -> GateReading:
        """The A/B gate: a fresh look, then the gate metric's verdict (threshold: alpha)."""
        self.experiment.look()
        return self.experiment.analysed().gate()

    def drift_gate(self, threshold: float) -> GateReading:
        """The drift gate: the largest PSI over the input features and the canary's
        predictions in the current window."""
        if self.drift is None:
            return GateReading(GateStatus.WAIT, 0.0, threshold, "drift monitoring is off")
        canary = self.experiment.snapshot().flag.canary
        worst = self.drift.max_psi("all", variant=canary or None)
        if worst is None:
            return GateReading(
                GateStatus.WAIT, 0.0, threshold, "not enough values in the current window yet"
            )
        psi, series = worst
        status = GateStatus.FAIL if psi >= threshold else GateStatus.PASS
        detail = f"largest PSI {psi:.3f} ({series}); limit {threshold:g}"
        return GateReading(status, psi, threshold, detail)

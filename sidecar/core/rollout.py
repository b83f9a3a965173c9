"""Rollout plans: stages, validation, skipped-stage detection, and persisted progress.

Pure data. The controller (`sidecar/app/rollout.py`) drives a plan; this module decides
what a well-formed plan is and how progress is serialised with the desired state.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sidecar.core.limits import CONTROL_LIMITS, utf8_len
from sidecar.core.routing import BASIS_POINTS


class StageKind(enum.Enum):
    SHADOW = "SHADOW"
    CANARY = "CANARY"
    PROMOTE = "PROMOTE"


class Phase(enum.Enum):
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUCCEEDED = "SUCCEEDED"
    ROLLED_BACK = "ROLLED_BACK"
    ABORTED = "ABORTED"

    @property
    def active(self) -> bool:
        return self in (Phase.RUNNING, Phase.PAUSED)


class PlanError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Stage:
    name: str
    kind: StageKind
    canary_bp: int = 0
    min_duration_s: float = 0.0
    min_samples: int = 0
    ab_gate: bool = False  # the experiment's gate metric must say Ship B or Equivalent
    max_drift_psi: float = 0.0  # 0: no drift gate
    # Seconds the stage may wait on a gate before it is reported stalled; 0: the default
    # (`analysis.progress_deadline`).
    progress_deadline_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "canary_bp": self.canary_bp,
            "min_duration_s": self.min_duration_s,
            "min_samples": self.min_samples,
            "ab_gate": self.ab_gate,
            "max_drift_psi": self.max_drift_psi,
            "progress_deadline_s": self.progress_deadline_s,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Stage:
        return Stage(
            str(data["name"]),
            StageKind(data["kind"]),
            int(data["canary_bp"]),
            float(data["min_duration_s"]),
            int(data["min_samples"]),
            bool(data.get("ab_gate", False)),
            float(data.get("max_drift_psi", 0.0)),
            float(data.get("progress_deadline_s", 0.0)),
        )


# The standard ladder. Durations and sample minimums are defaults an operator overrides.
# The 50% stage is the A/B stage: it also waits for the experiment's verdict (when outcome
# metrics are configured; the controller drops the gate otherwise).
DEFAULT_PLAN: tuple[Stage, ...] = (
    Stage("shadow", StageKind.SHADOW, 0, 600.0, 1000),
    Stage("canary-5%", StageKind.CANARY, 500, 900.0, 500),
    Stage("canary-25%", StageKind.CANARY, 2500, 900.0, 2000),
    Stage("canary-50%", StageKind.CANARY, 5000, 1800.0, 5000, ab_gate=True),
    Stage("canary-100%", StageKind.CANARY, 10_000, 1800.0, 5000),
    Stage("promote", StageKind.PROMOTE),
)
MAX_FIRST_CANARY_BP = 500
MAX_STEP_FACTOR = 5


def validate_plan(
    stages: Sequence[Stage], *, has_shadow: bool, has_experiment: bool = False
) -> list[str]:
    """Raise PlanError for a malformed plan; return the stages it skips (empty: none).

    Well-formed: one to `CONTROL_LIMITS.plan_stages` stages; names unique, non-empty and at
    most `CONTROL_LIMITS.name_bytes` bytes; numbers finite; shadow stages first (0%),
    canary stages with 1..10,000 bp, strictly increasing; at most one promote, last; the
    A/B gate only on canary stages and only with outcome metrics configured; a drift
    threshold in [0, 10] (0: off).
    Skips: no shadow stage although a shadow variant is configured; a first canary stage
    above 5%; a canary step more than 5x the previous one.
    """
    if not stages:
        raise PlanError("plan.stages", "a plan needs at least one stage")
    if len(stages) > CONTROL_LIMITS.plan_stages:
        raise PlanError(
            "plan.stages", f"at most {CONTROL_LIMITS.plan_stages} stages, got {len(stages)}"
        )
    names: set[str] = set()
    last_bp = 0
    for i, stage in enumerate(stages):
        where = f"plan.stages[{i}]"
        _check_common(stage, where, names, has_experiment=has_experiment)
        names.add(stage.name)
        if stage.kind is StageKind.SHADOW:
            _check_shadow(stage, where, seen_canary=last_bp > 0, has_shadow=has_shadow)
        elif stage.kind is StageKind.CANARY:
            _check_canary(stage, where, last_bp)
            last_bp = stage.canary_bp
        elif stage.kind is StageKind.PROMOTE:
            if i != len(stages) - 1:
                raise PlanError(f"{where}.kind", "promote must be the last stage")
        else:  # pragma: no cover - enum exhausted
            raise PlanError(f"{where}.kind", "unknown stage kind")
    return skipped_steps(stages, has_shadow=has_shadow)


def _check_common(stage: Stage, where: str, names: set[str], *, has_experiment: bool) -> None:
    """What every stage kind must satisfy: name, minimums, A/B gate, drift threshold."""
    if not stage.name.strip():
        raise PlanError(f"{where}.name", "must not be empty")
    if utf8_len(stage.name) > CONTROL_LIMITS.name_bytes:
        raise PlanError(
            f"{where}.name",
            f"at most {CONTROL_LIMITS.name_bytes} bytes (UTF-8), got {utf8_len(stage.name)}",
        )
    if stage.name in names:
        raise PlanError(f"{where}.name", f"duplicate stage name {stage.name!r}")
    for field, value in (
        ("min_duration_seconds", stage.min_duration_s),
        ("max_drift_psi", stage.max_drift_psi),
        ("progress_deadline_seconds", stage.progress_deadline_s),
    ):
        if not math.isfinite(value):
            raise PlanError(f"{where}.{field}", f"must be a finite number, got {value!r}")
    if min(stage.min_duration_s, stage.min_samples, stage.progress_deadline_s) < 0:
        raise PlanError(
            where, "min_duration_seconds, min_samples and progress_deadline_seconds must be >= 0"
        )
    if stage.ab_gate and stage.kind is not StageKind.CANARY:
        raise PlanError(f"{where}.ab_gate", "only canary stages can wait for the A/B test")
    if stage.ab_gate and not has_experiment:
        raise PlanError(f"{where}.ab_gate", "no outcome metric is configured (experiment.metrics)")
    if not 0.0 <= stage.max_drift_psi <= 10.0:
        raise PlanError(f"{where}.max_drift_psi", "must be within 0..10 (0: no drift gate)")


def _check_shadow(stage: Stage, where: str, *, seen_canary: bool, has_shadow: bool) -> None:
    if seen_canary:
        raise PlanError(f"{where}.kind", "shadow stages come before canary stages")
    if stage.canary_bp:
        raise PlanError(f"{where}.canary_bp", "a shadow stage serves 0%")
    if not has_shadow:
        raise PlanError(f"{where}.kind", "no shadow variant is configured")


def _check_canary(stage: Stage, where: str, last_bp: int) -> None:
    if not 0 < stage.canary_bp <= BASIS_POINTS:
        raise PlanError(f"{where}.canary_bp", f"must be within 1..{BASIS_POINTS}")
    if stage.canary_bp <= last_bp:
        raise PlanError(f"{where}.canary_bp", "canary weights must increase")


def skipped_steps(stages: Sequence[Stage], *, has_shadow: bool) -> list[str]:
    skips: list[str] = []
    if has_shadow and not any(s.kind is StageKind.SHADOW for s in stages):
        skips.append("no shadow stage although a shadow variant is configured")
    previous = 0
    for stage in stages:
        if stage.kind is not StageKind.CANARY:
            continue
        if previous == 0 and stage.canary_bp > MAX_FIRST_CANARY_BP:
            skips.append(f"{stage.name}: first canary stage at {stage.canary_bp} bp (> 500)")
        elif previous and stage.canary_bp > previous * MAX_STEP_FACTOR:
            skips.append(f"{stage.name}: {previous} -> {stage.canary_bp} bp (more than 5x)")
        previous = stage.canary_bp
    return skips


def overdue(progress: RolloutProgress, now: float, default_deadline: float) -> float | None:
    """Seconds the current stage has run past its progress deadline (the stage's own, else
    `default_deadline`; 0: none), or None when it is within it, has none, or is not
    RUNNING. Paused time does not count (`RolloutProgress.elapsed`). Whether a gate is
    still waiting is the caller's to say: a stage past its deadline only advances later
    when all its gates pass."""
    stage = progress.stage
    if stage is None or progress.phase is not Phase.RUNNING or stage.kind is StageKind.PROMOTE:
        return None
    deadline = stage.progress_deadline_s or default_deadline
    if deadline <= 0:
        return None
    over = progress.elapsed(now) - deadline
    return over if over > 0 else None


def projected_finish(samples: float, needed: float, elapsed: float) -> float | None:
    """Seconds into the stage at which `needed` samples are reached at the rate seen so
    far (`samples` in `elapsed` seconds); None when nothing has been seen yet."""
    if samples <= 0 or elapsed <= 0:
        return None
    if samples >= needed:
        return elapsed
    return elapsed * needed / samples


@dataclass(frozen=True)
class Baseline:
    requests: int = 0
    error_rate: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0


@dataclass(frozen=True)
class RolloutProgress:
    """A plan and where it is; persisted with the desired state."""

    stages: tuple[Stage, ...]
    phase: Phase
    stage_index: int
    started_unix: float
    stage_started_unix: float
    paused_seconds: float = 0.0  # time paused within the current stage
    paused_at: float = 0.0
    baseline: Baseline = Baseline()
    message: str = ""
    forced: tuple[str, ...] = ()

    @property
    def stage(self) -> Stage | None:
        return self.stages[self.stage_index] if 0 <= self.stage_index < len(self.stages) else None

    def elapsed(self, now: float) -> float:
        paused = self.paused_seconds + (now - self.paused_at if self.phase is Phase.PAUSED else 0)
        return max(0.0, now - self.stage_started_unix - paused)

    def evolve(self, **changes: Any) -> RolloutProgress:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [s.to_dict() for s in self.stages],
            "phase": self.phase.value,
            "stage_index": self.stage_index,
            "started_unix": self.started_unix,
            "stage_started_unix": self.stage_started_unix,
            "paused_seconds": self.paused_seconds,
            "paused_at": self.paused_at,
            "baseline": {
                "requests": self.baseline.requests,
                "error_rate": self.baseline.error_rate,
                "p50_s": self.baseline.p50_s,
                "p95_s": self.baseline.p95_s,
            },
            "message": self.message,
            "forced": list(self.forced),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RolloutProgress:
        b = data.get("baseline", {})
        return RolloutProgress(
            stages=tuple(Stage.from_dict(s) for s in data["stages"]),
            phase=Phase(data["phase"]),
            stage_index=int(data["stage_index"]),
            started_unix=float(data["started_unix"]),
            stage_started_unix=float(data["stage_started_unix"]),
            paused_seconds=float(data.get("paused_seconds", 0.0)),
            paused_at=float(data.get("paused_at", 0.0)),
            baseline=Baseline(
                int(b.get("requests", 0)),
                float(b.get("error_rate", 0.0)),
                float(b.get("p50_s", 0.0)),
                float(b.get("p95_s", 0.0)),
            ),
            message=str(data.get("message", "")),
            forced=tuple(str(x) for x in data.get("forced", [])),
        )

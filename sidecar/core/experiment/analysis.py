"""Experiment analysis: anytime-valid A/B verdicts from outcome counters. Pure.

`ExperimentTracker` compares the control (stable, "A") with the treatment (canary, "B") of
the current *epoch*: an epoch lasts as long as the control, the treatment and the weights of
the serving variants stay the same (`sync`). The request path calls `assigned` (a dict
increment per request routed by the weighted split, and one per new user or keyless
request: the sample-ratio check's units) and, when the app reports an outcome
that the `OutcomeLedger` attributed to a request of the current epoch, `outcome` (a few
float operations on sufficient statistics; never a list). `look` (periodic, off the request
path) folds the cumulative counts into one mSPRT per metric and per declared segment,
re-checks the sample ratio and records a bounded history; `report` and `gate` read the state
as of the last look without changing it. `to_dict` / `from_dict` checkpoint the epoch.

The caller passes `now`; nothing here logs, reads a clock or does I/O. The conventions are
documented in docs/statistics.md, section "Experiment analysis".
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from sidecar.core.duration import Duration
from sidecar.core.experiment.counters import ExperimentCounters
from sidecar.core.experiment.units import bucket_of
from sidecar.core.gates import GateReading, GateStatus
from sidecar.core.stats import (
    MixResult,
    SequentialLook,
    SequentialState,
    Verdict,
    adjust_p_values,
    binomial_two_sided_p,
    boundary_z,
    optimal_mixing_ratio,
    plan_sequential,
    ratio_interval,
    required_variance,
    segment_mix_test,
    sequential_update,
    sequential_update_estimate,
    sequential_update_means,
    sequential_verdict,
    srm_test,
    start_sequential,
    two_proportion_ztest,
    welch_t_test_from_stats,
    wilson_interval,
)
from sidecar.core.stats.buckets import DEFAULT_BUCKETS, MAX_BUCKETS, BucketTotals
from sidecar.core.stats.intervals import Estimate, Interval
from sidecar.core.stats.lazy import lazy
from sidecar.core.stats.srm import BASIS_POINTS_TOTAL

if TYPE_CHECKING:
    from scipy import special
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    special = lazy("scipy.special")


__all__ = [
    "CHECKPOINT_VERSION",
    "OTHER_SEGMENT",
    "SRM_MIN_TOTAL",
    "UNIT",
    "USER_UNIT",
    "ArmCount",
    "ArmResult",
    "Estimate",
    "ExperimentResult",
    "ExperimentSettings",
    "ExperimentTracker",
    "ExperimentVerdict",
    "GateReading",
    "LookEvents",
    "LookPoint",
    "MetricResult",
    "MetricSpec",
    "SegmentMixCheck",
    "SegmentResult",
    "SrmCheck",
    "default_tau_squared",
]

OTHER_SEGMENT = "other"  # segments outside the declared family are counted under this key
SRM_MIN_TOTAL = 100  # assignments needed before the SRM check may flag a mismatch
UNIT = "request"  # request-level analysis: no outcome of a keyed user yet
USER_UNIT = "user"  # user-level analysis: the variance from user buckets
CHECKPOINT_VERSION = 2
KINDS = ("bool", "number")
CORRECTIONS = ("holm", "bh")
MAX_SEGMENTS = 64

_NAN = math.nan
_isfinite = math.isfinite


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MetricSpec:
    """One analysed metric (`experiment.metrics[]` in the configuration).

    `minimum_effect` is absolute, in the metric's units (0.01 = one percentage point for a
    rate): the equivalence margin and the planning effect. `baseline` (bool only) is the
    expected control rate, for the planner. `tau_squared` is the mSPRT mixing variance;
    None picks the default (see `default_tau_squared`). Validated by `ExperimentSettings`,
    which names it by its place in the list.
    """

    name: str
    kind: str  # "bool" | "number"
    minimum_effect: float
    higher_is_better: bool = True
    baseline: float | None = None
    tau_squared: float | None = None


@dataclass(frozen=True)
class ExperimentSettings:
    """`experiment:` in the configuration: what is analysed, and how often.

    Validated at construction; a bad field raises ValueError with one line per problem,
    each naming its field (``metrics[1].name: duplicate metric 'x'``).
    `look_interval` (seconds between looks), `max_requests` and `ttl_seconds` (the bounds
    of the request id memory, `OutcomeLedger`) are read by the application.
    """

    metrics: tuple[MetricSpec, ...] = ()
    segments: tuple[str, ...] = ()  # the declared segment family
    correction: str = "holm"  # "holm" | "bh"
    alpha: float = 0.05
    power: float = 0.8
    srm_threshold: float = 0.001
    min_events: int = 10
    max_history: int = 400
    gate_metric: str = ""  # "" = the first metric
    look_interval: Duration = 10.0
    max_requests: int = 200_000
    ttl_seconds: Duration = 3600.0
    buckets: int = DEFAULT_BUCKETS  # user buckets per (metric, arm, segment)
    min_users: int = 100  # users per arm before a user-level look is evaluated

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "segments", tuple(self.segments))
        self.validate()

    def validate(self) -> None:
        problems = [
            *self._level_problems(),
            *_metrics_problems(self.metrics),
            *_segments_problems(self.segments),
        ]
        names = {m.name for m in self.metrics if isinstance(m, MetricSpec)}
        if self.gate_metric and self.gate_metric not in names:
            problems.append(
                f"gate_metric: {self.gate_metric!r} is not one of the metrics ({sorted(names)})"
            )
        if problems:
            raise ValueError("\n".join(problems))

    def _level_problems(self) -> list[str]:
        problems = [
            p
            for name in ("alpha", "power", "srm_threshold")
            if (p := _level_problem(getattr(self, name), name))
        ]
        if self.correction not in CORRECTIONS:
            problems.append(f"correction: must be holm or bh, got {self.correction!r}")
        for name, least in (
            ("min_events", 0),
            ("max_history", 2),
            ("max_requests", 1),
            ("min_users", 2),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                problems.append(f"{name}: must be an integer >= {least}, got {value!r}")
        b = self.buckets
        if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= MAX_BUCKETS:
            problems.append(f"buckets: must be an integer within [2, {MAX_BUCKETS}], got {b!r}")
        for name in ("look_interval", "ttl_seconds"):
            if not _positive(getattr(self, name)):
                problems.append(f"{name}: must be > 0, got {getattr(self, name)!r}")
        return problems


def _positive(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and _isfinite(value)
        and value > 0.0
    )


def _level_problem(value: object, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name}: must be a number within (0, 1), got {value!r}"
    if not 0.0 < value < 1.0:
        return f"{name}: must be within (0, 1), got {value!r}"
    return ""


def _metrics_problems(metrics: Sequence[MetricSpec]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    for i, spec in enumerate(metrics):
        where = f"metrics[{i}]"
        if not isinstance(spec, MetricSpec):
            problems.append(f"{where}: must be a MetricSpec, got {spec!r}")
            continue
        problems.extend(_metric_problems(spec, where))
        if spec.name in names:
            problems.append(f"{where}.name: duplicate metric {spec.name!r}")
        names.add(spec.name)
    return problems


def _metric_problems(spec: MetricSpec, where: str) -> list[str]:
    problems: list[str] = []
    if not isinstance(spec.name, str) or not spec.name.strip():
        problems.append(f"{where}.name: must be a non-empty string (the metric apps report)")
    if spec.kind not in KINDS:
        problems.append(f"{where}.kind: must be bool or number, got {spec.kind!r}")
    mde = spec.minimum_effect
    if not _positive(mde):
        problems.append(f"{where}.minimum_effect: must be > 0, got {mde!r}")
    elif spec.kind == "bool" and not mde < 1.0:
        problems.append(f"{where}.minimum_effect: a rate difference must be < 1, got {mde}")
    if not isinstance(spec.higher_is_better, bool):
        problems.append(f"{where}.higher_is_better: must be true or false")
    if spec.baseline is not None:
        problems.extend(_baseline_problems(spec, where))
    tau2 = spec.tau_squared
    if tau2 is not None and not _positive(tau2):
        problems.append(f"{where}.tau_squared: must be > 0, got {tau2!r}")
    return problems


def _baseline_problems(spec: MetricSpec, where: str) -> list[str]:
    if spec.kind != "bool":
        return [f"{where}.baseline: only boolean metrics have a baseline rate"]
    problem = _level_problem(spec.baseline, f"{where}.baseline")
    if problem:
        return [problem]
    if _positive(spec.minimum_effect) and not spec.baseline + spec.minimum_effect < 1.0:  # type: ignore[operator]
        return [
            f"{where}.baseline: baseline + minimum_effect must be < 1, "
            f"got {spec.baseline} + {spec.minimum_effect}"
        ]
    return []


def _segments_problems(segments: Sequence[str]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, segment in enumerate(segments):
        if not isinstance(segment, str) or not segment.strip():
            problems.append(f"segments[{i}]: must be a non-empty string, got {segment!r}")
        elif segment == OTHER_SEGMENT:
            problems.append(f"segments[{i}]: {OTHER_SEGMENT!r} is reserved for undeclared segments")
        elif segment in seen:
            problems.append(
                f"segments: must not repeat a segment (segments[{i}] repeats {segment!r})"
            )
        seen.add(segment)
    if len(segments) > MAX_SEGMENTS:
        problems.append(f"segments: at most {MAX_SEGMENTS} segments can be declared")
    return problems


def _z_power_and_boundary(alpha: float, power: float) -> tuple[float, float, float]:
    r_star = optimal_mixing_ratio(alpha)
    return r_star, boundary_z(r_star, alpha), float(special.ndtri(power))


def default_tau_squared(spec: MetricSpec, alpha: float, power: float) -> tuple[float, int]:
    """(tau^2, planned outcomes per arm) for a metric.

    Boolean with a baseline: the sequential planner (`plan_sequential(baseline,
    minimum_effect, alpha, power)`), its tau^2 (unless given) and its horizon. Otherwise
    `tau^2 = r* (delta / (b* + z_power))^2`, the planner's choice at its own horizon written
    without the variance (it cancels), and 0 planned (a numeric plan needs observed
    variances; the tracker computes it at report time).
    """
    if spec.kind == "bool" and spec.baseline is not None:
        plan = plan_sequential(
            spec.baseline, spec.minimum_effect, alpha, power, tau_squared=spec.tau_squared
        )
        return plan.tau_squared, plan.n_per_arm
    if spec.tau_squared is not None:
        return float(spec.tau_squared), 0
    r_star, b_star, z_power = _z_power_and_boundary(alpha, power)
    return r_star * (spec.minimum_effect / (b_star + z_power)) ** 2, 0


# --------------------------------------------------------------------------- results


class ExperimentVerdict(enum.StrEnum):
    SHIP_B = "SHIP_B"
    KEEP_A = "KEEP_A"
    EQUIVALENT = "EQUIVALENT"
    CONTINUE = "CONTINUE"
    BLOCKED = "BLOCKED"


@dataclass(frozen=True, slots=True)
class ArmResult:
    """One arm of a metric: outcomes counted, successes (bool), rate or mean with its
    interval (Wilson / normal) and, for numeric metrics, the sample standard deviation
    (NaN below 2 outcomes; 0 for boolean metrics)."""

    variant: str
    n: int
    successes: int
    value: Estimate
    std_dev: float
    users: int = 0  # units with a counted outcome (keyed users + keyless requests)
    keyless: int = 0  # of `n`: outcomes of requests without a targeting key


@dataclass(frozen=True, slots=True)
class LookPoint:
    """The aggregate at one look: the running (anytime-valid) interval and p-value."""

    unix_time: float
    n_control: int
    n_treatment: int
    difference: float
    lower: float
    upper: float
    p_value: float


@dataclass(frozen=True, slots=True)
class SegmentResult:
    segment: str
    control: ArmResult
    treatment: ArmResult
    difference: Estimate  # B - A with the segment's own running mSPRT interval
    p_value: float  # always-valid
    adjusted_p_value: float  # over the declared family (holm / bh)
    significant: bool  # adjusted_p_value < alpha
    winner: str  # the better variant when significant, else ""


@dataclass(frozen=True, slots=True)
class MetricResult:
    metric: str
    kind: str
    higher_is_better: bool
    minimum_effect: float
    control: ArmResult
    treatment: ArmResult
    difference: Estimate  # anytime-valid running confidence sequence (mSPRT)
    relative_lift: Estimate  # B / A - 1, fixed-horizon (for reading, not deciding)
    p_value: float  # always-valid
    fixed_horizon_p_value: float  # pooled z-test / Welch: NOT valid under repeated looks
    verdict: ExperimentVerdict
    reason: str
    additional_per_arm: int  # CONTINUE: estimate; -1 unknown; 0 when decided
    planned_per_arm: int  # 0: no plan
    correction: str
    segments: tuple[SegmentResult, ...]
    simpson_warning: str  # "" when none
    history: tuple[LookPoint, ...]
    tau_squared: float
    alpha: float
    unit: str = UNIT  # "user" (variance from user buckets) or "request" (no keyed outcome)
    design_effect: float = _NAN  # user-level / request-level variance of the difference
    planned_control: int = 0  # outcomes the control needs for the actual split (0: no plan)
    planned_treatment: int = 0
    expected_seconds: float = -1.0  # to the planned horizon at the current rate; -1 unknown


@dataclass(frozen=True, slots=True)
class ArmCount:
    variant: str
    observed: int
    observed_share: float
    expected_share: float


@dataclass(frozen=True, slots=True)
class SrmCheck:
    """Sample-ratio check of the `assigned` counts against the epoch's weights."""

    arms: tuple[ArmCount, ...]
    chi_square: float
    p_value: float
    threshold: float
    mismatch: bool
    detail: str
    unit: str = UNIT  # what `arms[].observed` counts: USER_UNIT or UNIT (requests)


@dataclass(frozen=True, slots=True)
class ExperimentResult:
    generated_unix: float
    epoch: int
    started_unix: float
    control: str
    treatment: str  # "" when no canary is part of the experiment
    srm: SrmCheck
    metrics: tuple[MetricResult, ...]
    warnings: tuple[str, ...]
    looks: int
    last_look_unix: float  # 0.0 before the first look
    alpha: float
    unit: str = UNIT
    segment_mix: SegmentMixCheck | None = None


@dataclass(frozen=True, slots=True)
class SegmentMixCheck:
    """Arm x segment independence of the users (`segment_mix_test`); a mismatch blocks
    every aggregate verdict, like the sample ratio check."""

    p_value: float
    chi_square: float
    checked: bool
    mismatch: bool
    detail: str


@dataclass(frozen=True, slots=True)
class LookEvents:
    """What changed at a look, for the caller to log and alert on."""

    srm_started: bool  # the assignment check (SrmCheck) started failing at this look
    srm_cleared: bool
    verdict_changes: tuple[tuple[str, str, str], ...]  # (metric, old verdict, new verdict)
    # metrics whose outcome counts started / stopped failing their sample ratio check
    outcome_srm_started: tuple[str, ...] = ()
    outcome_srm_cleared: tuple[str, ...] = ()


# --------------------------------------------------------------------------- internals


class _Cell:
    """Sufficient statistics of one (metric, variant, segment): n and successes (bool);
    n, mean and M2 = sum of squared deviations from the mean (number; Welford)."""

    __slots__ = ("is_bool", "m2", "mean", "n", "successes")

    def __init__(self, is_bool: bool) -> None:
        self.is_bool = is_bool
        self.n = 0
        self.successes = 0
        self.mean = 0.0
        self.m2 = 0.0


@dataclass(frozen=True, slots=True)
class _Summary:
    n: int = 0
    successes: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @property
    def variance(self) -> float:
        """Sample variance (ddof = 1); 0 below two observations."""
        return self.m2 / (self.n - 1) if self.n >= 2 else 0.0

    def merge(self, cell: _Cell) -> _Summary:
        """Chan et al.'s parallel combination of two (n, mean, M2) summaries."""
        if cell.n == 0:
            return self
        if self.n == 0:
            return _Summary(cell.n, cell.successes, cell.mean, cell.m2)
        n = self.n + cell.n
        delta = cell.mean - self.mean
        mean = self.mean + delta * cell.n / n
        m2 = self.m2 + cell.m2 + delta * delta * self.n * cell.n / n
        return _Summary(n, self.successes + cell.successes, mean, m2)


class _Seq:
    """One mSPRT: its running state and its last look (None before the first)."""

    __slots__ = ("last", "state")

    def __init__(self, state: SequentialState, last: SequentialLook | None = None) -> None:
        self.state = state
        self.last = last


class _History:
    """At most `limit` aggregate look points: every `stride`-th look is committed; when
    the committed list is full, every second point is kept and the stride doubles. The
    latest look is always reported (as `tail` when it is not committed)."""

    __slots__ = ("limit", "looks", "points", "stride", "tail")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.points: list[LookPoint] = []
        self.looks: list[int] = []
        self.stride = 1
        self.tail: tuple[int, LookPoint] | None = None

    def add(self, look: int, point: LookPoint) -> None:
        if not self.looks or look - self.looks[-1] >= self.stride:
            self.points.append(point)
            self.looks.append(look)
            self.tail = None
            if len(self.points) >= self.limit:
                last = (self.looks[-1], self.points[-1])
                self.points = self.points[::2]
                self.looks = self.looks[::2]
                self.stride *= 2
                if self.looks[-1] != last[0]:
                    self.tail = last
        else:
            self.tail = (look, point)

    def snapshot(self) -> tuple[LookPoint, ...]:
        if self.tail is None:
            return tuple(self.points)
        return (*self.points, self.tail[1])


@dataclass(frozen=True, slots=True)
class _Decision:
    verdict: ExperimentVerdict
    reason: str
    additional_per_arm: int
    p_value: float


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _fmt_p(p: float) -> str:
    return f"{p:.3g}"


def _nan_estimate(level: float, method: str) -> Estimate:
    return Estimate(_NAN, _NAN, _NAN, level, method)


# --------------------------------------------------------------------------- tracker


class ExperimentTracker:
    """A/B analysis of control vs treatment in the current epoch (see the module doc)."""

    def __init__(self, settings: ExperimentSettings) -> None:
        self.settings = settings
        self._specs: dict[str, MetricSpec] = {m.name: m for m in settings.metrics}
        self._tau2: dict[str, float] = {}
        self._planned: dict[str, int] = {}
        for spec in settings.metrics:
            tau2, planned = default_tau_squared(spec, settings.alpha, settings.power)
            self._tau2[spec.name] = tau2
            self._planned[spec.name] = planned
        self._declared: frozenset[str] = frozenset(settings.segments)
        self._segment_keys: tuple[str, ...] = (*settings.segments, OTHER_SEGMENT)
        # the standard library's normal quantile (agrees with scipy's ndtri to 1e-15), so
        # building a tracker does not import scipy (sidecar.core.stats.lazy: not at start-up)
        self._z = -NormalDist().inv_cdf(settings.alpha / 2.0)
        self._level = 1.0 - settings.alpha
        self._epoch = 0
        self._key: tuple[str, str | None, tuple[tuple[str, int], ...]] | None = None
        self._started = 0.0
        self._control = ""
        self._treatment: str | None = None
        self._weights: dict[str, int] = {}
        self._reset()

    # ------------------------------------------------------------------ epochs

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def control(self) -> str:
        return self._control

    @property
    def treatment(self) -> str | None:
        return self._treatment

    @property
    def started(self) -> float:
        return self._started

    @property
    def looks(self) -> int:
        return self._looks

    def _fresh_state(self, metric: str) -> SequentialState:
        bounded = self._specs[metric].kind == "bool"
        return start_sequential(
            self._tau2[metric], self.settings.alpha, self.settings.min_events, bounded=bounded
        )

    def _reset(self) -> None:
        self._assigned: defaultdict[str, int] = defaultdict(int)  # requests
        self._users: defaultdict[str, int] = defaultdict(int)  # first assignments of keys
        self._keyless: defaultdict[str, int] = defaultdict(int)  # requests without a key
        arms = [self._control] if self._control else []
        if self._treatment is not None:
            arms.append(self._treatment)
        self._cells: dict[tuple[str, str, str], _Cell] = {
            (name, arm, seg): _Cell(spec.kind == "bool")
            for name, spec in self._specs.items()
            for arm in arms
            for seg in self._segment_keys
        }
        self._agg: dict[str, _Seq] = {m: _Seq(self._fresh_state(m)) for m in self._specs}
        self._segs: dict[str, dict[str, _Seq]] = {
            m: {s: _Seq(self._fresh_state(m)) for s in self.settings.segments} for m in self._specs
        }
        self._history: dict[str, _History] = {
            m: _History(self.settings.max_history) for m in self._specs
        }
        k = self.settings.buckets
        self._buckets: dict[tuple[str, str, str], BucketTotals] = {
            key: BucketTotals(k) for key in self._cells
        }
        self._next_unit = 0  # bucket of an outcome reported without a unit (round robin)
        self._mix: SegmentMixCheck | None = None
        self._looks = 0
        self._last_look: float | None = None
        self._srm: SrmCheck | None = None
        self._outcome_srm: dict[str, str] = {}  # metric -> detail, when its counts mismatch
        self._verdicts: dict[str, ExperimentVerdict] = dict.fromkeys(
            self._specs, ExperimentVerdict.CONTINUE
        )

    def sync(
        self, control: str, treatment: str | None, weights: Mapping[str, int], now: float
    ) -> int:
        """Start a new epoch when (control, treatment, weights of serving variants) changed;
        return the current epoch. `weights` are basis points summing to 10,000."""
        try:
            key = (control, treatment, tuple(sorted((v, w) for v, w in weights.items() if w > 0)))
        except TypeError:
            raise ValueError(
                f"weights: must map variant names to integers; got {weights!r}"
            ) from None
        if key == self._key:
            return self._epoch
        if not isinstance(control, str) or not control:
            raise ValueError(f"control: must be a variant name; got {control!r}")
        if treatment is not None and (not isinstance(treatment, str) or not treatment):
            raise ValueError(f"treatment: must be a variant name or None; got {treatment!r}")
        if treatment == control:
            raise ValueError(f"treatment: must differ from control ({control!r})")
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise ValueError(f"weights[{name}]: must be a non-negative integer; got {w!r}")
        total = sum(weights.values())
        if total != BASIS_POINTS_TOTAL:
            raise ValueError(f"weights: must sum to {BASIS_POINTS_TOTAL} basis points; got {total}")
        self._key = key
        self._epoch += 1
        self._started = float(now)
        self._control = control
        self._treatment = treatment
        self._weights = dict(key[2])
        self._reset()
        return self._epoch

    # ------------------------------------------------------------------ hot path

    def assigned(self, variant: str, first: bool | None = None) -> None:
        """One request routed by the weighted split in the current epoch (hot path).

        `first`: None for a request without a targeting key (its own unit); True for the
        first assignment of a targeting key in this epoch (a new user), False for a
        repeat. The sample-ratio check counts users when there are any, and the keyless
        requests apart (see `_srm_check`)."""
        self._assigned[variant] += 1
        if first is None:
            self._keyless[variant] += 1
        elif first:
            self._users[variant] += 1

    def outcome(
        self,
        epoch: int,
        variant: str,
        segment: str,
        metric: str,
        value: bool | float,
        *,
        unit: int | None = None,
        keyless: bool = True,
        new_user: bool = True,
    ) -> bool:
        """Count one (de-duplicated) outcome; return whether it was counted.

        Counted when `epoch` is the current epoch, `metric` is configured, `variant` is the
        control or the treatment, and the value has the metric's kind (a finite number for
        numeric metrics). Undeclared segments count under "other". `unit` is the stable
        hash of the targeting key (`keyless` False) or of the request id (`keyless`: its own
        unit); it picks the user bucket; `new_user` counts a user there. Without a unit the
        outcome is its own unit in the next bucket (round robin)."""
        if epoch != self._epoch:
            return False
        key = (metric, variant, segment if segment in self._declared else OTHER_SEGMENT)
        cell = self._cells.get(key)
        if cell is None:
            return False
        if unit is None:
            unit, keyless, new_user = self._next_unit, True, True
            self._next_unit += 1
        bucket = bucket_of(unit, self.settings.buckets)
        if cell.is_bool:
            if value.__class__ is not bool:
                return False
            cell.n += 1
            if value:
                cell.successes += 1
            self._buckets[key].add(bucket, 1.0 if value else 0.0, new_user, keyless)
            return True
        if value.__class__ is bool:
            return False
        x = float(value)
        if not _isfinite(x):
            return False
        self._buckets[key].add(bucket, x, new_user, keyless)
        n = cell.n + 1
        cell.n = n
        mean = cell.mean
        delta = x - mean
        mean += delta / n
        cell.mean = mean
        cell.m2 += delta * (x - mean)
        return True

    # ------------------------------------------------------------------ looks

    def _summary(self, metric: str, variant: str | None, segment: str | None) -> _Summary:
        out = _Summary()
        if variant is None:
            return out
        keys = self._segment_keys if segment is None else (segment,)
        for seg in keys:
            cell = self._cells.get((metric, variant, seg))
            if cell is not None:
                out = out.merge(cell)
        return out

    def _totals(self, metric: str, variant: str | None, segment: str | None) -> BucketTotals:
        out = BucketTotals(self.settings.buckets)
        if variant is None:
            return out
        for seg in self._segment_keys if segment is None else (segment,):
            totals = self._buckets.get((metric, variant, seg))
            if totals is not None:
                out = out.merge(totals)
        return out

    def bucket_totals(self) -> dict[tuple[str, str, str], BucketTotals]:
        """Copies of the user bucket totals of the current epoch, by (metric, variant,
        segment) ("other" for undeclared segments): plain sums that a fleet adds across
        sidecars (`BucketTotals.merge`)."""
        return {key: BucketTotals.from_json(t.to_json()) for key, t in self._buckets.items()}

    def _user_level(self, metric: str) -> bool:
        """Whether the metric is analysed per user: some outcome came from a keyed user."""
        return any(t.n > t.keyless for (m, _, _), t in self._buckets.items() if m == metric)

    def _user_look(
        self, metric: str, seq: _Seq, a: _Summary, b: _Summary, segment: str | None
    ) -> SequentialLook:
        """The mSPRT with the difference's variance from the user buckets (delta method)."""
        ta = self._totals(metric, self._control, segment)
        tb = self._totals(metric, self._treatment, segment)
        ra, rb = ta.ratio(), tb.ratio()
        d = float(rb.ratio) - float(ra.ratio)
        s2 = float(ra.variance) + float(rb.variance)
        minimum = self.settings.min_users
        enough = ta.n_users >= minimum and tb.n_users >= minimum
        if self._specs[metric].kind == "bool":
            m = self.settings.min_events
            enough = enough and all(x.successes >= m and x.n - x.successes >= m for x in (a, b))
        else:
            enough = enough and min(a.n, b.n) >= 2
        return sequential_update_estimate(seq.state, a.n, b.n, d, s2, enough)

    def _update(
        self, metric: str, seq: _Seq, a: _Summary, b: _Summary, segment: str | None = None
    ) -> SequentialLook:
        if self._user_level(metric):
            look = self._user_look(metric, seq, a, b, segment)
        elif self._specs[metric].kind == "bool":
            look = sequential_update(seq.state, a.successes, a.n, b.successes, b.n)
        else:
            look = sequential_update_means(
                seq.state, a.n, a.mean, a.variance, b.n, b.mean, b.variance
            )
        seq.state = look.state
        seq.last = look
        return look

    def look(self, now: float) -> LookEvents:
        """Fold the cumulative counts into every sequential state, re-check the sample
        ratio and record the aggregate history point of every metric."""
        previous_srm = self._srm is not None and self._srm.mismatch
        previous_outcomes = dict(self._outcome_srm)
        self._looks += 1
        self._last_look = float(now)
        for metric in self._specs:
            a = self._summary(metric, self._control, None)
            b = self._summary(metric, self._treatment, None)
            look = self._update(metric, self._agg[metric], a, b)
            state = look.state
            self._history[metric].add(
                self._looks,
                LookPoint(
                    float(now),
                    a.n,
                    b.n,
                    look.difference,
                    state.ci_lower,
                    state.ci_upper,
                    state.p_value,
                ),
            )
            for segment, seq in self._segs[metric].items():
                self._update(
                    metric,
                    seq,
                    self._summary(metric, self._control, segment),
                    self._summary(metric, self._treatment, segment),
                    segment,
                )
        self._srm = self._srm_check()
        self._mix = self._mix_check()
        self._outcome_srm = {}
        for metric in self._specs:
            detail = self._outcome_check(metric)
            if detail:
                self._outcome_srm[metric] = detail
        changes: list[tuple[str, str, str]] = []
        for metric in self._specs:
            new = self._decide(metric).verdict
            old = self._verdicts[metric]
            if new is not old:
                changes.append((metric, old.value, new.value))
                self._verdicts[metric] = new
        mismatch = self._srm.mismatch
        return LookEvents(
            srm_started=mismatch and not previous_srm,
            srm_cleared=previous_srm and not mismatch,
            verdict_changes=tuple(changes),
            outcome_srm_started=tuple(m for m in self._outcome_srm if m not in previous_outcomes),
            outcome_srm_cleared=tuple(m for m in previous_outcomes if m not in self._outcome_srm),
        )

    # ------------------------------------------------------------------ SRM

    def _srm_check(self) -> SrmCheck:
        """The sample ratio of the epoch's assignments. With keyed users (sticky routing)
        the unit is the user: the check counts first assignments of each targeting key per
        arm (a user's requests all go to one arm, so request counts vary far more than the
        binomial allows), and the keyless requests (each its own unit) are checked apart;
        either mismatching is a mismatch. Without keyed users: the request counts."""
        if not any(self._users.values()):
            return self._srm_on(self._assigned, "assignments")
        users = self._srm_on(self._users, "users")
        order = [v for v in (self._control, self._treatment) if v]
        order += sorted(v for v in self._assigned if v not in order)
        requests = ", ".join(f"{v}={self._assigned[v]}" for v in order if self._assigned.get(v))
        contrast = f"requests {requests} (not the unit: users send several)"
        if not any(self._keyless.values()):
            return replace(users, detail=f"{users.detail}; {contrast}", unit=USER_UNIT)
        keyless = self._srm_on(self._keyless, "keyless requests")
        flagged = users if users.mismatch or not keyless.mismatch else keyless
        other = keyless if flagged is users else users
        detail = f"{flagged.detail}; {other.detail}; {contrast}"
        return SrmCheck(
            users.arms,
            flagged.chi_square,
            flagged.p_value,
            flagged.threshold,
            users.mismatch or keyless.mismatch,
            detail,
            USER_UNIT,
        )

    def _srm_on(self, tally: Mapping[str, int], noun: str) -> SrmCheck:
        """The exact SRM test of `tally` (per variant) against the epoch's weights."""
        threshold = self.settings.srm_threshold
        first = [v for v in (self._control, self._treatment) if v in self._weights]
        names = first + sorted(v for v in self._weights if v not in first)
        names += sorted(v for v, c in tally.items() if c > 0 and v not in self._weights)
        observed = [tally.get(v, 0) for v in names]
        weights = [self._weights.get(v, 0) for v in names]
        total = sum(observed)
        arms = tuple(
            ArmCount(v, o, o / total if total else 0.0, w / BASIS_POINTS_TOTAL)
            for v, o, w in zip(names, observed, weights, strict=True)
        )
        counts = ", ".join(f"{v}={o}" for v, o in zip(names, observed, strict=True))
        serving = sum(1 for w in weights if w > 0)
        stray = [v for v, w, o in zip(names, weights, observed, strict=True) if w == 0 and o > 0]
        if total == 0:
            return SrmCheck(arms, 0.0, 1.0, threshold, False, f"no {noun} yet")
        if serving < 2:
            if stray and total >= SRM_MIN_TOTAL:
                detail = (
                    f"sample ratio mismatch: traffic to variants with weight 0 ({counts}); "
                    "a routing fault"
                )
                return SrmCheck(arms, math.inf, 0.0, threshold, True, detail)
            detail = f"one variant serving ({counts}); nothing to compare"
            return SrmCheck(arms, 0.0, 1.0, threshold, False, detail)
        result = srm_test(observed, weights, threshold)
        expected = ", ".join(
            f"{v}={e:.1f}" for v, e in zip(names, result.expected, strict=True) if e > 0
        )
        numbers = (
            f"observed {'' if noun == 'assignments' else noun + ' '}{counts}; "
            f"expected {expected} from weights "
            f"{'/'.join(str(w) for w in weights if w > 0)} bp; "
            f"chi-square {_fmt(result.statistic)}, {result.method} p {_fmt_p(result.p_value)}"
        )
        if total < SRM_MIN_TOTAL:
            detail = f"{numbers}; not checked below {SRM_MIN_TOTAL} {noun}"
            return SrmCheck(arms, result.statistic, result.p_value, threshold, False, detail)
        if result.mismatch:
            why = "traffic to a variant with weight 0: a routing fault; " if stray else ""
            detail = f"sample ratio mismatch: {why}{numbers} < {_fmt_p(threshold)}"
        else:
            detail = f"no mismatch: {numbers} >= {_fmt_p(threshold)}"
        return SrmCheck(arms, result.statistic, result.p_value, threshold, result.mismatch, detail)

    def _outcome_check(self, metric: str) -> str:
        """Sample ratio of a metric's outcome counts (control vs treatment) against the two
        arms' weights: '' when fine or not checkable, else the detail with the numbers."""
        treatment = self._treatment
        if treatment is None:
            return ""
        w_a = self._weights.get(self._control, 0)
        w_b = self._weights.get(treatment, 0)
        if w_a <= 0 or w_b <= 0:
            return ""
        if self._user_level(metric):  # users are the independent units, not outcomes
            what = "users with outcomes"
            n_a = self._totals(metric, self._control, None).n_users
            n_b = self._totals(metric, treatment, None).n_users
        else:
            what = "outcomes"
            n_a = self._summary(metric, self._control, None).n
            n_b = self._summary(metric, treatment, None).n
        total = n_a + n_b
        if total < SRM_MIN_TOTAL:
            return ""
        e_a = total * w_a / (w_a + w_b)
        e_b = total * w_b / (w_a + w_b)
        p = binomial_two_sided_p(n_a, total, w_a / (w_a + w_b))
        threshold = self.settings.srm_threshold
        if not p < threshold:
            return ""
        return (
            f"sample ratio mismatch in the {what} of {metric!r}: observed "
            f"{self._control}={n_a}, {treatment}={n_b}; expected {e_a:.1f}, {e_b:.1f} from "
            f"weights {w_a}/{w_b} bp; exact binomial p {_fmt_p(p)} < "
            f"{_fmt_p(threshold)}: outcomes are missing (or extra) in one arm"
        )

    def _mix_check(self) -> SegmentMixCheck | None:
        """Arm x segment chi-square over the users of the metric with the most users
        (None without declared segments, a treatment or users)."""
        if not self.settings.segments or self._treatment is None or not self._specs:
            return None
        arms = (self._control, self._treatment)
        best: list[list[int]] = []
        for metric in self._specs:
            table = [
                [self._buckets[(metric, arm, seg)].n_users for seg in self._segment_keys]
                for arm in arms
            ]
            if sum(map(sum, table)) > sum(map(sum, best)):
                best = table
        if not best:
            return None
        result: MixResult = segment_mix_test(best)
        threshold = self.settings.srm_threshold
        mix = ", ".join(
            f"{seg} {best[0][i]}/{best[1][i]}" for i, seg in enumerate(self._segment_keys)
        )
        numbers = (
            f"users per segment ({self._control}/{self._treatment}): {mix}; chi-square "
            f"{_fmt(result.statistic)}, p {_fmt_p(result.p_value)}"
        )
        if not result.checked:
            detail = f"not checked: too few users (an expected count below 5); {numbers}"
            return SegmentMixCheck(1.0, result.statistic, False, False, detail)
        mismatch = result.p_value < threshold
        if mismatch:
            detail = (
                f"segment mix mismatch: the arms' segment mix differs; {numbers} < "
                f"{_fmt_p(threshold)}; the aggregate comparison is confounded"
            )
        else:
            detail = f"segment mix ok: {numbers} >= {_fmt_p(threshold)}"
        return SegmentMixCheck(result.p_value, result.statistic, True, mismatch, detail)

    def _srm_or_pending(self) -> SrmCheck:
        if self._srm is not None:
            return self._srm
        threshold = self.settings.srm_threshold
        first = [v for v in (self._control, self._treatment) if v in self._weights]
        names = first + sorted(v for v in self._weights if v not in first)
        counts = self._users if any(self._users.values()) else self._assigned
        arms = tuple(
            ArmCount(v, counts.get(v, 0), 0.0, self._weights[v] / BASIS_POINTS_TOTAL) for v in names
        )
        return SrmCheck(arms, 0.0, 1.0, threshold, False, "no look yet")

    # ------------------------------------------------------------------ verdicts

    def _serving(self) -> str:
        """'' when the comparison can run, else why not."""
        if self._treatment is None or self._weights.get(self._treatment, 0) <= 0:
            return "no canary serving"
        if self._weights.get(self._control, 0) <= 0:
            return "the control serves no traffic"
        return ""

    def _decide(self, metric: str) -> _Decision:
        spec = self._specs[metric]
        seq = self._agg[metric]
        p = seq.state.p_value
        why_not = self._serving()
        if why_not:
            return _Decision(ExperimentVerdict.CONTINUE, why_not, -1, p)
        if self._srm is not None and self._srm.mismatch:
            reason = f"blocked at the last look: {self._srm.detail}"
            return _Decision(ExperimentVerdict.BLOCKED, reason, -1, p)
        outcome_srm = self._outcome_srm.get(metric)
        if outcome_srm:
            reason = f"blocked at the last look: {outcome_srm}"
            return _Decision(ExperimentVerdict.BLOCKED, reason, -1, p)
        if self._mix is not None and self._mix.mismatch:
            reason = f"blocked at the last look: {self._mix.detail}"
            return _Decision(ExperimentVerdict.BLOCKED, reason, -1, p)
        look = seq.last
        if look is None:
            return _Decision(ExperimentVerdict.CONTINUE, "no look yet", -1, p)
        decision = sequential_verdict(look, spec.minimum_effect)
        lo, hi = decision.interval.lower, decision.interval.upper
        numbers = (
            f"difference {_fmt(look.difference)} (B - A), anytime-valid "
            f"{self._level:.0%} interval [{_fmt(lo)}, {_fmt(hi)}], always-valid p "
            f"{_fmt_p(p)}, n {look.n_control}/{look.n_treatment}"
        )
        raw = decision.verdict
        if raw is Verdict.SHIP_B or raw is Verdict.KEEP_A:
            b_higher = raw is Verdict.SHIP_B
            better = b_higher == spec.higher_is_better
            verdict = ExperimentVerdict.SHIP_B if better else ExperimentVerdict.KEEP_A
            side = "above" if b_higher else "below"
            word = "better" if better else "worse"
            reason = f"B is {word}: the interval lies {side} 0; {numbers}"
            return _Decision(verdict, reason, 0, p)
        if raw is Verdict.EQUIVALENT:
            reason = (
                f"equivalent: the interval lies inside +-{_fmt(spec.minimum_effect)}; {numbers}"
            )
            return _Decision(ExperimentVerdict.EQUIVALENT, reason, 0, p)
        extra = decision.additional_per_arm
        additional = -1 if extra is None else extra
        if not look.evaluated:
            if self._user_level(spec.name):
                need = f"{self.settings.min_users} users" + (
                    f", {self.settings.min_events} successes and failures"
                    if spec.kind == "bool"
                    else ""
                )
            elif spec.kind == "bool":
                need = (
                    f"{self.settings.min_events} successes and {self.settings.min_events} failures"
                )
            else:
                need = f"{max(self.settings.min_events, 2)} outcomes and a positive variance"
            reason = f"not enough outcomes yet (each arm needs {need}); "
            additional = max(additional, self._to_first_evaluation(spec, look))
        else:
            reason = "undecided: the interval contains 0 and reaches beyond "
            reason += f"+-{_fmt(spec.minimum_effect)}; "
        reason += numbers
        if additional >= 0:
            reason += f"; about {additional} more outcomes per arm if the effect holds"
        return _Decision(ExperimentVerdict.CONTINUE, reason, additional, p)

    def _to_first_evaluation(self, spec: MetricSpec, look: SequentialLook) -> int:
        """Outcomes per arm still needed before the test can evaluate at all: for a rate,
        until the rarer of successes / failures reaches `min_events` at the observed rate
        (at least one more outcome when nothing is known yet)."""
        minimum = max(self.settings.min_events, 2)
        if spec.kind != "bool":
            return max(0, minimum - min(look.n_control, look.n_treatment))
        need = 0
        for successes, n in (
            (look.successes_control, look.n_control),
            (look.successes_treatment, look.n_treatment),
        ):
            rarer = min(successes, n - successes)
            if rarer >= minimum:
                continue
            share = rarer / n if n and rarer else 1.0 / (n + 1)
            need = max(need, math.ceil(minimum / share) - n)
        return max(need, 1)

    def gate(self) -> GateReading:
        """The A/B gate from the last look's verdict of the gate metric: value is its
        always-valid p-value (1.0 when there is none), threshold alpha."""
        if not self._specs:
            return GateReading(GateStatus.WAIT, 1.0, self.settings.alpha, "no metric configured")
        name = self.settings.gate_metric or self.settings.metrics[0].name
        d = self._decide(name)
        simpson = self._simpson(name, self._segments(name))
        if simpson and d.verdict is not ExperimentVerdict.BLOCKED:
            detail = f"{name}: {d.verdict.value} held (WAIT) by a Simpson warning: {simpson}"
            return GateReading(GateStatus.WAIT, d.p_value, self.settings.alpha, detail)
        if d.verdict in (ExperimentVerdict.SHIP_B, ExperimentVerdict.EQUIVALENT):
            status = GateStatus.PASS
        elif d.verdict is ExperimentVerdict.KEEP_A:
            status = GateStatus.FAIL
        else:
            status = GateStatus.WAIT
        return GateReading(
            status, d.p_value, self.settings.alpha, f"{name}: {d.verdict.value}: {d.reason}"
        )

    # ------------------------------------------------------------------ report

    def _arm(
        self, metric: str, variant: str | None, s: _Summary, segment: str | None = None
    ) -> ArmResult:
        arm = self._plain_arm(metric, variant, s)
        totals = self._totals(metric, variant, segment)
        return ArmResult(
            arm.variant,
            arm.n,
            arm.successes,
            arm.value,
            arm.std_dev,
            users=totals.n_users,
            keyless=totals.keyless,
        )

    def _plain_arm(self, metric: str, variant: str | None, s: _Summary) -> ArmResult:
        name = variant or ""
        level = self._level
        if self._specs[metric].kind == "bool":
            if s.n == 0:
                return ArmResult(name, 0, 0, _nan_estimate(level, "wilson"), 0.0)
            ci = wilson_interval(s.successes, s.n, self.settings.alpha)
            value = Estimate(s.successes / s.n, ci.lower, ci.upper, level, "wilson")
            return ArmResult(name, s.n, s.successes, value, 0.0)
        if s.n == 0:
            return ArmResult(name, 0, 0, _nan_estimate(level, "normal"), _NAN)
        if s.n == 1:
            return ArmResult(name, 1, 0, Estimate(s.mean, _NAN, _NAN, level, "normal"), _NAN)
        sd = math.sqrt(s.variance)
        half = self._z * sd / math.sqrt(s.n)
        value = Estimate(s.mean, s.mean - half, s.mean + half, level, "normal")
        return ArmResult(name, s.n, 0, value, sd)

    def _fixed(self, metric: str, a: _Summary, b: _Summary) -> tuple[float, Estimate]:
        """Fixed-horizon p-value and relative lift (reference only)."""
        alpha, level = self.settings.alpha, self._level
        if self._specs[metric].kind == "bool":
            if a.n == 0 or b.n == 0:
                return _NAN, _nan_estimate(level, "log-adjusted")
            p = two_proportion_ztest(a.successes, a.n, b.successes, b.n).p_value
            pa, pb = a.successes / a.n, b.successes / b.n
            ratio = pb / pa if pa > 0.0 else (math.inf if pb > 0.0 else _NAN)
            ci = ratio_interval(a.successes, a.n, b.successes, b.n, alpha)
            return p, Estimate(ratio - 1.0, ci.lower - 1.0, ci.upper - 1.0, level, ci.method)
        if a.n < 2 or b.n < 2:
            return _NAN, _nan_estimate(level, "delta")
        va, vb = a.variance, b.variance
        p = welch_t_test_from_stats(a.mean, va, a.n, b.mean, vb, b.n, alpha).p_value
        if a.mean == 0.0:
            return p, _nan_estimate(level, "delta")
        ratio = b.mean / a.mean
        se = math.sqrt(vb / (b.n * a.mean**2) + b.mean**2 * va / (a.n * a.mean**4))
        lift = ratio - 1.0
        return p, Estimate(lift, lift - self._z * se, lift + self._z * se, level, "delta")

    def _unit_variances(self, metric: str, a: _Summary, b: _Summary) -> tuple[float, float]:
        """Per-outcome variances of control and treatment for planning (0, 0: unknown).
        Boolean: the baseline (else the observed control rate) and it plus the minimum
        effect; numeric: the observed sample variances."""
        spec = self._specs[metric]
        if spec.kind != "bool":
            return (a.variance, b.variance) if a.n >= 2 and b.n >= 2 else (0.0, 0.0)
        p1 = spec.baseline
        if p1 is None:
            if a.n < 2 or not 0 < a.successes < a.n:
                return 0.0, 0.0
            p1 = a.successes / a.n
        p2 = p1 + spec.minimum_effect
        if not 0.0 < p2 < 1.0:
            p2 = p1 - spec.minimum_effect
        return p1 * (1.0 - p1), p2 * (1.0 - p2)

    def _design_effect(self, metric: str, seq: _Seq, a: _Summary, b: _Summary) -> float:
        """Variance of the difference from the user buckets over the request-level one at
        the last look (NaN when not user-level or not evaluated)."""
        look = seq.last
        if look is None or not look.evaluated or not self._user_level(metric):
            return _NAN
        if self._specs[metric].kind == "bool":
            pa, pb = a.successes / a.n, b.successes / b.n
            naive = pa * (1.0 - pa) / a.n + pb * (1.0 - pb) / b.n
        else:
            naive = a.variance / a.n + b.variance / b.n
        return look.variance / naive if naive > 0.0 else _NAN

    def _plan(self, metric: str, a: _Summary, b: _Summary, design_effect: float) -> tuple[int, int]:
        """Outcomes (control, treatment) for the actual split at which the mSPRT reaches
        the configured power against the minimum effect (`required_variance`), inflated
        by the design effect when it is above 1; (0, 0) without a plan."""
        spec = self._specs[metric]
        w_a = self._weights.get(self._control, 0)
        w_b = self._weights.get(self._treatment or "", 0)
        v_a, v_b = self._unit_variances(metric, a, b)
        if w_a <= 0 or w_b <= 0 or v_a <= 0.0 or v_b <= 0.0:
            return 0, 0
        rho = w_b / w_a
        s2 = required_variance(
            spec.minimum_effect, self._tau2[metric], self.settings.alpha, self.settings.power
        )
        inflation = design_effect if _isfinite(design_effect) and design_effect > 1.0 else 1.0
        n_a = inflation * (v_a + v_b / rho) / s2
        return math.ceil(n_a - 1e-9), math.ceil(rho * n_a - 1e-9)

    def _expected_seconds(
        self, planned: tuple[int, int], a: _Summary, b: _Summary, decided: bool, now: float
    ) -> float:
        """Seconds until both arms reach the plan at the epoch's average outcome rate
        (0 when decided; -1 without a plan or outcomes yet)."""
        if decided:
            return 0.0
        elapsed = float(now) - self._started
        if planned[0] <= 0 or elapsed <= 0.0 or a.n <= 0 or b.n <= 0:
            return -1.0
        return max(
            max(0, planned[0] - a.n) * elapsed / a.n,
            max(0, planned[1] - b.n) * elapsed / b.n,
        )

    def _difference(self, seq: _Seq) -> Estimate:
        d = seq.last.difference if seq.last is not None else _NAN
        return Estimate(d, seq.state.ci_lower, seq.state.ci_upper, self._level, "msprt")

    def _winner(self, spec: MetricSpec, b_higher: bool) -> str:
        better_is_b = b_higher == spec.higher_is_better
        return (self._treatment or "") if better_is_b else self._control

    def _segments(self, metric: str) -> tuple[SegmentResult, ...]:
        spec = self._specs[metric]
        seqs = self._segs[metric]
        names = self.settings.segments
        if not names:
            return ()
        raw = [seqs[s].state.p_value for s in names]
        adjusted = adjust_p_values(
            raw,
            "holm" if self.settings.correction == "holm" else "bh",
            self.settings.alpha,
        ).adjusted
        out: list[SegmentResult] = []
        for segment, p, p_adj in zip(names, raw, adjusted, strict=True):
            seq = seqs[segment]
            a = self._summary(metric, self._control, segment)
            b = self._summary(metric, self._treatment, segment)
            significant = p_adj < self.settings.alpha
            winner = ""
            if significant:
                st = seq.state
                if st.ci_lower > 0.0 or st.ci_upper < 0.0:
                    b_higher = st.ci_lower > 0.0
                else:
                    b_higher = seq.last is not None and seq.last.difference > 0.0
                winner = self._winner(spec, b_higher)
            out.append(
                SegmentResult(
                    segment=segment,
                    control=self._arm(metric, self._control, a, segment),
                    treatment=self._arm(metric, self._treatment, b, segment),
                    difference=self._difference(seq)
                    if a.n and b.n
                    else _nan_estimate(self._level, "msprt"),  # no data: no difference
                    p_value=p,
                    adjusted_p_value=p_adj,
                    significant=significant,
                    winner=winner,
                )
            )
        return tuple(out)

    def _simpson(self, metric: str, segments: Sequence[SegmentResult]) -> str:
        spec = self._specs[metric]
        seq = self._agg[metric]
        if seq.last is None or self._serving():
            return ""
        st = seq.state
        d = seq.last.difference
        if st.p_value < self.settings.alpha and (st.ci_lower > 0.0 or st.ci_upper < 0.0):
            winner = self._winner(spec, st.ci_lower > 0.0)
            basis = "significantly"
        elif d != 0.0 and math.isfinite(d):
            winner = self._winner(spec, d > 0.0)
            basis = "by its point estimate (not significant)"
        else:
            return ""
        against = [s for s in segments if s.significant and s.winner and s.winner != winner]
        if not against:
            return ""
        parts = "; ".join(
            f"segment {s.segment!r} favours {s.winner} (difference "
            f"{_fmt(s.difference.value)}, interval [{_fmt(s.difference.lower)}, "
            f"{_fmt(s.difference.upper)}], adjusted p {_fmt_p(s.adjusted_p_value)})"
            for s in against
        )
        return (
            f"Simpson's paradox on {metric!r}: the aggregate favours {winner} {basis} "
            f"(difference {_fmt(d)}, interval [{_fmt(st.ci_lower)}, {_fmt(st.ci_upper)}], "
            f"p {_fmt_p(st.p_value)}), but {parts}"
        )

    def _metric_result(self, metric: str, history: bool, now: float) -> MetricResult:
        spec = self._specs[metric]
        seq = self._agg[metric]
        a = self._summary(metric, self._control, None)
        b = self._summary(metric, self._treatment, None)
        fixed_p, lift = self._fixed(metric, a, b)
        decision = self._decide(metric)
        segments = self._segments(metric)
        design = self._design_effect(metric, seq, a, b)
        planned = self._plan(metric, a, b, design)
        decided = decision.verdict in (
            ExperimentVerdict.SHIP_B,
            ExperimentVerdict.KEEP_A,
            ExperimentVerdict.EQUIVALENT,
        )
        return MetricResult(
            metric=metric,
            kind=spec.kind,
            higher_is_better=spec.higher_is_better,
            minimum_effect=float(spec.minimum_effect),
            control=self._arm(metric, self._control, a),
            treatment=self._arm(metric, self._treatment, b),
            difference=self._difference(seq),
            relative_lift=lift,
            p_value=seq.state.p_value,
            fixed_horizon_p_value=fixed_p,
            verdict=decision.verdict,
            reason=decision.reason,
            additional_per_arm=decision.additional_per_arm,
            planned_per_arm=max(planned),
            correction=self.settings.correction,
            segments=segments,
            simpson_warning=self._simpson(metric, segments),
            history=self._history[metric].snapshot() if history else (),
            tau_squared=seq.state.tau_squared,
            alpha=self.settings.alpha,
            unit=USER_UNIT if self._user_level(metric) else UNIT,
            design_effect=design,
            planned_control=planned[0],
            planned_treatment=planned[1],
            expected_seconds=self._expected_seconds(planned, a, b, decided, now),
        )

    def report(
        self, now: float, metrics: Sequence[str] = (), history: bool = True
    ) -> ExperimentResult:
        """The experiment as of the last look (verdicts, intervals, SRM) with the current
        counts (arms, fixed-horizon p, lift). Does not change the tracker."""
        for name in metrics:
            if name not in self._specs:
                raise ValueError(f"metrics: {name!r} is not a configured metric")
        wanted = [m for m in self._specs if not metrics or m in metrics]
        results = tuple(self._metric_result(m, history, now) for m in wanted)
        srm = self._srm_or_pending()
        warnings: list[str] = []
        why_not = self._serving()
        if why_not:
            warnings.append(f"{why_not}: every verdict is CONTINUE")
        if srm.mismatch:
            warnings.append(f"{srm.detail}; every verdict is BLOCKED")
        for m in wanted:
            if m in self._outcome_srm:
                warnings.append(f"{self._outcome_srm[m]}; the verdict of {m!r} is BLOCKED")
        if self._mix is not None and self._mix.mismatch:
            warnings.append(f"{self._mix.detail}; every verdict is BLOCKED")
        if self._specs and not why_not and not any(c.n for c in self._cells.values()):
            warnings.append("no outcomes yet in this epoch")
        if self._looks == 0 and self._specs:
            warnings.append("no look yet: verdicts are CONTINUE until the first look")
        warnings.extend(r.simpson_warning for r in results if r.simpson_warning)
        return ExperimentResult(
            generated_unix=float(now),
            epoch=self._epoch,
            started_unix=self._started,
            control=self._control,
            treatment=self._treatment or "",
            srm=srm,
            metrics=results,
            warnings=tuple(warnings),
            looks=self._looks,
            last_look_unix=self._last_look if self._last_look is not None else 0.0,
            alpha=self.settings.alpha,
            unit=USER_UNIT if any(r.unit == USER_UNIT for r in results) else UNIT,
            segment_mix=self._mix,
        )

    # ------------------------------------------------------------------ fleet

    def counters(self) -> ExperimentCounters:
        """The current epoch's counts as plain mergeable data (what a fleet member
        publishes; `sidecar.core.experiment.counters`)."""
        cells = {where: (c.n, c.successes, c.mean, c.m2) for where, c in self._cells.items() if c.n}
        assigned = {v: n for v, n in self._assigned.items() if n}
        sums = {
            _bucket_sum_name(where): _flatten_buckets(t)
            for where, t in self._buckets.items()
            if t.n
        }
        users = {v: n for v, n in self._users.items() if n}
        keyless = {v: n for v, n in self._keyless.items() if n}
        return ExperimentCounters(self._key, assigned, cells, sums, users, keyless)

    def load_counters(self, counters: ExperimentCounters, now: float) -> None:
        """Make `counters` this tracker's counts (a fleet's merged view: the sequential
        states and the history carry on while the epoch key stays; another key starts a
        new epoch at `now`). Cells of unknown metrics, arms or segments are skipped.

        Counts that went down (a member's statistics expired, or it restarted without its
        checkpoint) cannot continue cumulative sequential tests: the view then starts a new
        epoch at `now` on the merged counts (its tests start afresh; a restart only ever
        discards the running evidence, so the tests stay valid)."""
        key = counters.key
        if key is None:
            return
        if key == self._key and self._counts_went_down(counters):
            self._key = None
        if key != self._key:
            control, treatment, weights = key
            self.sync(control, treatment, dict(weights), now)
        self._assigned = defaultdict(int, counters.assigned)
        self._users = defaultdict(int, counters.users)
        self._keyless = defaultdict(int, counters.keyless)
        for where, cell in self._cells.items():
            cell.n, cell.successes, cell.mean, cell.m2 = counters.cells.get(where, (0, 0, 0.0, 0.0))
        k = self.settings.buckets
        for where in self._buckets:
            flat = counters.sums.get(_bucket_sum_name(where))
            totals = BucketTotals(k)
            if flat is not None and len(flat) == 1 + 4 * k:
                with contextlib.suppress(ValueError):  # malformed: counted as nothing
                    totals = _unflatten_buckets(flat, k)
            self._buckets[where] = totals

    def _counts_went_down(self, counters: ExperimentCounters) -> bool:
        for where, cell in self._cells.items():
            if counters.cells.get(where, (0, 0, 0.0, 0.0))[0] < cell.n:
                return True
        return any(counters.assigned.get(v, 0) < n for v, n in self._assigned.items())

    # ------------------------------------------------------------------ checkpoint

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable checkpoint of the current epoch (non-finite floats are
        written as the strings "inf", "-inf", "nan")."""
        metrics: dict[str, Any] = {}
        for name, spec in self._specs.items():
            cells: dict[str, dict[str, list[Any]]] = {}
            for (metric, variant, seg), c in self._cells.items():
                if metric == name:
                    cells.setdefault(variant, {})[seg] = [c.n, c.successes, c.mean, c.m2]
            buckets: dict[str, dict[str, dict[str, Any]]] = {}
            for (metric, variant, seg), t in self._buckets.items():
                if metric == name:
                    buckets.setdefault(variant, {})[seg] = t.to_json()
            hist = self._history[name]
            metrics[name] = {
                "kind": spec.kind,
                "cells": cells,
                "buckets": buckets,
                "aggregate": _seq_to_dict(self._agg[name]),
                "segments": {s: _seq_to_dict(q) for s, q in self._segs[name].items()},
                "history": {
                    "stride": hist.stride,
                    "looks": list(hist.looks),
                    "points": [_point_to_list(p) for p in hist.points],
                    "tail": None
                    if hist.tail is None
                    else [hist.tail[0], _point_to_list(hist.tail[1])],
                },
            }
        key = self._key
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": self._epoch,
            "started": self._started,
            "synced": key is not None,
            "control": self._control,
            "treatment": self._treatment,
            "weights": dict(self._weights),
            "assigned": dict(self._assigned),
            "users": dict(self._users),
            "keyless": dict(self._keyless),
            "looks": self._looks,
            "last_look": self._last_look,
            "srm": None if self._srm is None else _srm_to_dict(self._srm),
            "outcome_srm": dict(self._outcome_srm),
            "metrics": metrics,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], settings: ExperimentSettings) -> ExperimentTracker:
        """Restore a checkpoint under `settings`. Metrics are restored when their name and
        kind match; a sequential state is kept only if it was run with the configured
        alpha, tau^2 and min_events (else it restarts from the restored counts). Cells of
        segments no longer declared are merged into "other". A malformed checkpoint
        raises ValueError."""
        try:
            return cls._from_dict(data, settings)
        except ValueError as exc:
            if str(exc).startswith("malformed experiment checkpoint"):
                raise
            raise ValueError(f"malformed experiment checkpoint: {exc}") from None
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"malformed experiment checkpoint: {exc!r}") from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], settings: ExperimentSettings) -> ExperimentTracker:
        if not isinstance(data, Mapping):
            raise ValueError("malformed experiment checkpoint: not a mapping")
        if data.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"malformed experiment checkpoint: version {data.get('version')!r}, "
                f"expected {CHECKPOINT_VERSION}"
            )
        tracker = cls(settings)
        tracker._restore_epoch(data)
        tracker._reset()
        tracker._restore_counts(data)
        stored = _mapping(data["metrics"], "metrics")
        for name, spec in tracker._specs.items():
            if name not in stored:
                continue
            entry = _mapping(stored[name], f"metrics.{name}")
            if entry["kind"] != spec.kind:
                continue
            tracker._restore_metric(name, entry)
        if tracker._looks:
            tracker._mix = tracker._mix_check()
        for name in tracker._specs:
            tracker._verdicts[name] = tracker._decide(name).verdict
        return tracker

    def _restore_epoch(self, data: Mapping[str, Any]) -> None:
        """The epoch's identity: number, start, control, treatment, weights."""
        epoch = _int(data["epoch"], "epoch")
        started = _float(data["started"], "started")
        synced = data["synced"]
        if not isinstance(synced, bool):
            raise ValueError("malformed experiment checkpoint: synced must be a bool")
        control = _str(data["control"], "control")
        treatment_raw = data["treatment"]
        treatment = None if treatment_raw is None else _str(treatment_raw, "treatment")
        weights_raw = _mapping(data["weights"], "weights")
        weights = {_str(k, "weights"): _int(v, f"weights.{k}") for k, v in weights_raw.items()}
        self._epoch = epoch
        self._started = started
        self._control = control
        self._treatment = treatment
        self._weights = weights
        if synced:
            if not control or sum(weights.values()) != BASIS_POINTS_TOTAL:
                raise ValueError(
                    "malformed experiment checkpoint: a synced epoch has a control and "
                    f"weights summing to {BASIS_POINTS_TOTAL}"
                )
            self._key = (control, treatment, tuple(sorted(weights.items())))

    def _restore_counts(self, data: Mapping[str, Any]) -> None:
        """Assignments, looks and the sample ratio checks."""
        for k, v in _mapping(data["assigned"], "assigned").items():
            self._assigned[_str(k, "assigned")] = _int(v, f"assigned.{k}")
        for field_name, target in (("users", self._users), ("keyless", self._keyless)):
            # absent in checkpoints written before users were counted: request-level
            for k, v in _mapping(data.get(field_name, {}), field_name).items():
                target[_str(k, field_name)] = _int(v, f"{field_name}.{k}")
        self._looks = _int(data["looks"], "looks")
        last_look = data["last_look"]
        self._last_look = None if last_look is None else _float(last_look, "last_look")
        srm = data["srm"]
        self._srm = None if srm is None else _srm_from_dict(_mapping(srm, "srm"))
        for k, v in _mapping(data["outcome_srm"], "outcome_srm").items():
            if k in self._specs:
                self._outcome_srm[k] = _str(v, f"outcome_srm.{k}")

    def _restore_metric(self, name: str, entry: Mapping[str, Any]) -> None:
        self._restore_cells(name, entry)
        self._restore_buckets(name, entry)
        self._restore_sequences(name, entry)
        self._history[name] = self._restore_history(name, entry)

    def _restore_cells(self, name: str, entry: Mapping[str, Any]) -> None:
        """Merge the stored cells into this tracker's (undeclared segments into "other")."""
        is_bool = self._specs[name].kind == "bool"
        for variant, by_segment in _mapping(entry["cells"], f"{name}.cells").items():
            for seg, values in _mapping(by_segment, f"{name}.cells.{variant}").items():
                src = _cell_from_list(values, is_bool, f"{name}.cells.{variant}.{seg}")
                target = seg if seg in self._declared else OTHER_SEGMENT
                cell = self._cells.get((name, variant, target))
                if cell is None:
                    continue
                merged = _Summary(cell.n, cell.successes, cell.mean, cell.m2).merge(src)
                cell.n, cell.successes = merged.n, merged.successes
                cell.mean, cell.m2 = merged.mean, merged.m2

    def _restore_buckets(self, name: str, entry: Mapping[str, Any]) -> None:
        """Add the stored user buckets (undeclared segments into "other"); totals of
        another bucket count cannot be re-bucketed and are left out."""
        for variant, by_segment in _mapping(entry["buckets"], f"{name}.buckets").items():
            for seg, raw in _mapping(by_segment, f"{name}.buckets.{variant}").items():
                try:
                    src = BucketTotals.from_json(_mapping(raw, f"{name}.buckets"))
                except ValueError as exc:
                    raise ValueError(
                        f"malformed experiment checkpoint: {name}.buckets.{variant}.{seg}: {exc}"
                    ) from None
                target = seg if seg in self._declared else OTHER_SEGMENT
                key = (name, variant, target)
                if key in self._buckets and src.buckets == self.settings.buckets:
                    self._buckets[key] = self._buckets[key].merge(src)

    def _restore_sequences(self, name: str, entry: Mapping[str, Any]) -> None:
        """Keep stored sequential states run with the configured parameters."""
        fresh = self._fresh_state(name)
        agg = _seq_from_dict(_mapping(entry["aggregate"], f"{name}.aggregate"))
        if _compatible(agg.state, fresh):
            self._agg[name] = agg
        for seg, raw in _mapping(entry["segments"], f"{name}.segments").items():
            if seg in self._segs[name]:
                seq = _seq_from_dict(_mapping(raw, f"{name}.segments.{seg}"))
                if _compatible(seq.state, fresh):
                    self._segs[name][seg] = seq

    def _restore_history(self, name: str, entry: Mapping[str, Any]) -> _History:
        hist_raw = _mapping(entry["history"], f"{name}.history")
        hist = _History(self.settings.max_history)
        stride = _int(hist_raw["stride"], "history.stride")
        looks = [_int(x, "history.looks") for x in hist_raw["looks"]]
        points = [_point_from_list(p) for p in hist_raw["points"]]
        if len(looks) != len(points) or stride < 1:
            raise ValueError(f"malformed experiment checkpoint: {name}.history")
        tail_raw = hist_raw["tail"]
        if tail_raw is not None:
            if not isinstance(tail_raw, list | tuple) or len(tail_raw) != 2:
                raise ValueError(f"malformed experiment checkpoint: {name}.history.tail")
            hist.tail = (_int(tail_raw[0], "history.tail"), _point_from_list(tail_raw[1]))
        while len(points) >= hist.limit:  # configured with a smaller max_history: thin
            last = (looks[-1], points[-1])
            points, looks = points[::2], looks[::2]
            stride *= 2
            if hist.tail is None and looks[-1] != last[0]:
                hist.tail = last
        hist.stride = stride
        hist.points, hist.looks = points, looks
        return hist


def _cell_from_list(values: Any, is_bool: bool, where: str) -> _Cell:
    if not isinstance(values, list | tuple) or len(values) != 4:
        raise ValueError(f"malformed experiment checkpoint: {where}")
    n = _int(values[0], where)
    successes = _int(values[1], where)
    mean, m2 = _float(values[2], where), _float(values[3], where)
    if successes > n or m2 < 0.0 or not (_isfinite(mean) and _isfinite(m2)):
        raise ValueError(f"malformed experiment checkpoint: {where}: {values!r}")
    cell = _Cell(is_bool)
    cell.n, cell.successes, cell.mean, cell.m2 = n, successes, mean, m2
    return cell


# --------------------------------------------------------------------------- checkpoint codec


def _enc(x: float) -> float | str:
    return x if _isfinite(x) else repr(float(x))


def _float(value: Any, name: str) -> float:
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"malformed experiment checkpoint: {name} must be a number; {value!r}")
    return float(value)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"malformed experiment checkpoint: {name} must be a non-negative integer; {value!r}"
        )
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"malformed experiment checkpoint: {name} must be a string; {value!r}")
    return value


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"malformed experiment checkpoint: {name} must be a mapping")
    return value


def _compatible(stored: SequentialState, fresh: SequentialState) -> bool:
    return (
        stored.alpha == fresh.alpha
        and stored.tau_squared == fresh.tau_squared
        and stored.min_events == fresh.min_events
        and stored.bounded == fresh.bounded
    )


def _state_to_dict(s: SequentialState) -> dict[str, Any]:
    return {
        "alpha": s.alpha,
        "tau_squared": s.tau_squared,
        "min_events": s.min_events,
        "looks": s.looks,
        "n_control": s.n_control,
        "n_treatment": s.n_treatment,
        "p_value": s.p_value,
        "ci_lower": _enc(s.ci_lower),
        "ci_upper": _enc(s.ci_upper),
        "bounded": s.bounded,
    }


def _state_from_dict(d: Mapping[str, Any]) -> SequentialState:
    bounded = d["bounded"]
    if not isinstance(bounded, bool):
        raise ValueError("malformed experiment checkpoint: bounded must be a bool")
    return SequentialState(
        alpha=_float(d["alpha"], "alpha"),
        tau_squared=_float(d["tau_squared"], "tau_squared"),
        min_events=_int(d["min_events"], "min_events"),
        looks=_int(d["looks"], "looks"),
        n_control=_int(d["n_control"], "n_control"),
        n_treatment=_int(d["n_treatment"], "n_treatment"),
        p_value=_float(d["p_value"], "p_value"),
        ci_lower=_float(d["ci_lower"], "ci_lower"),
        ci_upper=_float(d["ci_upper"], "ci_upper"),
        bounded=bounded,
    )


def _seq_to_dict(seq: _Seq) -> dict[str, Any]:
    last = seq.last
    out: dict[str, Any] = {"state": _state_to_dict(seq.state), "last": None}
    if last is not None:
        out["last"] = {
            "successes_control": last.successes_control,
            "n_control": last.n_control,
            "successes_treatment": last.successes_treatment,
            "n_treatment": last.n_treatment,
            "difference": _enc(last.difference),
            "variance": _enc(last.variance),
            "evaluated": last.evaluated,
            "log_likelihood_ratio": _enc(last.log_likelihood_ratio),
            "interval": [
                _enc(last.interval.lower),
                _enc(last.interval.upper),
                last.interval.confidence,
                last.interval.method,
            ],
            "state": _state_to_dict(last.state),
        }
    return out


def _seq_from_dict(d: Mapping[str, Any]) -> _Seq:
    state = _state_from_dict(_mapping(d["state"], "state"))
    raw = d["last"]
    if raw is None:
        return _Seq(state)
    raw = _mapping(raw, "last")
    evaluated = raw["evaluated"]
    if not isinstance(evaluated, bool):
        raise ValueError("malformed experiment checkpoint: evaluated must be a bool")
    lo, hi, conf, method = raw["interval"]
    look = SequentialLook(
        successes_control=_int(raw["successes_control"], "successes_control"),
        n_control=_int(raw["n_control"], "n_control"),
        successes_treatment=_int(raw["successes_treatment"], "successes_treatment"),
        n_treatment=_int(raw["n_treatment"], "n_treatment"),
        difference=_float(raw["difference"], "difference"),
        variance=_float(raw["variance"], "variance"),
        evaluated=evaluated,
        log_likelihood_ratio=_float(raw["log_likelihood_ratio"], "log_likelihood_ratio"),
        interval=Interval(
            _float(lo, "interval"),
            _float(hi, "interval"),
            _float(conf, "interval"),
            _str(method, "interval"),
        ),
        state=_state_from_dict(_mapping(raw["state"], "last.state")),
    )
    if look.state != state:
        raise ValueError("malformed experiment checkpoint: the last look's state differs")
    return _Seq(state, look)


def _point_to_list(p: LookPoint) -> list[Any]:
    return [
        p.unix_time,
        p.n_control,
        p.n_treatment,
        _enc(p.difference),
        _enc(p.lower),
        _enc(p.upper),
        p.p_value,
    ]


def _point_from_list(raw: Any) -> LookPoint:
    if not isinstance(raw, list | tuple) or len(raw) != 7:
        raise ValueError(f"malformed experiment checkpoint: history point {raw!r}")
    return LookPoint(
        _float(raw[0], "point.unix_time"),
        _int(raw[1], "point.n_control"),
        _int(raw[2], "point.n_treatment"),
        _float(raw[3], "point.difference"),
        _float(raw[4], "point.lower"),
        _float(raw[5], "point.upper"),
        _float(raw[6], "point.p_value"),
    )


def _srm_to_dict(s: SrmCheck) -> dict[str, Any]:
    return {
        "arms": [[a.variant, a.observed, a.observed_share, a.expected_share] for a in s.arms],
        "chi_square": _enc(s.chi_square),
        "p_value": s.p_value,
        "threshold": s.threshold,
        "mismatch": s.mismatch,
        "detail": s.detail,
        "unit": s.unit,
    }


def _srm_from_dict(d: Mapping[str, Any]) -> SrmCheck:
    arms = []
    for raw in d["arms"]:
        if not isinstance(raw, list | tuple) or len(raw) != 4:
            raise ValueError(f"malformed experiment checkpoint: srm arm {raw!r}")
        arms.append(
            ArmCount(
                _str(raw[0], "srm.arm"),
                _int(raw[1], "srm.arm"),
                _float(raw[2], "srm.arm"),
                _float(raw[3], "srm.arm"),
            )
        )
    mismatch = d["mismatch"]
    if not isinstance(mismatch, bool):
        raise ValueError("malformed experiment checkpoint: srm.mismatch must be a bool")
    return SrmCheck(
        tuple(arms),
        _float(d["chi_square"], "srm.chi_square"),
        _float(d["p_value"], "srm.p_value"),
        _float(d["threshold"], "srm.threshold"),
        mismatch,
        _str(d["detail"], "srm.detail"),
        USER_UNIT if d.get("unit") == USER_UNIT else UNIT,
    )


def _bucket_sum_name(where: tuple[str, str, str]) -> str:
    """The `ExperimentCounters.sums` name of one cell's user buckets."""
    return "buckets:" + json.dumps(list(where), separators=(",", ":"))


def _flatten_buckets(totals: BucketTotals) -> tuple[float, ...]:
    """``[keyless, outcomes..., total..., total_sq..., users...]``: plain sums, so the
    fleet's element-wise addition is `BucketTotals.merge` (a user hashes to the same
    bucket on every member, so buckets of several members add up to whole users)."""
    return (
        float(totals.keyless),
        *map(float, totals.outcomes),
        *totals.total,
        *totals.total_sq,
        *map(float, totals.users),
    )


def _unflatten_buckets(flat: Sequence[float], k: int) -> BucketTotals:
    return BucketTotals.from_json(
        {
            "buckets": k,
            "keyless": round(flat[0]),
            "outcomes": [round(x) for x in flat[1 : 1 + k]],
            "total": list(flat[1 + k : 1 + 2 * k]),
            "total_sq": list(flat[1 + 2 * k : 1 + 3 * k]),
            "users": [round(x) for x in flat[1 + 3 * k : 1 + 4 * k]],
        }
    )

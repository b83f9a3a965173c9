"""Outcome attribution: which variant and segment served a request, and what the app
later reported about it.

`OutcomeLedger.remember` is called on the request path (one dict insert; the oldest
entry is evicted when `max_requests` is reached); `report` attributes a metric value to
the remembered variant and segment. The caller passes `now`.

Memory is bounded in bytes, not only in entries, whatever clients send:

- at most `max_requests` remembered requests, each expiring after `ttl_seconds` (expired
  and evicted ones are counted). An entry holds the sidecar's own request id, the variant
  and segment as shared strings, the epoch, a hash of the targeting key and a bit mask of
  the reported metrics: its size does not depend on the request.
- Only configured metrics are accepted (`kinds`, from `experiment.metrics`; their kinds
  are fixed there); any other name is refused with `UnknownMetric` naming the configured
  ones, and counted in `refused`. With no configured metric every report is refused.
- Only declared segments are kept (`segments`: the flag's and the experiment's); any
  other non-empty segment is remembered as "other", never as the client's string.
- Counters per (metric, variant, segment), never lists of results.
- Per-unit caps: at most `max_per_key` split-routed requests of one targeting key enter
  the experiment per epoch (`admit`; later ones are served but not part of the
  experiment: counted in `capped_assignments`), and at most `max_per_key` outcomes of one
  targeting key are counted per metric and epoch (0: no caps). So one user weighs at
  most `max_per_key` in the split and in every metric, however many requests a client
  sends with its key and however selectively it reports. Further reports are accepted,
  not counted, and counted in `capped`. The tally table holds at most `max_keys`
  (key, epoch, metric or assignment) entries; the least recently used is forgotten
  (`forgotten`). Requests without a targeting key are their own units (one outcome per
  request and metric already).
- The unit of analysis: the attribution carries a stable hash of the targeting key (or of
  the request id for a keyless request, `keyless`), and `new_user` when the tally had no
  entry for (key, epoch, metric): the tracker's user buckets count users with it. The tally
  is kept for every keyed outcome (also with no cap), so it stays bounded by `max_keys`; a
  key it forgot counts as a new user again (`forgotten` says how often that can happen).

Each remembered request also carries the experiment epoch it was served in (-1: not part of
the experiment, e.g. routed by the kill switch, an override or a segment rule); the
`Attribution` returns it so the caller can hand the outcome to the `ExperimentTracker`.
Numeric values must be finite.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sidecar.core.experiment.analysis import OTHER_SEGMENT  # undeclared segments
from sidecar.core.experiment.units import unit_hash, unit_of
from sidecar.core.limits import shown

MAX_METRICS = 64
KINDS = ("bool", "number")
_ASSIGNMENTS = -1  # the tally slot of a key's assignments (metrics use their index)


class OutcomeError(ValueError):
    """Base of the ledger's refusals."""


class UnknownRequest(OutcomeError):
    pass


class WrongValueType(OutcomeError):
    pass


class UnknownMetric(OutcomeError):
    """The metric is not configured (`experiment.metrics`)."""


@dataclass
class MetricCounters:
    """Sufficient statistics of one metric for one (variant, segment)."""

    n: int = 0
    successes: int = 0  # boolean metrics
    total: float = 0.0  # numeric metrics: sum and sum of squares (Welch from counters)
    total_sq: float = 0.0


@dataclass(frozen=True)
class Attribution:
    request_id: str
    variant: str
    segment: str
    counted: bool  # False for a repeated report of the same (request, metric), or capped
    epoch: int = -1  # experiment epoch the request was served in; -1: not in the experiment
    capped: bool = False  # not counted: the targeting key reached its cap for this metric
    # The unit of analysis: a stable hash of the targeting key, or of the request id for a
    # request without a key (`keyless`; each such request is its own unit).
    unit: int = 0
    keyless: bool = True
    # The unit's first counted outcome of this metric in this epoch (as far as the bounded
    # tally remembers: a key forgotten by `max_keys` counts as new again).
    new_user: bool = True


@dataclass(slots=True)
class _Served:
    variant: str
    segment: str
    at: float
    epoch: int = -1
    unit: int | None = None  # hash of the targeting key; None: no key (its own unit)
    reported: int = 0  # bit i: metric i was reported


class OutcomeLedger:
    def __init__(
        self,
        max_requests: int = 200_000,
        ttl_seconds: float = 3600.0,
        kinds: Mapping[str, str] | None = None,
        *,
        segments: Iterable[str] = (),
        max_per_key: int = 0,
        max_keys: int = 100_000,
    ) -> None:
        """`kinds`: the configured metrics and their kinds ("bool" | "number"); reports of
        any other metric are refused. `segments`: the declared segments (others are kept as
        "other"). `max_per_key`: outcomes counted per targeting key, metric and epoch (0: no
        cap), in a table of at most `max_keys` entries."""
        if max_requests < 1 or ttl_seconds <= 0:
            raise ValueError("max_requests must be >= 1 and ttl_seconds > 0")
        if max_per_key < 0 or max_keys < 1:
            raise ValueError("max_per_key must be >= 0 and max_keys >= 1")
        preset = dict(kinds or {})
        for name, kind in preset.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"kinds: metric names must be non-empty strings; got {name!r}")
            if kind not in KINDS:
                raise ValueError(f"kinds[{name}]: must be 'bool' or 'number'; got {kind!r}")
        if len(preset) > MAX_METRICS:
            raise ValueError(f"kinds: at most {MAX_METRICS} metrics are tracked")
        self.max_requests = max_requests
        self.ttl = ttl_seconds
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self.kinds: Mapping[str, str] = preset  # metric -> "bool" | "number"; fixed
        self._names = tuple(preset)
        self._index = {name: i for i, name in enumerate(self._names)}
        # declared segment -> the one string object kept for it
        self._declared: dict[str, str] = {s: s for s in segments if s}
        self.counters: dict[tuple[str, str, str], MetricCounters] = {}
        # hash((key hash, epoch, metric index or _ASSIGNMENTS)) -> count; one int per entry
        self._tally: OrderedDict[int, int] = OrderedDict()
        self.evicted = 0
        self.expired = 0
        self.duplicates = 0
        self.capped = 0
        self.capped_assignments = 0
        self.forgotten = 0  # tallies forgotten by the max_keys bound
        self.refused: dict[str, int] = dict.fromkeys(
            ("unknown_metric", "wrong_value", "unknown_request"), 0
        )

    def __len__(self) -> int:
        return len(self._served)

    @property
    def tracked_keys(self) -> int:
        return len(self._tally)

    def segment_of(self, segment: str) -> str:
        """The segment as remembered: declared ones and "" as they are, others "other"."""
        if not segment:
            return ""
        return self._declared.get(segment, OTHER_SEGMENT)

    def remember(
        self,
        request_id: str,
        variant: str,
        segment: str,
        now: float,
        epoch: int = -1,
        targeting_key: str = "",
        unit: int | None = None,
    ) -> None:
        """Remember what served `request_id` (request path: one insert, maybe one eviction).

        `epoch` is the experiment epoch of the weighted split that routed it; -1 when the
        request is not part of the experiment. Only a hash of `targeting_key` is kept
        (`unit`: that hash when the caller computed it already)."""
        if unit is None and targeting_key:
            unit = unit_hash(targeting_key)
        self._served[request_id] = _Served(
            variant,
            self.segment_of(segment),
            now,
            epoch,
            unit,
        )
        if len(self._served) > self.max_requests:
            self._served.popitem(last=False)
            self.evicted += 1

    def admit(self, targeting_key: str, epoch: int, unit: int | None = None) -> bool:
        """Whether a request the split routed in `epoch` enters the experiment: `enter`
        for a targeting key (`unit`: its `unit_of(targeting_key)` when the caller already
        has it). Keyless requests are always admitted (each is its own unit)."""
        return self.enter(unit_of(targeting_key) if unit is None else unit, epoch)[0]

    def enter(self, unit: int | None, epoch: int) -> tuple[bool, bool | None]:
        """(admitted, first) for a request the split routed in `epoch` (request path).

        `unit` is `unit_hash` of the targeting key (None: a keyless request, always
        admitted, `first` None). For a key: admitted unless it had `max_per_key`
        assignments in this epoch, and `first` when the tally had no entry for (key,
        epoch) yet: the sample-ratio check counts users with it. The tally is kept for
        every key (also with no cap), so it stays bounded by `max_keys`; a key it forgot
        (least recently used) is counted as a new user again (`forgotten` counts how often
        a tally was dropped, an upper bound on such double counts)."""
        if unit is None:
            return True, None
        key = hash((unit, epoch, _ASSIGNMENTS))
        first = key not in self._tally
        if self._take(key):
            return True, first
        self.capped_assignments += 1
        return False, first

    def _expire(self, now: float) -> None:
        while self._served:
            oldest = next(iter(self._served.values()))
            if now - oldest.at <= self.ttl:
                return
            self._served.popitem(last=False)
            self.expired += 1

    def _check(self, metric: str, value: bool | float) -> tuple[int, str]:
        """(metric index, kind); raises UnknownMetric or WrongValueType."""
        index = self._index.get(metric)
        if index is None:
            self.refused["unknown_metric"] += 1
            if not self._index:
                raise UnknownMetric(
                    f"metric: {shown(metric)} is not configured; no outcome metrics are "
                    "configured (experiment.metrics is empty), so no outcome is recorded"
                )
            raise UnknownMetric(
                f"metric: {shown(metric)} is not configured; configured metrics: "
                f"{', '.join(self._index)}"
            )
        kind = "bool" if isinstance(value, bool) else "number"
        if kind == "number" and not math.isfinite(value):
            self.refused["wrong_value"] += 1
            raise WrongValueType(f"value: metric {metric!r} needs a finite number, got {value!r}")
        known = self.kinds[metric]
        if known != kind:
            self.refused["wrong_value"] += 1
            raise WrongValueType(f"value: metric {metric!r} is {known}, got a {kind} value")
        return index, kind

    def report(self, request_id: str, metric: str, value: bool | float, now: float) -> Attribution:
        """Count `value` for the request's variant and segment, once per (request, metric),
        at most `max_per_key` times per targeting key, metric and epoch.

        Raises UnknownMetric (not configured), WrongValueType (not the configured kind; a
        numeric value must be finite) and UnknownRequest (never seen, expired or evicted);
        a refusal changes no counter but `refused`. A repeated or capped report returns
        `counted=False` and changes nothing else."""
        index, kind = self._check(metric, value)
        self._expire(now)
        served = self._served.get(request_id)
        if served is None:
            self.refused["unknown_request"] += 1
            raise UnknownRequest(
                f"request_id: {shown(request_id)} is unknown or expired (kept {self.ttl:g} s, "
                f"at most {self.max_requests} requests)"
            )
        bit = 1 << index
        if served.reported & bit:
            self.duplicates += 1
            return Attribution(
                request_id, served.variant, served.segment, counted=False, epoch=served.epoch
            )
        served.reported |= bit
        counted, new_user = self._within_cap(served, index)
        if not counted:
            self.capped += 1
            return Attribution(
                request_id,
                served.variant,
                served.segment,
                counted=False,
                epoch=served.epoch,
                capped=True,
            )
        key = (self._names[index], served.variant, served.segment)  # configured strings
        c = self.counters.get(key)
        if c is None:
            c = self.counters[key] = MetricCounters()
        c.n += 1
        if kind == "bool":
            c.successes += int(value)
        else:
            x = float(value)
            c.total += x
            c.total_sq += x * x
        keyless = served.unit is None
        return Attribution(
            request_id,
            served.variant,
            served.segment,
            counted=True,
            epoch=served.epoch,
            unit=unit_hash(request_id) if served.unit is None else served.unit,
            keyless=keyless,
            new_user=new_user,
        )

    def _within_cap(self, served: _Served, index: int) -> tuple[bool, bool]:
        """(counted, new unit): take one from the unit's allowance for this metric and
        epoch (not counted when spent); new when the unit had no counted outcome of it."""
        if served.unit is None:
            return True, True
        key = hash((served.unit, served.epoch, index))
        new_user = key not in self._tally
        return self._take(key), new_user

    def _take(self, key: int) -> bool:
        tally = self._tally.get(key, 0)
        if self.max_per_key and tally >= self.max_per_key:
            self._tally.move_to_end(key)
            return False
        self._tally[key] = tally + 1
        self._tally.move_to_end(key)
        if len(self._tally) > self.max_keys:
            self._tally.popitem(last=False)
            self.forgotten += 1
        return True

    def stats(self) -> dict[str, int]:
        """Plain counts for metrics and reports."""
        return {
            "remembered": len(self._served),
            "counted": sum(c.n for c in self.counters.values()),
            "duplicates": self.duplicates,
            "capped": self.capped,
            "capped_assignments": self.capped_assignments,
            "evicted": self.evicted,
            "expired": self.expired,
            "tracked_keys": len(self._tally),
            "forgotten_keys": self.forgotten,
            **{f"refused_{reason}": n for reason, n in self.refused.items()},
        }

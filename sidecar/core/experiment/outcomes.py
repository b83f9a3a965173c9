"""Outcome attribution: which variant and segment served a request, and what the app
later reported about it.

`OutcomeLedger.remember` is called on the request path (one dict insert; the oldest
entry is evicted when `max_requests` is reached); `report` attributes a metric value to
the remembered variant and segment. Memory is bounded: at most `max_requests` remembered
requests, each expiring after `ttl_seconds` (expired and evicted ones are counted), and
counters per (metric, variant, segment), never lists of results. The caller passes `now`.

Each remembered request also carries the experiment epoch it was served in (-1: not part of
the experiment, e.g. routed by the kill switch, an override or a segment rule); the
`Attribution` returns it so the caller can hand the outcome to the `ExperimentTracker`.
Metric kinds ("bool" | "number") can be preset from configuration; otherwise a metric's
first report fixes its kind. Numeric values must be finite.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass


class OutcomeError(ValueError):
    """Base of the ledger's refusals."""


class UnknownRequest(OutcomeError):
    pass


class WrongValueType(OutcomeError):
    pass


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
    counted: bool  # False for a repeated report of the same (request, metric)
    epoch: int = -1  # experiment epoch the request was served in; -1: not in the experiment


@dataclass(slots=True)
class _Served:
    variant: str
    segment: str
    at: float
    epoch: int = -1
    reported: set[str] | None = None


MAX_METRICS = 64
MAX_SEGMENTS = 64
KINDS = ("bool", "number")


class OutcomeLedger:
    def __init__(
        self,
        max_requests: int = 200_000,
        ttl_seconds: float = 3600.0,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        """`kinds` presets metric kinds ("bool" | "number") from configuration, so a value of
        the wrong type is refused even on a metric's first report."""
        if max_requests < 1 or ttl_seconds <= 0:
            raise ValueError("max_requests must be >= 1 and ttl_seconds > 0")
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
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self.kinds: dict[str, str] = preset  # metric -> "bool" | "number"
        self.counters: dict[tuple[str, str, str], MetricCounters] = {}
        self._segments: set[str] = set()
        self.evicted = 0
        self.expired = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._served)

    def remember(
        self, request_id: str, variant: str, segment: str, now: float, epoch: int = -1
    ) -> None:
        """Remember what served `request_id` (request path: one insert, maybe one eviction).

        `epoch` is the experiment epoch of the weighted split that routed it; -1 when the
        request is not part of the experiment."""
        self._served[request_id] = _Served(variant, segment, now, epoch)
        if len(self._served) > self.max_requests:
            self._served.popitem(last=False)
            self.evicted += 1

    def _expire(self, now: float) -> None:
        while self._served:
            oldest = next(iter(self._served.values()))
            if now - oldest.at <= self.ttl:
                return
            self._served.popitem(last=False)
            self.expired += 1

    def report(self, request_id: str, metric: str, value: bool | float, now: float) -> Attribution:
        """Count `value` for the request's variant and segment, once per (request, metric).

        Raises UnknownRequest (never seen, expired or evicted) and WrongValueType (a metric
        is boolean or numeric, preset from configuration or fixed by its first report; a
        numeric value must be finite). A repeated report returns `counted=False` and
        changes nothing."""
        if not metric.strip():
            raise WrongValueType("metric: must not be empty")
        self._expire(now)
        served = self._served.get(request_id)
        if served is None:
            raise UnknownRequest(
                f"request_id: {request_id!r} is unknown or expired (kept {self.ttl:g} s, "
                f"at most {self.max_requests} requests)"
            )
        kind = "bool" if isinstance(value, bool) else "number"
        if kind == "number" and not math.isfinite(value):
            raise WrongValueType(f"value: metric {metric!r} needs a finite number, got {value!r}")
        known = self.kinds.get(metric)
        if known is None:
            if len(self.kinds) >= MAX_METRICS:
                raise WrongValueType(f"metric: at most {MAX_METRICS} metrics are tracked")
            self.kinds[metric] = kind
        elif known != kind:
            raise WrongValueType(f"value: metric {metric!r} is {known}, got a {kind} value")
        if served.reported is None:
            served.reported = set()
        elif metric in served.reported:
            self.duplicates += 1
            return Attribution(
                request_id, served.variant, served.segment, counted=False, epoch=served.epoch
            )
        served.reported.add(metric)
        segment = served.segment
        if segment not in self._segments:
            if len(self._segments) >= MAX_SEGMENTS:
                segment = "*"
            else:
                self._segments.add(segment)
        c = self.counters.setdefault((metric, served.variant, segment), MetricCounters())
        c.n += 1
        if kind == "bool":
            c.successes += int(value)
        else:
            x = float(value)
            c.total += x
            c.total_sq += x * x
        return Attribution(
            request_id, served.variant, served.segment, counted=True, epoch=served.epoch
        )

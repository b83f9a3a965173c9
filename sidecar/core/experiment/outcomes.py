"""Outcome attribution: which variant and segment served a request, and what the app
later reported about it.

`OutcomeLedger.remember` is called on the request path (one dict insert; the oldest
entry is evicted when `max_requests` is reached); `report` attributes a metric value to
the remembered variant and segment. Memory is bounded: at most `max_requests` remembered
requests, each expiring after `ttl_seconds` (expired and evicted ones are counted), and
counters per (metric, variant, segment), never lists of results. The caller passes `now`.
"""

from __future__ import annotations

from collections import OrderedDict
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


@dataclass(slots=True)
class _Served:
    variant: str
    segment: str
    at: float
    reported: set[str] | None = None


MAX_METRICS = 64
MAX_SEGMENTS = 64


class OutcomeLedger:
    def __init__(self, max_requests: int = 200_000, ttl_seconds: float = 3600.0) -> None:
        if max_requests < 1 or ttl_seconds <= 0:
            raise ValueError("max_requests must be >= 1 and ttl_seconds > 0")
        self.max_requests = max_requests
        self.ttl = ttl_seconds
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self.kinds: dict[str, str] = {}  # metric -> "bool" | "number"
        self.counters: dict[tuple[str, str, str], MetricCounters] = {}
        self._segments: set[str] = set()
        self.evicted = 0
        self.expired = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._served)

    def remember(self, request_id: str, variant: str, segment: str, now: float) -> None:
        self._served[request_id] = _Served(variant, segment, now)
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

        Raises UnknownRequest (never seen, expired or evicted), WrongValueType (a metric
        is boolean or numeric, fixed by its first report), DuplicateOutcome (already
        counted; nothing changes)."""
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
            return Attribution(request_id, served.variant, served.segment, counted=False)
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
        return Attribution(request_id, served.variant, served.segment, counted=True)

"""Prometheus metrics (prometheus-client), on their own listen address.

Request metrics are fed by the span processor (one sink call per finished server span);
upstream and shadow call latencies by the upstream adapter (`observe_upstream`,
`observe_shadow`); shadow, state and rollout metrics are read at scrape time from the
sidecar's own summaries, so they cost nothing on the request path.

Conventions: every series carries the routed `model` it is about (the name apps call;
variant names such as `stable` repeat across models), and every series that names a
variant also carries its `model_version` (the configured one; variant names swap roles
after a promote, versions do not). The request
and error counters of every configured variant exist at zero from start-up (so `rate()`
and absent-series alerts work before the first request or error). `sidecar_build_info`
carries the version; the standard `process_*` and `python_info` series come from
prometheus-client's process and platform collectors.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True)
class Readings:
    """What the scrape-time collector reads (callables returning current values)."""

    shadow: Callable[[], Any | None] = lambda: None  # a ShadowSummary or None
    state: Callable[[], Mapping[str, Any]] = lambda: {}
    rollout: Callable[[], Mapping[str, Any]] = lambda: {}
    verdicts: Callable[[], Mapping[str, int]] = lambda: {}
    experiment: Callable[[], Mapping[str, Any]] = lambda: {}
    drift: Callable[[], Mapping[str, str]] = lambda: {}  # drifted series -> level
    outcomes: Callable[[], Mapping[str, int]] = lambda: {}  # OutcomeLedger.stats()
    extra: dict[str, Any] = field(default_factory=dict)


class _ScrapeCollector(Collector):
    """The scrape-time series of every routed model, each sample labelled with its
    `model` (one family per metric name, whatever the number of models)."""

    def __init__(self, readings: Mapping[str, Readings]) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {}
        for model, readings in self.readings.items():
            _Samples(families, model, readings).add()
        yield from families.values()


def _family(kind: type[Any], name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
    return kind(name, doc, labels=["model", *labels])


class _Samples:
    """Adds one routed model's scrape-time samples to the shared families."""

    def __init__(self, families: dict[str, Any], model: str, readings: Readings) -> None:
        self.families = families
        self.model = model
        self.readings = readings

    def put(
        self, kind: type[Any], name: str, doc: str, labels: tuple[str, ...] = ()
    ) -> Callable[[list[str], float], None]:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = _family(kind, name, doc, labels)
        model = self.model
        return lambda values, value: family.add_metric([model, *values], value)

    def add(self) -> None:
        self._shadow()
        self._state()
        self._rollout()
        verdicts = self.put(
            CounterMetricFamily, "sidecar_canary_verdicts", "Health checker verdicts", ("verdict",)
        )
        for verdict, count in self.readings.verdicts().items():
            verdicts([verdict], count)
        self._experiment()
        drifted = self.put(
            GaugeMetricFamily, "sidecar_drift_series",
            "Series drifted beyond a threshold (1 = at this level)", ("series", "level"),
        )  # fmt: skip
        for series, level in self.readings.drift().items():
            drifted([series, level], 1)
        self._outcomes()

    def _shadow(self) -> None:
        summary = self.readings.shadow()
        if summary is None:
            return
        compared = self.put(
            CounterMetricFamily, "sidecar_shadow_comparisons", "Shadow answers compared",
            ("result",),
        )  # fmt: skip
        compared(["agree"], summary.agreed)
        compared(["disagree"], summary.compared - summary.agreed)
        self.put(
            CounterMetricFamily, "sidecar_shadow_dropped",
            "Shadow copies dropped at the in-flight bound",
        )([], summary.dropped)  # fmt: skip
        errors = self.put(
            CounterMetricFamily, "sidecar_shadow_errors", "Shadow calls that failed", ("status",)
        )
        for status, count in summary.errors_by_status.items():
            errors([status], count)
        rate = summary.agreement_rate if summary.agreement_rate is not None else 0
        self.put(GaugeMetricFamily, "sidecar_shadow_agreement_ratio", "Shadow agreement rate")(
            [], rate
        )

    def _state(self) -> None:
        state = self.readings.state()
        if not state:
            return
        self.put(GaugeMetricFamily, "sidecar_state_revision", "Routing state revision")(
            [], state.get("revision", 0)
        )
        self.put(GaugeMetricFamily, "sidecar_kill_switch", "1 when the kill switch is on")(
            [], 1 if state.get("kill_switch") else 0
        )
        weights = self.put(
            GaugeMetricFamily, "sidecar_variant_weight_ratio", "Configured traffic share",
            ("variant",),
        )  # fmt: skip
        for variant, bp in state.get("weights", {}).items():
            weights([variant], bp / 10_000)

    def _rollout(self) -> None:
        rollout = self.readings.rollout()
        if not rollout:
            return
        stage = str(rollout.get("stage", ""))
        self.put(
            GaugeMetricFamily, "sidecar_rollout_stage", "Current rollout stage (1 = active)",
            ("stage", "phase"),
        )([stage, str(rollout.get("phase", ""))], 1)  # fmt: skip
        self.put(
            GaugeMetricFamily,
            "sidecar_rollout_progress_deadline_exceeded",
            "1 when the running stage is past its progress deadline with a gate still waiting",
            ("stage",),
        )([stage], 1 if rollout.get("deadline_exceeded") else 0)

    def _experiment(self) -> None:
        experiment = self.readings.experiment()
        if not experiment:
            return
        self.put(
            GaugeMetricFamily, "sidecar_experiment_sample_ratio_mismatch",
            "1 when the last look found a sample ratio mismatch (verdicts blocked)",
        )([], 1 if experiment.get("srm_mismatch") else 0)  # fmt: skip
        verdict = self.put(
            GaugeMetricFamily, "sidecar_experiment_verdict",
            "Current verdict per metric (1 = in force)", ("metric", "verdict"),
        )  # fmt: skip
        p_value = self.put(
            GaugeMetricFamily, "sidecar_experiment_p_value", "Always-valid p-value per metric",
            ("metric",),
        )  # fmt: skip
        for metric, (name, p) in experiment.get("metrics", {}).items():
            verdict([metric, name], 1)
            p_value([metric], p)

    def _outcomes(self) -> None:
        stats = self.readings.outcomes()
        if not stats:
            return
        reports = self.put(
            CounterMetricFamily, "sidecar_outcome_reports",
            "ReportOutcome calls by result (capped: over the targeting key's cap, not counted)",
            ("result",),
        )  # fmt: skip
        for result in ("counted", "duplicates", "capped"):
            reports([result], stats.get(result, 0))
        for key, value in stats.items():
            if key.startswith("refused_"):
                reports([key], value)
        self.put(
            CounterMetricFamily, "sidecar_experiment_assignments_capped",
            "Split-routed requests left out of the experiment: their key's share was full",
        )([], stats.get("capped_assignments", 0))  # fmt: skip
        held = self.put(
            GaugeMetricFamily, "sidecar_outcome_ledger_entries",
            "Entries held: remembered requests, per-key outcome tallies", ("table",),
        )  # fmt: skip
        held(["requests"], stats.get("remembered", 0))
        held(["key_tallies"], stats.get("tracked_keys", 0))


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sum += value


class _Light(Collector):
    """A labelled instrument on the request path, exposed like prometheus_client's (same
    names, labels and buckets; no `_created` series). prometheus_client's `inc` and
    `observe` take a lock each and walk the buckets in Python; here a child's update is
    one addition (a histogram's bucket found by `bisect`), measured with callgrind at
    29,000 instructions a request for the request and upstream metrics before, in
    bench/README.md. Only the event loop's thread updates them (every sink runs there); a
    scrape, on the HTTP server's thread, reads values at most one update old."""

    family: Any

    def __init__(
        self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def describe(self) -> list[Metric]:
        return [self.family(self.name, self.documentation, labels=self.labelnames)]

    def _child(self, values: tuple[str, ...], make: Callable[[], Any]) -> Any:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
            child = self._children[values] = make()
        return child


class LightCounter(_Light):
    family = CounterMetricFamily

    def labels(self, *values: str) -> _Count:
        child: _Count = self._child(values, _Count)
        return child

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        yield family


class LightHistogram(_Light):
    family = HistogramMetricFamily

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: list[str],
        *,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str) -> _Buckets:
        child: _Buckets = self._child(values, lambda: _Buckets(self.bounds))
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            total, buckets = 0, []
            for le, count in zip(self._les, list(child.counts), strict=True):
                total += count
                buckets.append((le, float(total)))
            family.add_metric(list(values), buckets, child.sum)
        yield family


class ModelMetrics:
    """One routed model's request and call metrics: the span-processor sink `record`
    and the upstream adapter's `observe_upstream` / `observe_shadow`, every series
    labelled with the routed `model` (variant names repeat across models)."""

    def __init__(self, parent: SidecarMetrics, model: str, versions: Mapping[str, str]) -> None:
        self.parent = parent
        self.model = model
        self.versions = dict(versions)
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._call_children: dict[tuple[int, str, str], Any] = {}
        for variant, version in self.versions.items():
            parent.requests.labels(model, variant, version, "OK")
            parent.errors.labels(model, variant, version)
            parent.latency.labels(model, variant, version)

    def record(self, variant: str, end: float, duration: float, status: str) -> None:
        """Span-processor sink: constant time, label children cached."""
        key = (variant, status)
        children = self._children.get(key)
        if children is None:
            version, p, m = self.versions.get(variant, ""), self.parent, self.model
            children = (
                p.requests.labels(m, variant, version, status),
                p.errors.labels(m, variant, version) if status != "OK" else None,
                p.latency.labels(m, variant, version),
            )
            self._children[key] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(duration)

    def observe_upstream(self, variant: str, duration: float, status: str) -> None:
        """A served call to the model server ended (constant time)."""
        self._observe(0, variant, duration, status)

    def observe_shadow(self, variant: str, duration: float, status: str) -> None:
        """A mirrored call ended (constant time)."""
        self._observe(1, variant, duration, status)

    def _observe(self, which: int, variant: str, duration: float, status: str) -> None:
        key = (which, variant, status)
        child = self._call_children.get(key)
        if child is None:
            histogram = self.parent.shadow_latency if which else self.parent.upstream_latency
            child = histogram.labels(self.model, variant, self.versions.get(variant, ""), status)
            self._call_children[key] = child
        child.observe(duration)


class SidecarMetrics:
    """Request metrics (fed by the span processor through each routed model's
    `ModelMetrics.record`) and, once `bind` gave them their `Readings` (per routed
    model), the scrape-time ones. `record` / `observe_*` here are the first model's
    (`model`, `versions`); `add_model` adds another."""

    def __init__(
        self,
        readings: Readings | None = None,
        *,
        versions: Mapping[str, str] | None = None,
        model: str = "",
    ) -> None:
        """`versions`: each configured variant's model version (its counters start at 0)."""
        self.registry = CollectorRegistry()
        self.requests = LightCounter(
            "sidecar_requests",
            "Requests served, by routed model, variant, model version and gRPC status",
            ["model", "variant", "model_version", "status"], registry=self.registry,
        )  # fmt: skip
        self.errors = LightCounter(
            "sidecar_request_errors",
            "Requests that ended in an error status (by status: sidecar_requests_total)",
            ["model", "variant", "model_version"], registry=self.registry,
        )  # fmt: skip
        self.latency = LightHistogram(
            "sidecar_request_duration_seconds", "Request latency at the sidecar, by variant",
            ["model", "variant", "model_version"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.upstream_latency = LightHistogram(
            "sidecar_upstream_duration_seconds",
            "Latency of the served call to the model server, by variant and status",
            ["model", "variant", "model_version", "status"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.shadow_latency = LightHistogram(
            "sidecar_shadow_duration_seconds",
            "Latency of mirrored calls (shadow and noise mirrors), by variant and status",
            ["model", "variant", "model_version", "status"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        build = Gauge(
            "sidecar_build_info", "Always 1; the labels say what is running",
            ["version", "python_version", "grpc_version"], registry=self.registry,
        )  # fmt: skip
        from sidecar import __version__

        build.labels(__version__, platform.python_version(), grpc.__version__).set(1)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.readings: Mapping[str, Readings] | None = None
        self.models: dict[str, ModelMetrics] = {}
        self.primary = self.add_model(model, versions or {})
        if readings is not None:
            self.bind(readings)
        self.port = 0

    def add_model(self, model: str, versions: Mapping[str, str]) -> ModelMetrics:
        """The metrics of routed model `model` (its variants' counters start at 0)."""
        if model in self.models:
            raise ValueError(f"model {model!r} has its metrics already")
        self.models[model] = ModelMetrics(self, model, versions)
        return self.models[model]

    def bind(self, readings: Readings | Mapping[str, Readings]) -> None:
        """Register the scrape-time readings (a bare `Readings`: the first model's); once,
        when the parts they read are built (the request metrics feed the statistics those
        parts are built from)."""
        if self.readings is not None:
            raise RuntimeError("SidecarMetrics readings are already bound")
        if isinstance(readings, Readings):
            readings = {self.primary.model: readings}
        self.readings = dict(readings)
        self.registry.register(_ScrapeCollector(self.readings))

    def record(self, variant: str, end: float, duration: float, status: str) -> None:
        self.primary.record(variant, end, duration, status)

    def observe_upstream(self, variant: str, duration: float, status: str) -> None:
        self.primary.observe_upstream(variant, duration, status)

    def observe_shadow(self, variant: str, duration: float, status: str) -> None:
        self.primary.observe_shadow(variant, duration, status)

    def serve(self, address: str) -> int:
        """Expose /metrics on host:port (port 0 allowed); returns the bound port."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self.port = int(server.server_address[1])
        self._server = server
        return self.port

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()

"""Prometheus metrics (prometheus-client), on their own listen address.

Request metrics are fed by the span processor (one sink call per finished server span);
upstream and shadow call latencies by the upstream adapter (`observe_upstream`,
`observe_shadow`); shadow, state and rollout metrics are read at scrape time from the
sidecar's own summaries, so they cost nothing on the request path.

Conventions: every series that names a variant also carries its `model_version` (the
configured one; variant names swap roles after a promote, versions do not). The request
and error counters of every configured variant exist at zero from start-up (so `rate()`
and absent-series alerts work before the first request or error). `sidecar_build_info`
carries the version; the standard `process_*` and `python_info` series come from
prometheus-client's process and platform collectors.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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
    def __init__(self, readings: Readings) -> None:
        self.readings = readings

    def collect(self) -> Iterator[Metric]:
        summary = self.readings.shadow()
        if summary is not None:
            compared = CounterMetricFamily(
                "sidecar_shadow_comparisons", "Shadow answers compared", labels=["result"]
            )
            compared.add_metric(["agree"], summary.agreed)
            compared.add_metric(["disagree"], summary.compared - summary.agreed)
            yield compared
            dropped = CounterMetricFamily(
                "sidecar_shadow_dropped", "Shadow copies dropped at the in-flight bound"
            )
            dropped.add_metric([], summary.dropped)
            yield dropped
            errors = CounterMetricFamily(
                "sidecar_shadow_errors", "Shadow calls that failed", labels=["status"]
            )
            for status, count in summary.errors_by_status.items():
                errors.add_metric([status], count)
            yield errors
            rate = GaugeMetricFamily("sidecar_shadow_agreement_ratio", "Shadow agreement rate")
            rate.add_metric([], summary.agreement_rate if summary.agreement_rate is not None else 0)
            yield rate
        state = self.readings.state()
        if state:
            revision = GaugeMetricFamily("sidecar_state_revision", "Routing state revision")
            revision.add_metric([], state.get("revision", 0))
            yield revision
            kill = GaugeMetricFamily("sidecar_kill_switch", "1 when the kill switch is on")
            kill.add_metric([], 1 if state.get("kill_switch") else 0)
            yield kill
            weights = GaugeMetricFamily(
                "sidecar_variant_weight_ratio", "Configured traffic share", labels=["variant"]
            )
            for variant, bp in state.get("weights", {}).items():
                weights.add_metric([variant], bp / 10_000)
            yield weights
        rollout = self.readings.rollout()
        if rollout:
            stage = GaugeMetricFamily(
                "sidecar_rollout_stage", "Current rollout stage (1 = active)",
                labels=["stage", "phase"],
            )  # fmt: skip
            stage.add_metric([str(rollout.get("stage", "")), str(rollout.get("phase", ""))], 1)
            yield stage
            stalled = GaugeMetricFamily(
                "sidecar_rollout_progress_deadline_exceeded",
                "1 when the running stage is past its progress deadline with a gate still waiting",
                labels=["stage"],
            )
            stalled.add_metric(
                [str(rollout.get("stage", ""))], 1 if rollout.get("deadline_exceeded") else 0
            )
            yield stalled
        verdicts = CounterMetricFamily(
            "sidecar_canary_verdicts", "Health checker verdicts", labels=["verdict"]
        )
        for verdict, count in self.readings.verdicts().items():
            verdicts.add_metric([verdict], count)
        yield verdicts
        yield from self._experiment()

    def _experiment(self) -> Iterator[Metric]:
        experiment = self.readings.experiment()
        if experiment:
            srm = GaugeMetricFamily(
                "sidecar_experiment_sample_ratio_mismatch",
                "1 when the last look found a sample ratio mismatch (verdicts blocked)",
            )
            srm.add_metric([], 1 if experiment.get("srm_mismatch") else 0)
            yield srm
            verdict = GaugeMetricFamily(
                "sidecar_experiment_verdict", "Current verdict per metric (1 = in force)",
                labels=["metric", "verdict"],
            )  # fmt: skip
            p_value = GaugeMetricFamily(
                "sidecar_experiment_p_value", "Always-valid p-value per metric", labels=["metric"]
            )
            for metric, (name, p) in experiment.get("metrics", {}).items():
                verdict.add_metric([metric, name], 1)
                p_value.add_metric([metric], p)
            yield verdict
            yield p_value
        drifted = GaugeMetricFamily(
            "sidecar_drift_series", "Series drifted beyond a threshold (1 = at this level)",
            labels=["series", "level"],
        )  # fmt: skip
        for series, level in self.readings.drift().items():
            drifted.add_metric([series, level], 1)
        yield drifted
        yield from self._outcomes()

    def _outcomes(self) -> Iterator[Metric]:
        stats = self.readings.outcomes()
        if not stats:
            return
        reports = CounterMetricFamily(
            "sidecar_outcome_reports",
            "ReportOutcome calls by result (capped: over the targeting key's cap, not counted)",
            labels=["result"],
        )
        for result in ("counted", "duplicates", "capped"):
            reports.add_metric([result], stats.get(result, 0))
        for key, value in stats.items():
            if key.startswith("refused_"):
                reports.add_metric([key], value)
        yield reports
        assignments = CounterMetricFamily(
            "sidecar_experiment_assignments_capped",
            "Split-routed requests left out of the experiment: their key's share was full",
        )
        assignments.add_metric([], stats.get("capped_assignments", 0))
        yield assignments
        held = GaugeMetricFamily(
            "sidecar_outcome_ledger_entries",
            "Entries held: remembered requests, per-key outcome tallies",
            labels=["table"],
        )
        held.add_metric(["requests"], stats.get("remembered", 0))
        held.add_metric(["key_tallies"], stats.get("tracked_keys", 0))
        yield held


class SidecarMetrics:
    """Request metrics (fed by the span processor through `record`) and, once `bind` gave
    them their `Readings`, the scrape-time ones."""

    def __init__(
        self, readings: Readings | None = None, *, versions: Mapping[str, str] | None = None
    ) -> None:
        """`versions`: each configured variant's model version (its counters start at 0)."""
        self.registry = CollectorRegistry()
        self.versions = dict(versions or {})
        self.requests = Counter(
            "sidecar_requests", "Requests served, by variant, model version and gRPC status",
            ["variant", "model_version", "status"], registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "sidecar_request_errors",
            "Requests that ended in an error status (by status: sidecar_requests_total)",
            ["variant", "model_version"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "sidecar_request_duration_seconds", "Request latency at the sidecar, by variant",
            ["variant", "model_version"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.upstream_latency = Histogram(
            "sidecar_upstream_duration_seconds",
            "Latency of the served call to the model server, by variant and status",
            ["variant", "model_version", "status"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.shadow_latency = Histogram(
            "sidecar_shadow_duration_seconds",
            "Latency of mirrored calls (shadow and noise mirrors), by variant and status",
            ["variant", "model_version", "status"], buckets=LATENCY_BUCKETS,
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
        self.readings: Readings | None = None
        if readings is not None:
            self.bind(readings)
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._call_children: dict[tuple[int, str, str], Any] = {}
        for variant, version in self.versions.items():
            self.requests.labels(variant, version, "OK")
            self.errors.labels(variant, version)
            self.latency.labels(variant, version)
        self.port = 0

    def bind(self, readings: Readings) -> None:
        """Register the scrape-time readings; once, when the parts they read are built
        (the request metrics feed the statistics those parts are built from)."""
        if self.readings is not None:
            raise RuntimeError("SidecarMetrics readings are already bound")
        self.readings = readings
        self.registry.register(_ScrapeCollector(readings))

    def record(self, variant: str, end: float, duration: float, status: str) -> None:
        """Span-processor sink: constant time, label children cached."""
        key = (variant, status)
        children = self._children.get(key)
        if children is None:
            version = self.versions.get(variant, "")
            children = (
                self.requests.labels(variant, version, status),
                self.errors.labels(variant, version) if status != "OK" else None,
                self.latency.labels(variant, version),
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
            histogram = self.shadow_latency if which else self.upstream_latency
            child = histogram.labels(variant, self.versions.get(variant, ""), status)
            self._call_children[key] = child
        child.observe(duration)

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

"""Span processors that turn finished spans into the numbers the sidecar acts on.

`VariantStatsProcessor.on_end` reads each finished SERVER span's flag decision (variant),
duration and gRPC status and hands them to a sink (the rolling window statistics behind
the health checker, and the Prometheus metrics). With several routed models each model
has its own sinks (`models`), chosen by the span's routed model (`sidecar.routed_model`,
set by the data plane with the flag decision), so one model's requests never reach
another's windows or series. It runs on the request's thread at span
end, so it only does constant-time arithmetic; it never blocks and never raises
(OpenTelemetry's `SpanProcessor.on_end` contract). Failures are counted and logged once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import structlog
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from sidecar.adapters.telemetry import spans

log = structlog.get_logger("sidecar.telemetry")

# (variant, end time in seconds since the epoch, duration in seconds, gRPC status name)
Sink = Callable[[str, float, float, str], None]


class VariantStatsProcessor(SpanProcessor):
    """`sinks` get every finished SERVER span; `models[name]` only the spans of routed
    model `name` (a span of a model not listed reaches only `sinks`)."""

    def __init__(
        self, sinks: Sequence[Sink], models: Mapping[str, Sequence[Sink]] | None = None
    ) -> None:
        self.sinks = list(sinks)
        self.models = {name: list(each) for name, each in (models or {}).items()}
        self.failures = 0
        self.recorded = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind is not SpanKind.SERVER or span.start_time is None or span.end_time is None:
            return
        self.record_span(span.attributes or {}, span.start_time, span.end_time)

    def record_span(self, attributes: Mapping[str, object], start_ns: int, end_ns: int) -> None:
        """A finished SERVER span's numbers to the sinks (also called directly by the
        never-exported `spans.StatsSpan`). Never raises."""
        try:
            variant = attributes.get(spans.FLAG_VARIANT)
            if not isinstance(variant, str):
                return
            code = attributes.get(spans.RPC_STATUS, 0)
            status = (
                spans.STATUS_NAMES[code] if isinstance(code, int) and 0 <= code < 17 else "UNKNOWN"
            )
            model = attributes.get(spans.ROUTED_MODEL)
            self.record(
                model if isinstance(model, str) else None,
                variant,
                end_ns / 1e9,
                (end_ns - start_ns) / 1e9,
                status,
            )
        except Exception:  # never raise into the request path
            self._failed()

    def record(
        self, model: str | None, variant: str, end: float, duration: float, status: str
    ) -> None:
        """One finished request of routed `model` (None: no model's sinks) served by
        `variant` to the sinks: what `record_span` reads off a span, handed over directly
        by the front door when nothing is exported. Never raises."""
        try:
            for sink in self.sinks:
                sink(variant, end, duration, status)
            for sink in self.models.get(model, ()) if model is not None else ():
                sink(variant, end, duration, status)
            self.recorded += 1
        except Exception:  # never raise into the request path
            self._failed()

    def _failed(self) -> None:
        self.failures += 1
        if self.failures == 1:
            log.exception("telemetry.processor_failed")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

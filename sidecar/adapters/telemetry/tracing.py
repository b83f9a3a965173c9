"""Tracer provider for the sidecar: every request is a span; spans feed the statistics.

- Sampling: the sampler configured with the standard `OTEL_TRACES_SAMPLER` /
  `OTEL_TRACES_SAMPLER_ARG` variables (default parent-based always-on) decides what is
  exported; spans it would drop are still recorded (RECORD_ONLY), so the window
  statistics behind the health checker see every request.
- Export: OTLP over gRPC, or over HTTP when `OTEL_EXPORTER_OTLP_PROTOCOL` (or
  `..._TRACES_PROTOCOL`) is `http/protobuf` (`BatchSpanProcessor` + `OTLPSpanExporter`), when
  `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and
  `OTEL_TRACES_EXPORTER` is not `none`; the exporter reads its other standard
  `OTEL_EXPORTER_OTLP_*` variables (headers, timeout, insecure) itself.
- A provider per sidecar instance, never the global one.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from sidecar import __version__
from sidecar.config import TelemetryConfig

INSTRUMENTATION = "rollout-sidecar"


class RecordEverything(Sampler):
    """Delegates the export decision; turns DROP into RECORD_ONLY so spans still end in
    the span processors (statistics) without being exported."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP:
            return SamplingResult(Decision.RECORD_ONLY, result.attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"RecordEverything({self.delegate.get_description()})"


def tracer_provider(
    telemetry: TelemetryConfig, processors: Sequence[SpanProcessor] = ()
) -> TracerProvider:
    env_sampler = TracerProvider().sampler  # what OTEL_TRACES_SAMPLER asks for
    resource = Resource.create(
        {"service.name": telemetry.service_name, "service.version": __version__}
    )
    provider = TracerProvider(sampler=RecordEverything(env_sampler), resource=resource)
    for processor in processors:
        provider.add_span_processor(processor)
    if telemetry.export:
        provider.add_span_processor(BatchSpanProcessor(_exporter(telemetry.protocol)))
    return provider


def _exporter(protocol: str) -> SpanExporter:
    """The OTLP exporter for `protocol`; each reads its own `OTEL_EXPORTER_OTLP_*`."""
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()

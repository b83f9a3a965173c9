"""Span names and attributes (OpenTelemetry RPC and feature-flag semantic conventions).

Server span per Predict / ModelInfer call, named ``{package.Service}/{Method}``, with
``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` and the flag
decision as ``feature_flag.key``, ``feature_flag.result.variant``,
``feature_flag.result.reason``, ``feature_flag.provider.name``, the routed model
(``sidecar.routed_model``: the name apps call), plus the model that
answered (``sidecar.model.name``, ``sidecar.model.version``) and ``sidecar.request_id``.
A model not routed here (pass-through) has the model and ``sidecar.passthrough`` only: no
flag decision, so no statistics count it. Health RPCs are not traced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context, propagate, trace
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    NoOpTracer,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)
from opentelemetry.util.types import AttributeValue

from sidecar.app.attributes import FLAG_KEY as FLAG_KEY
from sidecar.app.attributes import FLAG_PROVIDER as FLAG_PROVIDER
from sidecar.app.attributes import FLAG_REASON as FLAG_REASON
from sidecar.app.attributes import FLAG_VARIANT as FLAG_VARIANT
from sidecar.app.attributes import PROVIDER as PROVIDER
from sidecar.app.attributes import REQUEST_ID as REQUEST_ID
from sidecar.app.attributes import ROUTED_MODEL as ROUTED_MODEL
from sidecar.app.attributes import SHADOW as SHADOW

RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_STATUS = "rpc.grpc.status_code"
MODEL_NAME = "sidecar.model.name"
MODEL_VERSION = "sidecar.model.version"
VARIANT = "sidecar.variant"
SEGMENT = "sidecar.segment"
PASSTHROUGH = "sidecar.passthrough"  # true: a model not routed here, sent on unchanged

# grpc.StatusCode values, without importing grpc here.
STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
STATUS_CODES = {name: code for code, name in enumerate(STATUS_NAMES)}


class _MetadataGetter:
    """Reads W3C trace context from gRPC invocation metadata."""

    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if value is not None else None

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _MetadataGetter()


class StatsSpan(Span):
    """A SERVER span that is never exported (no exporter configured): its attributes in a
    dict and, at `end`, its numbers handed straight to the statistics (what
    `VariantStatsProcessor.on_end` does with an SDK span), without the SDK's span
    machinery (ids, sampler, attribute cleaning, processors), which cost more than the
    rest of the request path. The caller's W3C trace context is forwarded to the upstream
    as it came (`inject`), so the caller's trace still reaches the model server."""

    __slots__ = ("_carrier", "_context", "_record", "_start", "attributes")

    def __init__(
        self, record: Callable[[Mapping[str, object], int, int], None], carrier: dict[str, str]
    ) -> None:
        self._record = record
        self._carrier = carrier
        self._context: SpanContext | None = None
        self._start = time.time_ns()
        self.attributes: dict[str, object] = {}

    def end(self, end_time: int | None = None) -> None:
        self._record(self.attributes, self._start, end_time or time.time_ns())

    def get_span_context(self) -> SpanContext:
        """The caller's span context (when it sent one): this span has no id of its own."""
        if self._context is None:
            parent = (
                trace.get_current_span(propagate.extract(self._carrier, getter=_GETTER))  # type: ignore[arg-type]
                if self._carrier
                else None
            )
            self._context = parent.get_span_context() if parent else INVALID_SPAN_CONTEXT
        return self._context

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, attributes: object = None, timestamp: int | None = None) -> None:
        return None

    def update_name(self, name: str) -> None:
        return None

    def is_recording(self) -> bool:
        return True

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        return None

    def record_exception(
        self,
        exception: BaseException,
        attributes: object = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        return None


# A finished request with no span: (routed model, variant, end in seconds since the epoch,
# duration in seconds, gRPC status name); `VariantStatsProcessor.record`.
Finished = Callable[[str | None, str, float, float, str], None]


class StatsTracer(NoOpTracer):
    """The SERVER-span tracer when nothing is exported: `server_span` makes `StatsSpan`s
    that feed `record` (`VariantStatsProcessor.record_span`). `finished`, when given, takes
    a finished request's numbers with no span at all (`VariantStatsProcessor.record`: the
    Open Inference Protocol front door's path)."""

    def __init__(
        self,
        record: Callable[[Mapping[str, object], int, int], None],
        finished: Finished | None = None,
    ) -> None:
        self.record = record
        self.finished = finished


TRACE_HEADERS = ("traceparent", "tracestate")


@contextmanager
def server_span(
    tracer: Tracer, service: str, method: str, metadata: Iterable[tuple[str, str | bytes]]
) -> Iterator[Span]:
    """A SERVER span continuing the caller's trace (traceparent / tracestate)."""
    carrier = {
        k: v for k, v in metadata if isinstance(v, str) and k in ("traceparent", "tracestate")
    }
    if isinstance(tracer, StatsTracer):
        light = StatsSpan(tracer.record, carrier)
        light.attributes.update({RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method})
        token = context.attach(trace.set_span_in_context(light))
        try:
            yield light
        finally:
            context.detach(token)
            light.end()
        return
    parent = propagate.extract(carrier, getter=_GETTER) if carrier else None  # type: ignore[arg-type]
    with tracer.start_as_current_span(
        f"{service}/{method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def set_status(span: Span, status_name: str, message: str = "") -> None:
    span.set_attribute(RPC_STATUS, STATUS_CODES.get(status_name, 2))
    if status_name != "OK":
        span.set_status(Status(StatusCode.ERROR, f"{status_name}: {message}"[:256]))


def inject(metadata: list[tuple[str, str]], span: Span | None = None) -> None:
    """Append the W3C trace context of `span` (default: the current span) to metadata; for
    a `StatsSpan`, the caller's own trace context, as it came."""
    if span is None:
        current = trace.get_current_span()
        if isinstance(current, StatsSpan):
            metadata.extend(current._carrier.items())
            return
        if current is INVALID_SPAN:  # no span at all (the front door's stats-only path)
            return
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span else None)
    metadata.extend(carrier.items())

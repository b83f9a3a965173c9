"""Span names and attributes (OpenTelemetry RPC and feature-flag semantic conventions).

Server span per Predict / ModelInfer call, named ``{package.Service}/{Method}``, with
``rpc.system``, ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` and the flag
decision as ``feature_flag.key``, ``feature_flag.result.variant``,
``feature_flag.result.reason``, ``feature_flag.provider.name``, plus the model that
answered (``sidecar.model.name``, ``sidecar.model.version``) and ``sidecar.request_id``.
Health RPCs are not traced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from sidecar.app.attributes import FLAG_KEY as FLAG_KEY
from sidecar.app.attributes import FLAG_PROVIDER as FLAG_PROVIDER
from sidecar.app.attributes import FLAG_REASON as FLAG_REASON
from sidecar.app.attributes import FLAG_VARIANT as FLAG_VARIANT
from sidecar.app.attributes import PROVIDER as PROVIDER
from sidecar.app.attributes import REQUEST_ID as REQUEST_ID
from sidecar.app.attributes import SHADOW as SHADOW

RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_STATUS = "rpc.grpc.status_code"
MODEL_NAME = "sidecar.model.name"
MODEL_VERSION = "sidecar.model.version"
VARIANT = "sidecar.variant"
SEGMENT = "sidecar.segment"

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


@contextmanager
def server_span(
    tracer: Tracer, service: str, method: str, metadata: Iterable[tuple[str, str | bytes]]
) -> Iterator[Span]:
    """A SERVER span continuing the caller's trace (traceparent / tracestate)."""
    carrier = {
        k: v for k, v in metadata if isinstance(v, str) and k in ("traceparent", "tracestate")
    }
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
    """Append the W3C trace context of `span` (default: the current span) to metadata."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span else None)
    metadata.extend(carrier.items())

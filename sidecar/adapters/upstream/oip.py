"""Upstream model servers over the Open Inference Protocol (gRPC).

One long-lived `grpc.aio` channel per distinct address, shared by every variant that
lives there. gRPC failures become `UpstreamError` with the upstream's status and a message
naming the variant, so "which model server failed?" has an answer at the caller; the
address and gRPC's debug string go to the log only (`failures.py`: rate-limited per
variant and status). The upstream's trailing metadata comes back with the answer or the
error, filtered for the app (`trailers.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.adapters.telemetry import spans
from sidecar.adapters.upstream.failures import FailureLog, app_message
from sidecar.adapters.upstream.trailers import Trailers, passed_trailers
from sidecar.adapters.upstream.wire import InferBytes, InferReply, ScanError
from sidecar.app.ports import Metadata
from sidecar.config import VariantSpec
from sidecar.errors import UpstreamError

_SERVICE = "/inference.GRPCInferenceService/"
# (variant, seconds, gRPC status name): a latency histogram's sink, called once per call.
Observe = Callable[[str, float, str], None]


_LOGGED = 2048  # bytes of an upstream's details / debug string in one log line


def _ignore(variant: str, seconds: float, status: str) -> None:
    return None


def _finished_trailers(call: object) -> tuple[tuple[str, str | bytes], ...] | None:
    """A finished call's trailing metadata as gRPC holds it, without a coroutine or a
    copy (the common case is none: `()`); None when this grpc version keeps it elsewhere."""
    try:
        raw = call._cython_call._status.trailing_metadata()  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return raw if isinstance(raw, tuple) else None


class OipUpstream:
    """A variant's model on an upstream server."""

    def __init__(
        self,
        spec: VariantSpec,
        channel: grpc.aio.Channel,
        tracer: Tracer | None = None,
        *,
        client_spans: bool = True,
        observe: Observe = _ignore,
        failures: FailureLog | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._observe = observe
        self._failures = failures if failures is not None else FailureLog()
        self._channel = channel
        self._tracer = tracer or trace.get_tracer(__name__)
        self._client_spans = client_spans
        host, _, port = spec.address.rpartition(":")
        self._span_attributes: dict[str, AttributeValue] = {
            spans.RPC_SYSTEM: "grpc",
            spans.RPC_SERVICE: "inference.GRPCInferenceService",
            spans.RPC_METHOD: "ModelInfer",
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
            spans.VARIANT: spec.name,
            spans.MODEL_NAME: spec.model_name,
            spans.MODEL_VERSION: spec.model_version,
        }
        # bytes in, bytes out: the caller's request is forwarded, the answer parsed lazily
        self._infer = channel.unary_unary(
            _SERVICE + "ModelInfer", request_serializer=None, response_deserializer=None
        )
        self._ready = channel.unary_unary(
            _SERVICE + "ModelReady",
            request_serializer=oip.ModelReadyRequest.SerializeToString,
            response_deserializer=oip.ModelReadyResponse.FromString,
        )
        self._metadata = channel.unary_unary(
            _SERVICE + "ModelMetadata",
            request_serializer=oip.ModelMetadataRequest.SerializeToString,
            response_deserializer=oip.ModelMetadataResponse.FromString,
        )

    def _error(
        self, exc: grpc.aio.AioRpcError, what: str, trailers: Trailers = ()
    ) -> UpstreamError:
        """The failure for the app (variant named, no address) and, rate-limited, for
        the log (address, the upstream's details, gRPC's debug string)."""
        status = exc.code().name
        details = exc.details() or status
        self._failures.failed(
            self.name,
            status,
            call=what,
            address=self.spec.address,
            details=details[:_LOGGED],
            debug=(exc.debug_error_string() or "")[:_LOGGED],
        )
        message = app_message(self.name, status, what, details, self.spec.address)
        return UpstreamError(message, status=status, variant=self.name, trailers=trailers)

    async def infer(self, request: InferBytes, *, timeout: float, metadata: Metadata) -> InferReply:
        """Send `request` as this variant's model (its bytes with this variant's model name
        and version appended where they differ; `request` itself is not changed, so the
        shadow sends the same original). With client spans on, the call is a CLIENT span
        (not made current) whose W3C context the upstream receives; off (no exporter), the
        upstream continues from the current span."""
        data = request.to(self.spec.model_name, self.spec.model_version)
        span = (
            self._tracer.start_span(
                "inference.GRPCInferenceService/ModelInfer",
                kind=SpanKind.CLIENT,
                attributes=self._span_attributes,
            )
            if self._client_spans
            else None
        )
        outgoing = list(metadata)
        spans.inject(outgoing, span)
        started = time.perf_counter()
        call = self._infer(data, timeout=timeout, metadata=outgoing or None)
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as exc:
            error = self._error(exc, "failed", passed_trailers(exc.trailing_metadata()))
            self._observe(self.name, time.perf_counter() - started, error.status)
            if span is not None:
                spans.set_status(span, error.status, error.message)
            raise error from None
        else:
            self._observe(self.name, time.perf_counter() - started, "OK")
            if span is not None:
                spans.set_status(span, "OK")
        finally:
            if span is not None:
                span.end()
        raw = _finished_trailers(call)
        if raw is None:  # another grpc version: the public (allocating) way
            raw = tuple((key, value) for key, value in await call.trailing_metadata())
        reply = InferReply(response, passed_trailers(raw))
        try:
            reply.head  # noqa: B018  (scanned once here: a malformed answer is the upstream's)
        except ScanError as exc:
            self._failures.failed(self.name, "MALFORMED", address=self.spec.address, error=str(exc))
            raise UpstreamError(
                f"variant {self.name!r} answered a malformed message: {exc}",
                status="INTERNAL",
                variant=self.name,
                trailers=reply.trailers,
            ) from None
        return reply

    async def ready(self, *, timeout: float) -> bool:
        try:
            reply: oip.ModelReadyResponse = await self._ready(
                oip.ModelReadyRequest(name=self.spec.model_name, version=self.spec.model_version),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)

    def observed_by(self, observe: Observe) -> OipUpstream:
        """The same model on the same channel, its call latencies sent to `observe` (the
        mirrors' calls go to the shadow histogram, not the served one)."""
        return OipUpstream(
            self.spec, self._channel, self._tracer, client_spans=self._client_spans,
            observe=observe, failures=self._failures,
        )  # fmt: skip

    async def metadata(self, *, timeout: float) -> oip.ModelMetadataResponse:
        try:
            reply: oip.ModelMetadataResponse = await self._metadata(
                oip.ModelMetadataRequest(
                    name=self.spec.model_name, version=self.spec.model_version
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "metadata failed") from None
        return reply


class UpstreamPool:
    """Channels per address and an `OipUpstream` per variant. `channels` (address ->
    channel) may be shared by the pools of several routed models: each address gets one
    channel, closed by the pool that opened it."""

    def __init__(
        self,
        variants: Mapping[str, VariantSpec],
        max_message_bytes: int,
        tracer: Tracer | None = None,
        *,
        client_spans: bool = True,
        observe: Observe = _ignore,
        channels: dict[str, grpc.aio.Channel] | None = None,
    ) -> None:
        self._options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        self.channels: dict[str, grpc.aio.Channel] = {} if channels is None else channels
        self._opened: list[grpc.aio.Channel] = []  # closed with this pool (shared ones stay)
        failures = FailureLog()  # one rate limit per (variant, status) for the pool
        for spec in variants.values():
            self.channel(spec.address)
        self.upstreams: dict[str, OipUpstream] = {
            name: OipUpstream(
                spec,
                self.channels[spec.address],
                tracer,
                client_spans=client_spans,
                observe=observe,
                failures=failures,
            )
            for name, spec in variants.items()
        }

    def channel(self, address: str) -> grpc.aio.Channel:
        """The one channel to `address` (opened on first use, closed with the pool)."""
        channel = self.channels.get(address)
        if channel is None:
            channel = self.channels[address] = grpc.aio.insecure_channel(
                address, options=self._options
            )
            self._opened.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._opened:
            await channel.close(None)

"""Upstream model servers over the Open Inference Protocol (gRPC).

One long-lived `grpc.aio` channel per distinct address, shared by every variant that
lives there. gRPC failures become `UpstreamError` with the upstream's status and a message
naming the variant, so "which model server failed?" has an answer at the caller.
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
from sidecar.adapters.upstream.wire import InferBytes, InferReply, ScanError
from sidecar.app.ports import Metadata
from sidecar.config import VariantSpec
from sidecar.errors import UpstreamError

_SERVICE = "/inference.GRPCInferenceService/"
# (variant, seconds, gRPC status name): a latency histogram's sink, called once per call.
Observe = Callable[[str, float, str], None]


def _ignore(variant: str, seconds: float, status: str) -> None:
    return None


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
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self._observe = observe
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

    def _error(self, exc: grpc.aio.AioRpcError, what: str) -> UpstreamError:
        code = exc.code()
        details = exc.details() or code.name
        message = f"variant {self.name!r} ({self.spec.address}) {what}: {details}"
        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"variant {self.name!r} upstream {self.spec.address} unavailable: {details}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"variant {self.name!r} ({self.spec.address}) did not answer in time"
        return UpstreamError(message, status=code.name, variant=self.name)

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
        try:
            response: bytes = await self._infer(data, timeout=timeout, metadata=outgoing or None)
        except grpc.aio.AioRpcError as exc:
            error = self._error(exc, "failed")
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
        reply = InferReply(response)
        try:
            reply.head  # noqa: B018  (scanned once here: a malformed answer is the upstream's)
        except ScanError as exc:
            raise UpstreamError(
                f"variant {self.name!r} ({self.spec.address}) answered a malformed message: {exc}",
                status="INTERNAL",
                variant=self.name,
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
            observe=observe,
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
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        self.channels: dict[str, grpc.aio.Channel] = {} if channels is None else channels
        self._opened: list[grpc.aio.Channel] = []
        for spec in variants.values():
            if spec.address not in self.channels:
                channel = grpc.aio.insecure_channel(spec.address, options=options)
                self.channels[spec.address] = channel
                self._opened.append(channel)
        self.upstreams: dict[str, OipUpstream] = {
            name: OipUpstream(
                spec,
                self.channels[spec.address],
                tracer,
                client_spans=client_spans,
                observe=observe,
            )
            for name, spec in variants.items()
        }

    async def close(self) -> None:
        for channel in self._opened:
            await channel.close(None)

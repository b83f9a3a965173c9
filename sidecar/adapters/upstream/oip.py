"""Upstream model servers over the Open Inference Protocol (gRPC).

One long-lived `grpc.aio` channel per distinct address, shared by every variant that
lives there. gRPC failures become `UpstreamError` with the upstream's status and a message
naming the variant, so "which model server failed?" has an answer at the caller.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.app.ports import Metadata
from sidecar.config import VariantSpec
from sidecar.errors import UpstreamError

_SERVICE = "/inference.GRPCInferenceService/"


class OipUpstream:
    """A variant's model on an upstream server."""

    def __init__(self, spec: VariantSpec, channel: grpc.aio.Channel) -> None:
        self.name = spec.name
        self.spec = spec
        self._infer = channel.unary_unary(
            _SERVICE + "ModelInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
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

    async def infer(
        self, request: oip.ModelInferRequest, *, timeout: float, metadata: Metadata
    ) -> oip.ModelInferResponse:
        """Send `request` as this variant's model (sets model name and version)."""
        request.model_name = self.spec.model_name
        request.model_version = self.spec.model_version
        try:
            response: oip.ModelInferResponse = await self._infer(
                request, timeout=timeout, metadata=metadata or None
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "failed") from None
        return response

    async def ready(self, *, timeout: float) -> bool:
        try:
            reply: oip.ModelReadyResponse = await self._ready(
                oip.ModelReadyRequest(name=self.spec.model_name, version=self.spec.model_version),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)

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
    """Channels per address and an `OipUpstream` per variant."""

    def __init__(self, variants: Mapping[str, VariantSpec], max_message_bytes: int) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        self.channels: dict[str, grpc.aio.Channel] = {}
        for spec in variants.values():
            if spec.address not in self.channels:
                self.channels[spec.address] = grpc.aio.insecure_channel(
                    spec.address, options=options
                )
        self.upstreams: dict[str, OipUpstream] = {
            name: OipUpstream(spec, self.channels[spec.address]) for name, spec in variants.items()
        }

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(None)

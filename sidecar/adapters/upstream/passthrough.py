"""The pass-through upstream: calls for models this sidecar does not route go to one
configured model server (`passthrough:`) unchanged.

Bytes in, bytes out: the caller's request is sent as it came (no model name or version
appended) and the server's answer bytes, status, details and trailers come back as it
sent them. Not routed, so not counted: no flag decision, no variant, no window, no
experiment. Bounded: the caller's deadline capped by `passthrough.max_deadline`, at most
`passthrough.max_in_flight` calls at once (RESOURCE_EXHAUSTED beyond), trailers at most
`MAX_TRAILERS` entries and `MAX_TRAILER_BYTES` bytes (gRPC's own and hop-by-hop names
dropped: `trailers.passed_trailers`). The server's address never reaches the caller:
transport failures (UNAVAILABLE, DEADLINE_EXCEEDED, or details naming the address) are
answered with a message naming the pass-through upstream only; the details go to the
log at debug level.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import grpc
import structlog

from sidecar.adapters.telemetry import spans
from sidecar.adapters.upstream.trailers import (
    MAX_TRAILER_BYTES,
    MAX_TRAILERS,
    TRANSPORT,
    Trailers,
    passed_trailers,
)
from sidecar.config import PassThroughConfig, UpstreamConfig
from sidecar.errors import ErrorCode, SidecarError, UpstreamError

log = structlog.get_logger("sidecar.passthrough")

SERVICE = "inference.GRPCInferenceService"
METHODS = (
    "ModelInfer", "ModelReady", "ModelMetadata",
    "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
)  # fmt: skip
NAME = "the pass-through model server"
__all__ = ["MAX_TRAILERS", "MAX_TRAILER_BYTES", "PassThrough", "PassThroughError", "Relayed"]


class Relayed(NamedTuple):
    """An answer as the pass-through upstream sent it."""

    data: bytes
    trailers: Trailers


class PassThroughError(UpstreamError):
    """The pass-through upstream's failure: its status (passed through) and trailers."""

    def __init__(self, message: str, *, status: str, trailers: Trailers = ()) -> None:
        super().__init__(message, status=status, variant="")
        self.trailers = trailers


def relayed_trailers(metadata: Iterable[Any] | None) -> Trailers:
    """The upstream's trailers an app may see: `passed_trailers` keeping an upstream's
    `x-variant` / `x-request-id` (the sidecar sets none on a pass-through answer)."""
    return passed_trailers(metadata, TRANSPORT)


def _identity(data: bytes) -> bytes:
    return data


class PassThrough:
    """`call(method, bytes)` on the pass-through model server, over one channel."""

    def __init__(
        self, settings: PassThroughConfig, upstream: UpstreamConfig, channel: grpc.aio.Channel
    ) -> None:
        self.address = settings.address
        self.limits = settings.limits(upstream)
        self.max_in_flight = settings.max_in_flight
        self.in_flight = 0
        self._calls = {
            method: channel.unary_unary(
                f"/{SERVICE}/{method}",
                request_serializer=_identity,
                response_deserializer=_identity,
            )
            for method in METHODS
        }

    async def call(self, method: str, data: bytes, *, time_remaining: float | None) -> Relayed:
        """Send `data` (a serialised request of `method`) as it is; the answer's bytes and
        trailers as they came, or `PassThroughError` with the upstream's status."""
        timeout = self.limits.timeout_for(time_remaining)
        if timeout <= 0.0:
            raise SidecarError("deadline already expired", ErrorCode.DEADLINE_EXCEEDED)
        if self.in_flight >= self.max_in_flight:
            raise SidecarError(
                f"{NAME}: {self.in_flight} calls in flight, at most {self.max_in_flight} "
                "(passthrough.max_in_flight); retry later",
                ErrorCode.RESOURCE_EXHAUSTED,
            )
        outgoing: list[tuple[str, str]] = []
        spans.inject(outgoing)  # the caller's trace continues upstream
        self.in_flight += 1
        try:
            call = self._calls[method](data, timeout=timeout, metadata=outgoing or None)
            response: bytes = await call
            trailers = relayed_trailers(await call.trailing_metadata())
        except grpc.aio.AioRpcError as exc:
            raise self._error(method, exc) from None
        finally:
            self.in_flight -= 1
        return Relayed(response, trailers)

    def _error(self, method: str, exc: grpc.aio.AioRpcError) -> PassThroughError:
        code = exc.code()
        details = exc.details() or ""
        trailers = relayed_trailers(exc.trailing_metadata())
        host = self.address.rpartition(":")[0]
        if code == grpc.StatusCode.UNAVAILABLE or (host and host in details):
            log.debug("passthrough.failed", method=method, status=code.name, details=details)
            details = f"{NAME} is unavailable" if code == grpc.StatusCode.UNAVAILABLE else (
                f"{NAME} failed: {code.name}"
            )  # fmt: skip
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            details = f"{NAME} did not answer in time"
        return PassThroughError(details, status=code.name, trailers=trailers)

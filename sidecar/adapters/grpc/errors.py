"""The one place that maps domain errors to gRPC status codes.

Unknown exceptions become INTERNAL and are logged once, with the request's id.
"""

from __future__ import annotations

import grpc
import structlog

from sidecar.core.limits import STATUS_MESSAGE_BYTES, clip
from sidecar.errors import ErrorCode, SidecarError, UpstreamError

log = structlog.get_logger("sidecar.grpc")

_CODES: dict[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.ABORTED: grpc.StatusCode.ABORTED,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(error: SidecarError) -> grpc.StatusCode:
    if isinstance(error, UpstreamError):
        return getattr(grpc.StatusCode, error.status, grpc.StatusCode.UNKNOWN)
    return _CODES.get(error.code, grpc.StatusCode.INTERNAL)


async def abort(context: grpc.aio.ServicerContext[object, object], error: BaseException) -> None:
    """Abort the call with the status for `error` (always raises)."""
    if isinstance(error, SidecarError):
        # Bounded: a status message travels in the trailers (a few KiB at most).
        await context.abort(status_for(error), clip(error.message, STATUS_MESSAGE_BYTES))
    log.error("internal_error", error=repr(error), exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")

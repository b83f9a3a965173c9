"""Domain errors. Each carries a domain code; `adapters/grpc/errors.py` is the one place
that maps codes to gRPC status codes."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    ABORTED = "ABORTED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"
    UPSTREAM = "UPSTREAM"  # an upstream's own status, passed through unchanged


class SidecarError(Exception):
    """An error the caller should see, with a domain code and a clear message."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(SidecarError):
    code = ErrorCode.INVALID_ARGUMENT


class ModelNotFound(SidecarError):
    code = ErrorCode.NOT_FOUND


class NotFound(SidecarError):
    code = ErrorCode.NOT_FOUND


class FailedPrecondition(SidecarError):
    code = ErrorCode.FAILED_PRECONDITION


class StaleRevision(SidecarError):
    """The write expected another revision (optimistic concurrency): re-read, retry."""

    code = ErrorCode.ABORTED


class Unauthenticated(SidecarError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(SidecarError):
    code = ErrorCode.PERMISSION_DENIED


class UpstreamError(SidecarError):
    """An upstream model server call failed; `status` is its gRPC status code name
    (``"NOT_FOUND"``, ``"UNAVAILABLE"``, ...), passed through to the caller. The message
    names the variant, never the upstream's address; `trailers` are the upstream's
    trailing metadata the app may see (filtered by the adapter; usually none)."""

    code = ErrorCode.UPSTREAM

    def __init__(
        self,
        message: str,
        *,
        status: str,
        variant: str,
        trailers: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.variant = variant
        self.trailers = trailers

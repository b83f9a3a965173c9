"""Control authentication and authorization: a gRPC server interceptor and one table.
The predict port reuses `Authenticator` for app credentials on `ReportOutcome` (role
`app`, checked by the servicer; inference calls stay open).

`CONTROL_ROLES` names every method of `sidecar.v1.Control` once with the role it needs
(viewer reads, operator writes; an operator may also read). `AuthInterceptor` wraps each
Control handler: it authenticates the bearer token, checks the role, and hands the
`Principal` to the servicer through a context variable (`current_principal()`); a method
missing from the table is refused (deny by default). Server reflection on the control
port stays open, as before: it lists services and reads no state.

Only SHA-256 digests of tokens are held; every configured digest is compared (no early
exit), with `hmac.compare_digest`. Tokens never reach a log line.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import grpc
from grpc_reflection.v1alpha import reflection

from sidecar.adapters.grpc.errors import abort
from sidecar.config import TokenSpec
from sidecar.errors import PermissionDenied, Unauthenticated

VIEWER = "viewer"
OPERATOR = "operator"
APP = "app"  # predict port: may report outcomes (`predict.auth.tokens`), nothing on Control

ALLOWED: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        VIEWER: frozenset({VIEWER, OPERATOR}),
        OPERATOR: frozenset({OPERATOR}),
        APP: frozenset({APP}),
    }
)
"""Role a method needs -> the principal roles that may call it."""

CONTROL_SERVICE = "sidecar.v1.Control"
CONTROL_ROLES: Mapping[str, str] = MappingProxyType(
    {
        # reads
        "GetState": VIEWER,
        "WatchState": VIEWER,
        "GetAuditLog": VIEWER,
        "ListUserOverrides": VIEWER,
        "GetShadowReport": VIEWER,
        "GetExperimentReport": VIEWER,
        "GetRollout": VIEWER,
        "ListFleetMembers": VIEWER,
        "ListModels": VIEWER,
        # routing writes
        "SetWeights": OPERATOR,
        "SetKillSwitch": OPERATOR,
        "SetUserOverride": OPERATOR,
        "ClearUserOverride": OPERATOR,
        "SetSegmentRule": OPERATOR,
        "ClearSegmentRule": OPERATOR,
        "Promote": OPERATOR,
        "Rollback": OPERATOR,
        "RestoreRules": OPERATOR,
        # rollout writes
        "StartRollout": OPERATOR,
        "PauseRollout": OPERATOR,
        "ResumeRollout": OPERATOR,
        "AbortRollout": OPERATOR,
        "RunDrill": OPERATOR,
    }
)
"""Control method -> the role it needs. Every method of the service, each once."""

OPEN_SERVICES = frozenset({reflection.SERVICE_NAME})
"""Services on the control port that need no credentials (they read no state)."""

Context = grpc.aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("control_principal")


def current_principal() -> Principal:
    """Who is calling the Control method being served (set by `AuthInterceptor`)."""
    try:
        return _principal.get()
    except LookupError:
        raise RuntimeError("no authenticated principal: is AuthInterceptor installed?") from None


class Authenticator:
    def __init__(self, tokens: Sequence[TokenSpec]) -> None:
        self._tokens = tuple(tokens)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        header = ""
        for key, value in metadata:
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <token>'"
            )
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: TokenSpec | None = None
        for spec in self._tokens:  # compare against every token: timing reveals nothing
            if hmac.compare_digest(digest, spec.sha256):
                found = spec
        if found is None:
            raise Unauthenticated("unknown credentials: the bearer token is not accepted")
        return Principal(found.name, found.role)

    def authorize(
        self, metadata: Iterable[tuple[str, str | bytes]], role: str | None, method: str
    ) -> Principal:
        """The caller, if authenticated and allowed `role`; `None` (a method without a
        role) refuses everyone."""
        principal = self.authenticate(metadata)
        if role is None:
            raise PermissionDenied(f"{method}: no role may call this method")
        if principal.role not in ALLOWED.get(role, frozenset()):
            raise PermissionDenied(
                f"principal {principal.name!r} has role {principal.role}; {method} needs {role}"
            )
        return principal


Admit = Callable[[Context], Awaitable[Principal]]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates and authorizes every call by `roles` before the servicer runs."""

    def __init__(
        self,
        authenticator: Authenticator,
        roles: Mapping[str, str] = CONTROL_ROLES,
        *,
        service: str = CONTROL_SERVICE,
        open_services: Iterable[str] = OPEN_SERVICES,
    ) -> None:
        self._auth = authenticator
        self._roles = roles
        self._service = service
        self._open = frozenset(open_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler is None or service in self._open:
            return handler
        role = self._roles.get(method) if service == self._service else None
        return _guarded(handler, self._admission(role, method or handler_call_details.method))

    def _admission(self, role: str | None, method: str) -> Admit:
        async def admit(context: Context) -> Principal:
            try:
                return self._auth.authorize(context.invocation_metadata() or (), role, method)
            except Exception as exc:
                await abort(context, exc)
                raise

        return admit


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
Behavior = Callable[[Any, Context], Any]

_KINDS: tuple[tuple[str, Callable[..., Handler], bool], ...] = (
    # (handler attribute, constructor, streams responses)
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


def _guarded(handler: Handler, admit: Admit) -> Handler:
    """`handler` with `admit` run first; the servicer sees the principal it returns."""
    for attribute, make, streams in _KINDS:
        inner: Behavior | None = getattr(handler, attribute)
        if inner is not None:
            return make(
                _streaming(inner, admit) if streams else _single(inner, admit),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


# Each RPC runs in its own asyncio task (its own copy of the context), so the principal set
# here is seen by that call only.


def _single(inner: Behavior, admit: Admit) -> Behavior:
    async def call(request: Any, context: Context) -> Any:
        token = _principal.set(await admit(context))
        try:
            return await inner(request, context)
        finally:
            _principal.reset(token)

    return call


def _streaming(inner: Behavior, admit: Admit) -> Behavior:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        _principal.set(await admit(context))  # not reset: a stream may be closed elsewhere
        async for item in inner(request, context):
            yield item

    return stream

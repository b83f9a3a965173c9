"""A fault-injecting upstream for tests: an in-process gRPC server speaking the Open
Inference Protocol's method names at the byte level.

It is for fault injection only; integration tests use real model servers (MLServer). It
either proxies every call to a real upstream (`target`) or answers with `respond`, and
can be told at any moment to fail with a status, to delay, or to hang. It never parses
messages itself, so it loads in any process (no generated code, no descriptor clash).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

Responder = Callable[[str, bytes], bytes | Awaitable[bytes]]
"""(method name such as "ModelInfer", request bytes) -> response bytes."""


@dataclass(frozen=True)
class CallRecord:
    """One call as the upstream saw it."""

    method: str
    time_remaining: float | None
    metadata: dict[str, str]


@dataclass
class Fault:
    """What the upstream does to the next calls. `status` set: fail with it; `hang`: never
    answer (until the caller's deadline); `delay`: wait first (no CPU); `trailers`: send
    this trailing metadata (with the answer or the failure)."""

    status: grpc.StatusCode | None = None
    message: str = "injected fault"
    delay: float = 0.0
    hang: bool = False
    methods: frozenset[str] = frozenset({"ModelInfer"})
    trailers: tuple[tuple[str, str | bytes], ...] = ()


def _identity(data: bytes) -> bytes:
    return data


class FaultInjectingUpstream:
    """`async with FaultInjectingUpstream(target="127.0.0.1:9000") as up: up.address ...`"""

    SERVICE = "inference.GRPCInferenceService"
    METHODS = (
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    )  # fmt: skip

    def __init__(self, *, target: str | None = None, respond: Responder | None = None) -> None:
        if (target is None) == (respond is None):
            raise ValueError("give exactly one of target (proxy) or respond (answer)")
        self.target = target
        self.respond = respond
        self.fault = Fault()
        self.calls: dict[str, int] = {}
        self.seen: deque[CallRecord] = deque(maxlen=1000)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def inject(self, fault: Fault) -> None:
        self.fault = fault

    def heal(self) -> None:
        self.fault = Fault()

    def _handler(self, method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.seen.append(
                CallRecord(
                    method,
                    context.time_remaining(),
                    {k: str(v) for k, v in context.invocation_metadata() or ()},
                )
            )
            fault = self.fault
            if method in fault.methods:
                if fault.hang:
                    await asyncio.Event().wait()
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.trailers:
                    context.set_trailing_metadata(fault.trailers)
                if fault.status is not None:
                    await context.abort(fault.status, fault.message)
            if self.respond is not None:
                result = self.respond(method, request)
                return await result if isinstance(result, Awaitable) else result
            assert self._channel is not None
            call = self._channel.unary_unary(
                f"/{self.SERVICE}/{method}",
                request_serializer=_identity,
                response_deserializer=_identity,
            )
            metadata = [
                (k, v) for k, v in context.invocation_metadata() or () if k == "traceparent"
            ]
            try:
                reply: bytes = await call(
                    request, timeout=context.time_remaining(), metadata=metadata or None
                )
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return reply

        return grpc.unary_unary_rpc_method_handler(handle)

    async def start(self) -> FaultInjectingUpstream:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    self.SERVICE, {m: self._handler(m) for m in self.METHODS}
                ),
            )
        )
        self.port = server.add_insecure_port("127.0.0.1:0")
        if self.target is not None:
            self._channel = grpc.aio.insecure_channel(self.target)
        await server.start()
        self._server = server
        return self

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def __aenter__(self) -> FaultInjectingUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ThreadedFaultInjectingUpstream:
    """A `FaultInjectingUpstream` on its own event loop in a background thread, for
    synchronous tests (the integration tests drive real processes synchronously)."""

    def __init__(self, *, target: str | None = None, respond: Responder | None = None) -> None:
        import threading

        self.upstream = FaultInjectingUpstream(target=target, respond=respond)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> str:
        return self.upstream.address

    def inject(self, fault: Fault) -> None:
        self._loop.call_soon_threadsafe(self.upstream.inject, fault)

    def heal(self) -> None:
        self._loop.call_soon_threadsafe(self.upstream.heal)

    def start(self) -> ThreadedFaultInjectingUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.upstream.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> ThreadedFaultInjectingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

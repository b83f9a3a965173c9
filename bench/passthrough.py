"""A bare bytes-passthrough gRPC hop: the floor for any Python hop.

Every unary method is forwarded, as opaque bytes, to the upstream over one long-lived
grpc.aio channel: no parsing, no routing, no metadata, only the caller's deadline. Whatever
a Python sidecar does on top of this costs extra.

Usage::

    python bench/passthrough.py --port 0 --upstream 127.0.0.1:9500

The first line on stdout is ``PORT <n>``, the bound port on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import uvloop

DEFAULT_TIMEOUT_S = 5.0


def _identity(data: bytes) -> bytes:
    return data


class Passthrough(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic in stubs only
    """Forwards any unary-unary method to the same path on the upstream."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = grpc.unary_unary_rpc_method_handler(self._forwarder(method))
            self._handlers[method] = handler
        return handler

    def _forwarder(self, method: str) -> Callable[[bytes, Any], Awaitable[bytes]]:
        call = self._channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            remaining = context.time_remaining()
            timeout = DEFAULT_TIMEOUT_S if remaining is None else max(remaining, 0.0)
            try:
                response: bytes = await call(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return response

        return forward


async def serve(port: int, upstream: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((Passthrough(channel),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.2)
    await channel.close(None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="host:port of the upstream")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Control for several routed models: one `ControlServicer` per routed model, chosen per
call by the `x-model` request header.

Every Control call addresses one routed model: `x-model: <name>` (absent or empty: the
primary, the first routed model; several values: the last one). A name that is not routed
is NOT_FOUND naming the routed models (bounded), before the model's servicer sees the
call; a name longer than `MAX_MODEL_HEADER_BYTES` is INVALID_ARGUMENT. Request messages
are unchanged, so every existing verb works per model. `ListModels` is answered here: each
routed model with its flag in force.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.adapters.grpc.control import ControlServicer
from sidecar.adapters.grpc.errors import abort
from sidecar.core.limits import clip, excerpt
from sidecar.errors import InvalidRequest, ModelNotFound

Context = grpc.aio.ServicerContext[object, object]
MODEL_HEADER = "x-model"
MAX_MODEL_HEADER_BYTES = 256
_SERVICE = cpb.DESCRIPTOR.services_by_name["Control"]
#: Control methods answered by the addressed model's servicer (all but ListModels).
ROUTED_METHODS: tuple[str, ...] = tuple(m.name for m in _SERVICE.methods if m.name != "ListModels")
STREAMING_METHODS = frozenset(m.name for m in _SERVICE.methods if m.server_streaming)


def model_header(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The `x-model` header's value ("" when absent); InvalidRequest when too long."""
    values = [v for k, v in metadata if k == MODEL_HEADER]
    if not values:
        return ""
    raw = values[-1]
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if len(text.encode("utf-8", "replace")) > MAX_MODEL_HEADER_BYTES:
        raise InvalidRequest(f"{MODEL_HEADER}: at most {MAX_MODEL_HEADER_BYTES} bytes")
    return text


class ControlRouter:
    """The Control service of a sidecar routing one or more models: each method
    dispatches to the addressed model's `ControlServicer` (`servicers`, the primary
    first)."""

    def __init__(self, servicers: Sequence[ControlServicer]) -> None:
        if not servicers:
            raise ValueError("no routed model")
        self.servicers = {s.config.model: s for s in servicers}
        self.primary = servicers[0]
        for name in ROUTED_METHODS:
            handler = self._stream(name) if name in STREAMING_METHODS else self._unary(name)
            setattr(self, name, handler)

    def pick(self, metadata: Iterable[tuple[str, str | bytes]]) -> ControlServicer:
        """The addressed model's servicer; ModelNotFound naming the routed models."""
        name = model_header(metadata)
        if not name:
            return self.primary
        servicer = self.servicers.get(name)
        if servicer is None:
            routed = ", ".join(repr(m) for m in list(self.servicers)[:32])
            raise ModelNotFound(
                f"{MODEL_HEADER}: model {excerpt(name)} is not routed here; "
                f"routed models: {clip(routed, 1024)}"
            )
        return servicer

    async def _picked(self, context: Context) -> ControlServicer:
        try:
            return self.pick(context.invocation_metadata() or ())
        except Exception as exc:
            await abort(context, exc)
            raise

    def _unary(self, name: str) -> Callable[[Any, Context], Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            servicer = await self._picked(context)
            return await getattr(servicer, name)(request, context)

        call.__name__ = name
        return call

    def _stream(self, name: str) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            servicer = await self._picked(context)
            async for item in getattr(servicer, name)(request, context):
                yield item

        call.__name__ = name
        return call

    async def ListModels(
        self, request: cpb.ListModelsRequest, context: Context
    ) -> cpb.ListModelsResponse:
        return cpb.ListModelsResponse(
            models=[routed_model(s, s is self.primary) for s in self.servicers.values()]
        )


def routed_model(servicer: ControlServicer, primary: bool) -> cpb.RoutedModel:
    """One routed model with its flag in force."""
    snapshot = servicer.service.snapshot()
    flag = snapshot.flag
    return cpb.RoutedModel(
        name=servicer.config.model,
        flag_key=flag.key,
        stable=flag.stable,
        canary=flag.canary or "",
        weights=dict(flag.weights),
        kill_switch=flag.kill_switch,
        revision=snapshot.revision,
        primary=primary,
    )

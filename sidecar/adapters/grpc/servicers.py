"""gRPC servicers. Each one only translates: convert the request, await one application
call, convert the response. Routing decisions live in the application layer."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from opentelemetry.trace import Span, Tracer

from sidecar import __version__
from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar.adapters.grpc.auth import APP, Authenticator
from sidecar.adapters.grpc.converters import (
    check_infer_request,
    oip_to_predict,
    predict_to_oip,
    shown,
)
from sidecar.adapters.grpc.errors import abort, status_for
from sidecar.adapters.telemetry import spans
from sidecar.adapters.upstream.oip import OipUpstream
from sidecar.adapters.upstream.passthrough import PassThrough, PassThroughError
from sidecar.adapters.upstream.wire import InferBytes, InferReply
from sidecar.app.dataplane import DataPlane, Served
from sidecar.config import Config
from sidecar.core.limits import clip
from sidecar.core.routing import Reason
from sidecar.errors import (
    FailedPrecondition,
    InvalidRequest,
    ModelNotFound,
    SidecarError,
    UpstreamError,
)

Context = grpc.aio.ServicerContext[object, object]
USER_HEADER = "x-user-id"
SEGMENT_HEADER = "x-segment"
SERVER_NAME = "rollout-sidecar"
OIP_SERVICE = "inference.GRPCInferenceService"
PREDICT_SERVICE = "sidecar.v1.Predict"

_TRACEPARENT, _TRACESTATE = spans.TRACE_HEADERS
_REASONS = {reason: getattr(pb, f"REASON_{reason.value}") for reason in Reason}


def _routing_headers(
    metadata: Iterable[tuple[str, str | bytes]],
) -> tuple[str, str, list[tuple[str, str]]]:
    """(targeting key, segment, W3C trace context headers: one each, the last, as the
    server span reads them) from the call's metadata (one dict of it: gRPC bounds its
    size; a repeated header's last value wins)."""
    headers = dict(metadata)
    user = headers.get(USER_HEADER, "")
    segment = headers.get(SEGMENT_HEADER, "")
    trace_context: list[tuple[str, str]] = []
    parent, state = headers.get(_TRACEPARENT), headers.get(_TRACESTATE)
    if isinstance(parent, str):
        trace_context.append((_TRACEPARENT, parent))
    if isinstance(state, str):
        trace_context.append((_TRACESTATE, state))
    return str(user), str(segment), trace_context


def annotate(span: Span, served: Served[InferReply], segment: str) -> None:
    """The flag decision and the answering model on the server span."""
    span.set_attributes(  # the flag decision itself was set by the data plane
        {
            spans.MODEL_NAME: served.variant.model_name,
            spans.MODEL_VERSION: served.response.model_version or served.variant.model_version,
            spans.SEGMENT: segment,
        }
    )
    spans.set_status(span, "OK")


def _served_trailers(context: Context, served: Served[InferReply]) -> None:
    """The answer's trailers: the upstream's (filtered; usually none), then which variant
    answered and the request id (ours win a clash)."""
    own = (("x-variant", served.resolution.variant), ("x-request-id", served.request_id))
    passed = served.response.trailers
    context.set_trailing_metadata(passed + own if passed else own)


def _failed(
    span: Span | None, exc: BaseException, context: Context, upstream_trailers: bool = False
) -> None:
    if isinstance(exc, PassThroughError):  # no variant: the upstream's trailers as they came
        context.set_trailing_metadata(exc.trailers)
    elif isinstance(exc, UpstreamError):  # which variant failed, for the caller too
        own = (("x-variant", exc.variant),)
        passed = exc.trailers if upstream_trailers else ()
        context.set_trailing_metadata(passed + own if passed else own)
    if span is None:
        return
    if isinstance(exc, SidecarError):
        spans.set_status(span, status_for(exc).name, exc.message)
    else:
        spans.set_status(span, "INTERNAL", type(exc).__name__)


Routes = Mapping[str, DataPlane[InferBytes, InferReply]]


class _Routed:
    """The routed models, by the name apps use (in configuration order: the first is the
    primary, which answers Predict requests that name no model)."""

    def __init__(self, routes: Routes) -> None:
        if not routes:
            raise ValueError("no routed model")
        self.routes = routes
        self.primary = next(iter(routes))

    def find(self, name: str) -> DataPlane[InferBytes, InferReply]:
        """The data plane routing `name`, else ModelNotFound naming what is routed."""
        dataplane = self.routes.get(name)
        if dataplane is None:
            raise self.not_found(name)
        return dataplane

    def not_found(self, name: str) -> ModelNotFound:
        routed = ", ".join(repr(m) for m in list(self.routes)[:8])
        return ModelNotFound(
            f"model {shown(name)} is not served here; this sidecar routes {clip(routed, 512)}"
        )

    def guarded(self) -> frozenset[str]:
        """Model names a repository load / unload must not touch: the routed models and
        every model name their variants ask their servers for."""
        names = {spec.model_name for dp in self.routes.values() for spec in dp.variants.values()}
        return frozenset(names | set(self.routes))


Message = TypeVar("Message", bound=Any)


async def _abort(context: Context, exc: BaseException) -> None:
    if isinstance(exc, PassThroughError):
        context.set_trailing_metadata(exc.trailers)
    await abort(context, exc)


class InferenceServicer:
    """Open Inference Protocol front door: apps point here instead of the model server.

    A model no flag routes goes to the pass-through upstream unchanged (`passthrough`;
    None: NOT_FOUND). A routed model's calls naming a version answer for the served
    variant with that `model_version` (NOT_FOUND / not ready when none has it)."""

    def __init__(
        self,
        routes: Routes,
        tracer: Tracer,
        probe_timeout: float,
        passthrough: PassThrough | None = None,
    ) -> None:
        self.tracer = tracer
        # nothing exported: ModelInfer hands its numbers to the statistics without a span
        self.finished = tracer.finished if isinstance(tracer, spans.StatsTracer) else None
        self.routed = _Routed(routes)
        self.probe_timeout = probe_timeout
        self.passthrough = passthrough
        self.guarded = self.routed.guarded()

    async def ModelInfer(self, request: bytes, context: Context) -> bytes:
        """The request arrives as bytes (see `handlers`): the top-level scan reads the model
        name, the bytes go upstream with the variant's model appended, and the upstream's
        answer bytes come back (its model name set to the routed one). Tensors are the
        upstream's to validate: its status passes through, naming the variant."""
        metadata = context.invocation_metadata() or ()
        if self.finished is not None:
            return await self._infer_unexported(request, metadata, context, self.finished)
        with spans.server_span(self.tracer, OIP_SERVICE, "ModelInfer", metadata) as span:
            try:
                payload = InferBytes.scanned(request)
                dataplane = self.routed.routes.get(payload.head.model_name)
                if dataplane is None:
                    return await self._pass_infer(payload, span, context)
                user, segment, _ = _routing_headers(metadata)  # the span carries the trace
                served = await dataplane.infer(
                    payload,
                    targeting_key=user,
                    segment=segment,
                    time_remaining=context.time_remaining(),
                    metadata=(),
                    version=payload.head.model_version,
                )
                answer = served.response.named(dataplane.model)
            except Exception as exc:
                _failed(span, exc, context, upstream_trailers=True)
                await abort(context, exc)
                raise
            annotate(span, served, segment)
        _served_trailers(context, served)
        return answer

    async def _infer_unexported(
        self,
        request: bytes,
        metadata: Iterable[tuple[str, str | bytes]],
        context: Context,
        finished: spans.Finished,
    ) -> bytes:
        """`ModelInfer` when no span is exported: the same answers, trailers and statistics
        without a span object. The finished request's variant, duration and status go
        straight to `finished` (the statistics sinks), and the caller's trace context
        goes to the upstream as it came. Measured per request on the data-plane bench:
        see `bench/README.md`."""
        user, segment, trace_context = _routing_headers(metadata)
        started = time.time_ns()
        dataplane = None
        try:
            payload = InferBytes.scanned(request)
            dataplane = self.routed.routes.get(payload.head.model_name)
            if dataplane is None:
                return await self._pass_infer(payload, None, context)
            served = await dataplane.infer(
                payload,
                targeting_key=user,
                segment=segment,
                time_remaining=context.time_remaining(),
                metadata=trace_context,
                version=payload.head.model_version,
                traced=False,
            )
            answer = served.response.named(dataplane.model)
        except Exception as exc:
            if dataplane is not None and isinstance(exc, UpstreamError):  # routed, then failed
                ended = time.time_ns()
                status = status_for(exc).name
                finished(dataplane.model, exc.variant, ended / 1e9, (ended - started) / 1e9, status)
            _failed(None, exc, context, upstream_trailers=True)
            await abort(context, exc)
            raise
        ended = time.time_ns()
        variant = served.resolution.variant
        finished(dataplane.model, variant, ended / 1e9, (ended - started) / 1e9, "OK")
        _served_trailers(context, served)
        return answer

    async def _pass_infer(self, payload: InferBytes, span: Span | None, context: Context) -> bytes:
        """A model not routed here: its bytes to the pass-through upstream, its answer
        back as it came. The span names the model and says pass-through (no flag
        decision on it, so no statistics count it)."""
        head = payload.head
        if span is not None:
            span.set_attributes(  # the caller's words, bounded
                {
                    spans.MODEL_NAME: clip(head.model_name, 256),
                    spans.MODEL_VERSION: clip(head.model_version, 256),
                    spans.PASSTHROUGH: True,
                }
            )
        relayed = await self._relay("ModelInfer", head.model_name, payload.data, context)
        if span is not None:
            spans.set_status(span, "OK")
        return relayed

    async def _relay(self, method: str, model: str, data: bytes, context: Context) -> bytes:
        """`data` to the pass-through upstream; its answer bytes (trailers set on
        `context`). ModelNotFound when no pass-through is configured."""
        if self.passthrough is None:
            raise self.routed.not_found(model)
        relayed = await self.passthrough.call(method, data, time_remaining=context.time_remaining())
        if relayed.trailers:
            context.set_trailing_metadata(relayed.trailers)
        return relayed.data

    async def _relay_message(
        self, method: str, model: str, request: Any, kind: type[Message], context: Context
    ) -> Message:
        data = await self._relay(method, model, request.SerializeToString(), context)
        answer: Message = kind.FromString(data)
        return answer

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: Context
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: Context
    ) -> oip.ServerReadyResponse:
        for dataplane in self.routed.routes.values():
            if not await dataplane.stable_ready(self.probe_timeout):
                return oip.ServerReadyResponse(ready=False)
        return oip.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: Context
    ) -> oip.ModelReadyResponse:
        """A routed model: the readiness of the variant serving `version` (stable when
        empty; not ready for a version no served variant has); else passed through."""
        try:
            dataplane = self.routed.routes.get(request.name)
            if dataplane is None:
                return await self._relay_message(
                    "ModelReady", request.name, request, oip.ModelReadyResponse, context
                )
            ready = await dataplane.version_ready(request.version, self.probe_timeout)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: Context
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: Context
    ) -> oip.ModelMetadataResponse:
        """A routed model: the metadata of the variant serving `version` (stable when
        empty; NOT_FOUND for a version no served variant has), named as the routed model;
        else passed through."""
        try:
            dataplane = self.routed.routes.get(request.name)
            if dataplane is None:
                return await self._relay_message(
                    "ModelMetadata", request.name, request, oip.ModelMetadataResponse, context
                )
            upstream = dataplane.upstreams[dataplane.serving(request.version)]
            assert isinstance(upstream, OipUpstream)
            reply = await upstream.metadata(timeout=self.probe_timeout)
        except Exception as exc:
            await _abort(context, exc)
            raise
        reply.name = dataplane.model
        return reply

    async def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: Context
    ) -> oip.RepositoryIndexResponse:
        """Each routed model (one entry per served variant's version, READY or
        UNAVAILABLE from its readiness), then the pass-through upstream's entries for
        models not routed here (when one is configured; its failure passes through)."""
        try:
            models = [
                oip.RepositoryIndexResponse.ModelIndex(
                    name=name, version=version, state="READY" if ok else "UNAVAILABLE",
                    reason="" if ok else "not ready",
                )
                for name, dataplane in self.routed.routes.items()
                for version, ok in await dataplane.versions_ready(self.probe_timeout)
                if ok or not request.ready
            ]  # fmt: skip
            if self.passthrough is not None:
                passed = await self._relay_message(
                    "RepositoryIndex", "", request, oip.RepositoryIndexResponse, context
                )
                models += (m for m in passed.models if m.name not in self.routed.routes)
        except Exception as exc:
            await _abort(context, exc)
            raise
        return oip.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: Context
    ) -> oip.RepositoryModelLoadResponse:
        return await self._repository_change(
            "RepositoryModelLoad", request, oip.RepositoryModelLoadResponse, context
        )

    async def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: Context
    ) -> oip.RepositoryModelUnloadResponse:
        return await self._repository_change(
            "RepositoryModelUnload", request, oip.RepositoryModelUnloadResponse, context
        )

    async def _repository_change(
        self, method: str, request: Any, kind: type[Message], context: Context
    ) -> Message:
        """Load / unload: refused (FAILED_PRECONDITION) for a routed model or a model a
        variant asks its server for; passed through for any other (NOT_FOUND without a
        pass-through upstream)."""
        try:
            name = request.model_name
            if name in self.guarded:
                raise FailedPrecondition(
                    f"model {shown(name)} is routed by this sidecar (or answers one of its "
                    f"variants): {method} it on its model server, not through the sidecar"
                )
            return await self._relay_message(method, name, request, kind, context)
        except Exception as exc:
            await _abort(context, exc)
            raise


class PredictServicer:
    """sidecar.v1.Predict: explicit routing context, routing decision in the answer.

    `ReportOutcome` needs an app credential when `predict.auth.tokens` is configured;
    `Predict` never does. The reason's detail (bucket, split) is answered only with
    `predict.expose_reason_detail`."""

    def __init__(self, config: Config, routes: Routes, tracer: Tracer) -> None:
        self.routed = _Routed(routes)
        self.tracer = tracer
        self.expose_reason_detail = config.predict.expose_reason_detail
        tokens = config.predict.auth.tokens
        self.reporters = Authenticator(tokens) if tokens else None

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        metadata = context.invocation_metadata() or ()
        with spans.server_span(self.tracer, PREDICT_SERVICE, "Predict", metadata) as span:
            try:
                payload = predict_to_oip(request.inference)
                dataplane = self.routed.find(payload.model_name or self.routed.primary)
                check_infer_request(payload)
                served = await dataplane.infer(
                    InferBytes.of(payload),
                    targeting_key=request.context.targeting_key,
                    segment=request.context.segment,
                    time_remaining=context.time_remaining(),
                    metadata=(),
                    version=payload.model_version,
                )
            except Exception as exc:
                _failed(span, exc, context)
                await abort(context, exc)
                raise
            annotate(span, served, request.context.segment)
        answer = served.response.message()
        upstream_model = answer.model_name or served.variant.model_name
        upstream_version = answer.model_version or served.variant.model_version
        answer.model_name = dataplane.model
        return pb.PredictResponse(
            inference=oip_to_predict(answer),
            variant=served.resolution.variant,
            model_name=upstream_model,
            model_version=upstream_version,
            request_id=served.request_id,
            reason=_REASONS[served.resolution.reason],
            reason_detail=(
                served.resolution.detail(served.flag) if self.expose_reason_detail else ""
            ),
        )

    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: Context
    ) -> pb.ReportOutcomeResponse:
        try:
            if self.reporters is not None:
                self.reporters.authorize(context.invocation_metadata() or (), APP, "ReportOutcome")
            which = request.WhichOneof("value")
            if which is None:
                raise InvalidRequest("value: give bool_value or number_value")
            if which == "bool_value":
                value: bool | float = request.bool_value
            else:
                value = request.number_value
                if not math.isfinite(value):
                    raise InvalidRequest("number_value: must be a finite number")
            # Each routed model has its own ledger: the model that served (empty: primary).
            dataplane = self.routed.find(request.model or self.routed.primary)
            attribution = dataplane.report_outcome(request.request_id, request.metric, value)
        except Exception as exc:
            await abort(context, exc)
            raise
        return pb.ReportOutcomeResponse(
            variant=attribution.variant,
            segment=attribution.segment,
            counted=attribution.counted,
            capped=attribution.capped,
        )


def _typed(method: Any, request: Any, response: Any) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        method,
        request_deserializer=request.FromString,
        response_serializer=response.SerializeToString,
    )


def inference_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The front door's method handlers: the generated ones, except `ModelInfer`, which
    takes and returns bytes (no (de)serialiser: the body is forwarded, not parsed)."""
    return {
        "ServerLive": _typed(servicer.ServerLive, oip.ServerLiveRequest, oip.ServerLiveResponse),
        "ServerReady": _typed(
            servicer.ServerReady, oip.ServerReadyRequest, oip.ServerReadyResponse
        ),
        "ModelReady": _typed(servicer.ModelReady, oip.ModelReadyRequest, oip.ModelReadyResponse),
        "ServerMetadata": _typed(
            servicer.ServerMetadata, oip.ServerMetadataRequest, oip.ServerMetadataResponse
        ),
        "ModelMetadata": _typed(
            servicer.ModelMetadata, oip.ModelMetadataRequest, oip.ModelMetadataResponse
        ),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(servicer.ModelInfer),
        "RepositoryIndex": _typed(
            servicer.RepositoryIndex, oip.RepositoryIndexRequest, oip.RepositoryIndexResponse
        ),
        "RepositoryModelLoad": _typed(
            servicer.RepositoryModelLoad,
            oip.RepositoryModelLoadRequest,
            oip.RepositoryModelLoadResponse,
        ),
        "RepositoryModelUnload": _typed(
            servicer.RepositoryModelUnload,
            oip.RepositoryModelUnloadRequest,
            oip.RepositoryModelUnloadResponse,
        ),
    }


def add_inference_servicer(servicer: InferenceServicer, server: GenericOnly) -> None:
    """Register the front door on `server` (generic handlers only: see `GenericOnly`)."""
    handlers = inference_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(OIP_SERVICE, handlers),))


class GenericOnly:
    """A `grpc.aio.Server` seen by the generated `add_..._to_server` functions (and
    reflection's): their generic handlers are added, their registered methods are not.

    grpc.aio's server keeps one pending call request per registered method and, for every
    call it accepts, waits on all of them (`asyncio.wait(..., FIRST_COMPLETED)`: 15 futures
    on the predict port, each given and then relieved of a done-callback, per call). Measured
    with callgrind on the data-plane bench's sidecar: 77,000 of its 863,000 user-space
    instructions per request (`bench/README.md`). With generic handlers only there is one
    pending request, and a call's method is found by one dict lookup in the generic handler.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:  # type: ignore[type-arg]
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Not registered (see the class): the generic handler added with it serves them."""
        return None


def service_names() -> Sequence[str]:
    return (
        pb.DESCRIPTOR.services_by_name["Predict"].full_name,
        oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    )

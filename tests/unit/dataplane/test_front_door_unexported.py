"""The Open Inference Protocol front door when nothing is exported (#12): no span object
on the request path, the same numbers in the statistics, and a predict port whose services
are generic handlers only (`GenericOnly`)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from conftest import infer_request, stub
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest

from sidecar._proto.sidecar.v1 import predict_pb2_grpc
from sidecar.adapters.grpc.servicers import GenericOnly
from sidecar.adapters.upstream.wire import InferBytes
from sidecar.app.dataplane import DataPlane
from sidecar.errors import SidecarError
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar


def two_variants(upstream: FaultInjectingUpstream) -> dict[str, object]:
    return config_dict(
        {"stable": upstream.address, "canary": upstream.address},
        weights={"stable": 5000, "canary": 5000},
    )


def _series(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            return float(value)
    return 0.0


async def test_every_routed_request_is_counted_once_with_its_status(
    model_server: FaultInjectingUpstream,
) -> None:
    """Served requests and upstream failures reach the statistics (windows, Prometheus)
    once each, under the variant that was chosen; requests refused before routing (a key
    over its bound) reach nothing."""
    async with running_sidecar(two_variants(model_server)) as sc:
        assert not sc.config.telemetry.export  # no exporter: the span-free path
        client = stub(sc.predict_port)
        served: list[str] = []
        for i in range(30):
            call = client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
            await call
            served.append(dict(await call.trailing_metadata())["x-variant"])
        model_server.inject(Fault(status=grpc.StatusCode.UNAVAILABLE))
        failed: list[str] = []
        for i in range(30, 40):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            failed.append(dict(info.value.trailing_metadata() or ())["x-variant"])
        model_server.heal()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.ModelInfer(infer_request(), metadata=(("x-user-id", "k" * 300),))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        assert sc.stats.recorded == 40 and sc.stats.failures == 0
        windows = sc.primary.windows.export(0)
        text = generate_latest(sc.metrics.registry).decode()
        for variant in ("stable", "canary"):
            buckets = windows.get(variant, {}).values()
            assert sum(w.requests for w in buckets) == served.count(variant) + failed.count(variant)
            assert sum(w.errors for w in buckets) == failed.count(variant)
            requests = "sidecar_requests_total"
            assert _series(text, requests, variant=variant, status="OK") == served.count(variant)
            assert _series(text, requests, variant=variant, status="UNAVAILABLE") == (
                failed.count(variant)
            )
        assert {"stable", "canary"} <= set(served)


async def test_an_expired_deadline_is_refused_before_routing(
    model_server: FaultInjectingUpstream,
) -> None:
    """No variant is charged with a request whose deadline was over before it was routed:
    nothing is served, remembered or counted (a caller cannot steer a verdict with
    zero-deadline calls)."""
    async with running_sidecar(two_variants(model_server)) as sc:
        dp: DataPlane[Any, Any] = sc.dataplane
        before = (dict(dp.served), len(dp.outcomes), sc.stats.recorded)
        request = InferBytes.scanned(infer_request().SerializeToString())
        with pytest.raises(SidecarError, match="deadline already expired"):
            await dp.infer(request, targeting_key="u1", segment="", time_remaining=0.0, metadata=())
        assert (dict(dp.served), len(dp.outcomes), sc.stats.recorded) == before
        assert not [r for r in model_server.seen if r.method == "ModelInfer"]


class _Recorder:
    """Stands in for a grpc.aio.Server: records what it is asked to add."""

    def __init__(self) -> None:
        self.generic: list[object] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        self.generic.append(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        self.registered.append(service)


def test_generated_servicers_add_generic_handlers_only() -> None:
    """What the generated `add_..._to_server` functions add through `GenericOnly`: their
    generic handler, never their registered methods (one pending call request per
    registered method cost every call an `asyncio.wait` over all of them)."""
    recorder = _Recorder()
    generic = GenericOnly(recorder)  # type: ignore[arg-type]
    predict_pb2_grpc.add_PredictServicer_to_server(predict_pb2_grpc.PredictServicer(), generic)
    health_pb2_grpc.add_HealthServicer_to_server(health_pb2_grpc.HealthServicer(), generic)
    assert len(recorder.generic) == 2 and recorder.registered == []


async def test_every_service_on_the_predict_port_still_answers(
    model_server: FaultInjectingUpstream,
) -> None:
    """With generic handlers only, the front door, health and reflection (listing every
    service on the port) answer as before."""
    async with running_sidecar(two_variants(model_server)) as sc:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = [
            reply
            async for reply in reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        listed = {s.name for s in replies[0].list_services_response.service}
        assert {
            "inference.GRPCInferenceService",
            "sidecar.v1.Predict",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= listed
        reply = await stub(sc.predict_port).ModelInfer(infer_request())
        assert reply.model_name == "classifier"
        await channel.close()

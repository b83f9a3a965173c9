"""Spans at a real OTLP receiver (opentelemetry-proto TraceService) fed by the real OTLP
exporter, configured with the standard OTEL_* variables."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.testing.otlp import OtlpReceiver

SERVER, CLIENT, INTERNAL = 2, 3, 1
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "sidecar-under-test")
        yield rx


def request() -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    return req


async def test_request_spans_follow_rpc_and_feature_flag_conventions(
    receiver: OtlpReceiver,
) -> None:
    """ModelInfer is a SERVER span continuing the caller's trace, with rpc.* and
    feature_flag.* attributes and the model; the upstream call is a CLIENT child; the
    shadow is a separate trace linked to the primary; health checks are not traced."""
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1, "shadow": 1})) as up:
        raw = config_dict(
            {"stable": up.address, "canary": up.address, "shadow": up.address},
            weights={"stable": 10_000, "canary": 0},
            shadow={"variant": "shadow"},
        )
        async with running_sidecar(raw) as sc:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
            await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request(), metadata=(("traceparent", TRACEPARENT), ("x-user-id", "u1"))
            )
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            spans = await asyncio.to_thread(receiver.wait_for, lambda s: len(s) >= 4)
    by_kind = {(s.kind, s.attributes.get("sidecar.shadow", False)): s for s in spans}
    server = next(s for s in spans if s.kind == SERVER)
    assert server.name == "inference.GRPCInferenceService/ModelInfer"
    assert server.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert server.parent_span_id == "00f067aa0ba902b7"
    assert server.service_name == "sidecar-under-test"
    a = server.attributes
    assert a["rpc.system"] == "grpc" and a["rpc.service"] == "inference.GRPCInferenceService"
    assert a["rpc.method"] == "ModelInfer" and a["rpc.grpc.status_code"] == 0
    assert a["feature_flag.key"] == "classifier-rollout"
    assert a["feature_flag.result.variant"] == "stable"
    assert a["feature_flag.result.reason"] == "SPLIT"
    assert a["feature_flag.provider.name"] == "rollout-sidecar"
    assert a["sidecar.model.name"] == "classifier" and a["sidecar.model.version"] == "stable"
    primary_client = next(s for s in spans if s.kind == CLIENT and s.trace_id == server.trace_id)
    assert primary_client.parent_span_id == server.span_id
    assert primary_client.attributes["sidecar.variant"] == "stable"
    shadow = next(s for s in spans if s.name == "sidecar.shadow")
    assert shadow.kind == INTERNAL and shadow.trace_id != server.trace_id
    assert shadow.parent_span_id == ""
    assert shadow.links == ((server.trace_id, server.span_id),)
    assert shadow.attributes["sidecar.shadow"] is True
    assert shadow.attributes["sidecar.shadow.agreed"] is True
    shadow_client = next(s for s in spans if s.kind == CLIENT and s.trace_id == shadow.trace_id)
    assert shadow_client.parent_span_id == shadow.span_id
    assert not any("Health" in s.name for s in spans)
    assert by_kind  # every span was decoded


async def test_failed_requests_carry_variant_and_status(receiver: OtlpReceiver) -> None:
    """An upstream failure is an error span with the variant that failed and its status."""
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1})) as up:
        raw = config_dict(
            {"stable": up.address, "canary": up.address}, weights={"stable": 0, "canary": 10_000}
        )
        async with running_sidecar(raw) as sc:
            up.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, message="down"))
            stub = oip_grpc.GRPCInferenceServiceStub(
                grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ModelInfer(request())
            spans = await asyncio.to_thread(
                receiver.wait_for, lambda s: any(x.kind == SERVER for x in s)
            )
    server = next(s for s in spans if s.kind == SERVER)
    assert server.attributes["feature_flag.result.variant"] == "canary"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert server.status_code == 2  # STATUS_CODE_ERROR

"""OTLP over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`): the sidecar's spans reach
a real OTLP/HTTP receiver through the real `opentelemetry-exporter-otlp-proto-http`; an
unknown protocol is a configuration error naming the variable."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar.config import ConfigError, parse_config
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.testing.otlp import OtlpHttpReceiver

SERVER = 2


async def test_spans_are_exported_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpHttpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "sidecar-over-http")
        async with FaultInjectingUpstream(respond=scripted_model({"stable": 1})) as up:
            raw = config_dict({"stable": up.address}, weights={"stable": 10_000})
            async with running_sidecar(raw) as sc:
                assert sc.config.telemetry.protocol == "http/protobuf"
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
                req = oip.ModelInferRequest(model_name="classifier")
                req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(
                    1
                )
                await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req)
                spans = await asyncio.to_thread(
                    receiver.wait_for, lambda s: any(x.kind == SERVER for x in s)
                )
    server = next(s for s in spans if s.kind == SERVER)
    assert server.service_name == "sidecar-over-http"
    assert server.attributes["feature_flag.result.variant"] == "stable"
    assert {k.lower(): v for k, v in receiver.headers[0].items()}["content-type"] == (
        "application/x-protobuf"
    )


def test_an_unknown_protocol_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    raw = config_dict({"stable": "127.0.0.1:1"}, weights={"stable": 10_000})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "<test>")
    assert any(
        "$OTEL_EXPORTER_OTLP_PROTOCOL: must be grpc or http/protobuf" in p
        for p in caught.value.problems
    )

"""The data plane end to end: MLServer upstreams, the real `sidecar serve` process, and
the real clients (tritonclient on the Open Inference Protocol front door, the sidecar's
own client library on Predict)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from clients.predict import PredictClient
from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc
from sidecar.core.routing import Flag, RoutingContext, evaluate
from sidecar.testing.credentials import VIEWER_TOKEN, bearer, control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

WEIGHTS = {"stable": 8000, "canary": 2000}


def sidecar_config(
    stable: str, canary: str | None = None, shadow: tuple[str, str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    variants: dict[str, Any] = {
        "stable": {"address": stable, "model_name": "classifier", "model_version": "v1"},
        "canary": {"address": canary or stable, "model_name": "classifier", "model_version": "v2"},
    }
    config: dict[str, Any] = {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": variants,
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": dict(WEIGHTS),
            "user_overrides": {"qa-user": "canary"},
            "segments": ["internal", "beta"],
            "segment_rules": [{"segment": "internal", "variant": "canary"}],
        },
        "server": {"log_level": "info", "max_message_bytes": 256 * 1024},
        "control": control_section(),
    }
    if shadow is not None:
        address, model, version = shadow
        variants["shadow"] = {"address": address, "model_name": model, "model_version": version}
        config["shadow"] = {"variant": "shadow", "sample_bp": 10_000, "max_in_flight": 64}
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def sidecar(
    mlserver: MLServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """A sidecar routing classifier v1 (stable) / v2 (canary) 80/20 on the shared MLServer,
    shadowing to v2 (a different model)."""
    config = sidecar_config(
        mlserver.grpc_address, shadow=(mlserver.grpc_address, "classifier", "v2")
    )
    with SidecarProcess(config, run_dir=tmp_path_factory.mktemp("sidecar")) as proc:
        yield proc


def rows_input(rows: npt.NDArray[np.float64]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(np.ascontiguousarray(rows, dtype=np.float64))
    return tensor


def triton_infer(
    client: grpcclient.InferenceServerClient,
    rows: npt.NDArray[np.float64],
    *,
    model: str = "classifier",
    version: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[npt.NDArray[Any], str]:
    result = client.infer(
        model, [rows_input(rows)], model_version=version, headers=headers,
        outputs=[grpcclient.InferRequestedOutput("predict")],
    )  # fmt: skip
    return result.as_numpy("predict").reshape(-1), result.get_response().model_version


def test_split_over_2000_keys_matches_weights_and_hash(
    sidecar: SidecarProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """2,000 users through tritonclient: the canary share is within 3 sd of 20%, and each
    user's variant is exactly what the routing core computes for that key."""
    flag = Flag.build(
        key="classifier-rollout", variants=["stable", "canary", "shadow"], stable="stable",
        canary="canary", weights=WEIGHTS,
    )  # fmt: skip
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    versions = []
    n = 2000
    for i in range(n):
        user = f"user-{i}"
        _, version = triton_infer(
            client, iris_x[i % 150 : i % 150 + 1], headers={"x-user-id": user}
        )
        expected = evaluate(flag, RoutingContext(user)).variant
        assert version == {"stable": "v1", "canary": "v2"}[expected], user
        versions.append(version)
    canary = versions.count("v2")
    assert abs(canary - 0.2 * n) <= 3 * (n * 0.2 * 0.8) ** 0.5


def test_front_door_reports_variant_in_response_metadata(
    sidecar: SidecarProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """x-variant and x-request-id come back as response metadata on ModelInfer."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sidecar.predict_address))
    request = service_pb2.ModelInferRequest(model_name="classifier")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(iris_x[0].tolist())
    for user, variant in (("qa-user", "canary"), ("user-3", None)):
        reply, call = stub.ModelInfer.with_call(request, metadata=(("x-user-id", user),))
        md = dict(call.trailing_metadata())
        assert md["x-variant"] in ("stable", "canary")
        if variant:
            assert md["x-variant"] == variant
        assert reply.model_version == {"stable": "v1", "canary": "v2"}[md["x-variant"]]
        assert len(md["x-request-id"]) == 32


def test_override_and_segment_rule_win(
    sidecar: SidecarProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """A user override and a segment rule send requests to the canary whatever the hash."""
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    _, version = triton_infer(client, iris_x[:1], headers={"x-user-id": "qa-user"})
    assert version == "v2"
    flag = Flag.build(
        key="classifier-rollout", variants=["stable", "canary"], stable="stable", canary="canary",
        weights=WEIGHTS,
    )  # fmt: skip
    stable_users = [
        f"u{i}" for i in range(50) if evaluate(flag, RoutingContext(f"u{i}")).variant == "stable"
    ]
    for user in stable_users[:10]:
        _, version = triton_infer(
            client, iris_x[:1], headers={"x-user-id": user, "x-segment": "internal"}
        )
        assert version == "v2"
        _, version = triton_infer(
            client, iris_x[:1], headers={"x-user-id": user, "x-segment": "beta"}
        )
        assert version == "v1"


def test_answers_equal_mlserver_direct(
    sidecar: SidecarProcess, mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """For all 150 iris rows, the sidecar's answer equals MLServer's own for that version,
    through tritonclient on the front door and through the Predict client library."""
    direct = grpcclient.InferenceServerClient(mlserver.grpc_address)
    via = grpcclient.InferenceServerClient(sidecar.predict_address)
    expected = {v: triton_infer(direct, iris_x, version=v)[0] for v in ("v1", "v2")}
    assert not np.array_equal(expected["v1"], expected["v2"])  # the variants really differ
    for user in ("qa-user", "user-1", "user-2", "user-5"):
        labels, version = triton_infer(via, iris_x, headers={"x-user-id": user})
        np.testing.assert_array_equal(labels, expected[version])
    with PredictClient(sidecar.predict_address) as client:
        for user in ("qa-user", "user-1", "user-2"):
            p = client.predict({"input-0": iris_x}, targeting_key=user)
            version = {"stable": "v1", "canary": "v2"}[p.variant]
            assert p.model_version == version
            np.testing.assert_array_equal(p.outputs["predict"].reshape(-1), expected[version])
            assert p.request_id and p.reason in ("SPLIT", "USER_OVERRIDE")
        p = client.predict({"input-0": iris_x[:2]}, targeting_key="anyone", segment="internal")
        assert (p.variant, p.reason) == ("canary", "SEGMENT_RULE")


def shadow_report(address: str) -> control_pb2.ShadowReport:
    stub = control_pb2_grpc.ControlStub(grpc.insecure_channel(address))
    report: control_pb2.ShadowReport = stub.GetShadowReport(
        control_pb2.GetShadowReportRequest(), metadata=bearer(VIEWER_TOKEN)
    )
    return report


def settled_report(address: str, expected: int) -> control_pb2.ShadowReport:
    for _ in range(200):
        report = shadow_report(address)
        if report.compared + sum(report.errors_by_status.values()) >= expected:
            return report
        time.sleep(0.05)
    return shadow_report(address)


def test_shadow_identical_model_agrees_fully(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Shadowing stable (v1) with an identically trained model: 100% agreement."""
    config = sidecar_config(
        mlserver.grpc_address, shadow=(mlserver.grpc_address, "classifier-shadow-same", "v1")
    )
    config["flag"]["weights"] = {"stable": 10_000, "canary": 0}
    with SidecarProcess(config, run_dir=tmp_path) as sc:
        client = grpcclient.InferenceServerClient(sc.predict_address)
        for i in range(150):
            triton_infer(client, iris_x[i : i + 1], headers={"x-user-id": f"user-{i}"})
        report = settled_report(sc.control_address, 150)
    assert report.sampled == report.sent == report.compared == 150
    assert report.agreed == 150 and report.agreement_rate == 1.0
    assert len(report.examples) == 0
    assert report.latency.count == 150 and report.latency.shadow_p50_seconds > 0


def test_shadow_different_model_records_disagreements(
    sidecar: SidecarProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """Shadowing with v2 (a different model): agreement below 100%, with examples."""
    before = shadow_report(sidecar.control_address)
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    for i in range(150):
        triton_infer(client, iris_x[i : i + 1], headers={"x-user-id": f"shadow-user-{i}"})
    report = settled_report(sidecar.control_address, before.sent + 150)
    compared = report.compared - before.compared
    agreed = report.agreed - before.agreed
    assert compared == 150
    assert 0 < agreed < 150
    assert report.examples, "disagreement examples are kept"
    example = report.examples[-1]
    assert example.primary_variant == "stable" and "predict" in example.detail
    assert example.primary_output != example.shadow_output


def test_stopped_shadow_leaves_every_primary_response_correct(
    mlserver: MLServerProcess,
    fresh_mlserver: MLServerProcess,
    iris_x: npt.NDArray[np.float64],
    tmp_path: Path,
) -> None:
    """Killing the shadow's model server changes no primary answer; errors are counted."""
    config = sidecar_config(
        mlserver.grpc_address, shadow=(fresh_mlserver.grpc_address, "classifier", "v2")
    )
    direct = grpcclient.InferenceServerClient(mlserver.grpc_address)
    expected = {v: triton_infer(direct, iris_x, version=v)[0] for v in ("v1", "v2")}
    with SidecarProcess(config, run_dir=tmp_path) as sc:
        client = grpcclient.InferenceServerClient(sc.predict_address)
        triton_infer(client, iris_x[:1], headers={"x-user-id": "warm"})
        fresh_mlserver.kill()
        for i in range(100):
            labels, version = triton_infer(
                client, iris_x[i : i + 1], headers={"x-user-id": f"user-{i}"}
            )
            assert labels[0] == expected[version][i]
        report = settled_report(sc.control_address, 101)
    # Failures are counted; after 10 in a row the breaker drops (and counts) the rest.
    errors = report.errors_by_status.get("UNAVAILABLE", 0)
    assert errors >= 10 and errors + report.dropped >= 100


def raw_stub(address: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(
        grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
    )


def base_request(iris_x: npt.NDArray[np.float64], rows: int = 1) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="classifier")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[rows, 4])
    tensor.contents.fp64_contents.extend(iris_x[:rows].reshape(-1).tolist())
    return request


def served(address: str) -> dict[str, int]:
    stub = control_pb2_grpc.ControlStub(grpc.insecure_channel(address))
    state = stub.GetState(control_pb2.GetStateRequest(), metadata=bearer(VIEWER_TOKEN))
    return {v.name: v.served for v in state.variants}


def test_malformed_requests_get_clear_statuses(
    sidecar: SidecarProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """An unknown model gets NOT_FOUND and an oversized message RESOURCE_EXHAUSTED from
    the sidecar; tensors are the upstream's to check on the front door (its bytes are
    forwarded), so MLServer's status comes back unchanged with the variant named; nothing
    refused is counted as served."""
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    with pytest.raises(InferenceServerException) as info:
        triton_infer(client, iris_x[:1], model="no-such-model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "no-such-model" in info.value.message()

    stub = raw_stub(sidecar.predict_address)
    cases: list[tuple[str, service_pb2.ModelInferRequest, grpc.StatusCode, str]] = []
    # MLServer's own statuses and messages (checked directly in the probe of this branch):
    bogus = base_request(iris_x)
    bogus.inputs[0].datatype = "FLOAT"
    cases.append(("unknown datatype", bogus, grpc.StatusCode.INTERNAL, "'FLOAT' is not a valid"))
    shape = base_request(iris_x)
    shape.inputs[0].shape[:] = [3, 4]
    cases.append(("shape mismatch", shape, grpc.StatusCode.INTERNAL, "cannot reshape"))
    missing = service_pb2.ModelInferRequest(model_name="classifier")
    cases.append(("missing inputs", missing, grpc.StatusCode.INVALID_ARGUMENT, "0 were received"))
    big = base_request(np.tile(iris_x, (100, 1)), rows=15_000)  # 480 KB > 256 KiB limit
    cases.append(("oversized", big, grpc.StatusCode.RESOURCE_EXHAUSTED, ""))
    before = served(sidecar.control_address)
    for name, request, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, metadata=(("x-user-id", "qa-user"),), timeout=10)
        assert err.value.code() == code, (name, err.value.details())  # type: ignore[attr-defined]
        details = err.value.details() or ""  # type: ignore[attr-defined]
        assert text in details, (name, details)
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED:  # refused by the upstream: named
            assert "variant 'canary'" in details, (name, details)
    assert served(sidecar.control_address) == before


def test_malformed_body_through_the_front_door_is_invalid_argument(
    sidecar: SidecarProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """A body that is not a protobuf message at its top level (raw bytes through a
    generic call) gets the sidecar's INVALID_ARGUMENT; one whose nested tensor is broken
    gets MLServer's own status; nothing is counted as served either way."""
    channel = grpc.insecure_channel(sidecar.predict_address)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    good = base_request(iris_x).SerializeToString()
    before = served(sidecar.control_address)
    for name, body, text in (
        ("truncated", good[:-5], "runs past the end"),
        ("group wire type", b"\x0b" + good, "wire type 3"),
        ("overlong varint", b"\x0a" + b"\xff" * 11, "varint"),
        ("model name not UTF-8", good + b"\x0a\x02\xc3\x28", "UTF-8"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            raw(body, metadata=(("x-user-id", "user-1"),), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name  # type: ignore[attr-defined]
        assert text in (err.value.details() or ""), name  # type: ignore[attr-defined]
    # inputs[0] (field 5) holding a truncated message: the scan only reads the top level
    nested = b"\x0a\x0aclassifier" + b"\x2a\x03\x0a\x05x"
    with pytest.raises(grpc.RpcError) as err:
        raw(nested, metadata=(("x-user-id", "qa-user"),), timeout=10)
    assert err.value.code() != grpc.StatusCode.OK  # type: ignore[attr-defined]
    assert "variant 'canary'" in (err.value.details() or "")  # type: ignore[attr-defined]
    assert served(sidecar.control_address) == before


def test_appended_model_fields_are_honoured_by_mlserver(
    sidecar: SidecarProcess, mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """The sidecar appends the variant's model_name / model_version to the caller's
    bytes: MLServer honours the last value (the same request sent straight to MLServer
    with the same fields appended answers the same). The caller names no version (a
    version no served variant has is NOT_FOUND: test_passthrough_versions.py)."""
    request = base_request(iris_x, rows=150)
    request.model_version = ""  # the variant's version is appended
    request.id = "req-1"
    direct_raw = grpc.insecure_channel(mlserver.grpc_address).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )  # bytes as they are: the appended field is not re-serialised away
    via = raw_stub(sidecar.predict_address)
    for user, version in (("qa-user", "v2"), ("user-1", None)):
        reply, call = via.ModelInfer.with_call(request, metadata=(("x-user-id", user),))
        variant = dict(call.trailing_metadata())["x-variant"]
        version = version or {"stable": "v1", "canary": "v2"}[variant]
        assert reply.model_version == version and reply.model_name == "classifier"
        assert reply.id == "req-1"
        appended = request.SerializeToString() + b"\x12\x02" + version.encode()
        expected = service_pb2.ModelInferResponse.FromString(direct_raw(appended, timeout=10))
        assert reply.outputs == expected.outputs
        assert reply.raw_output_contents == expected.raw_output_contents


def test_readiness_and_metadata_answer_for_the_routed_model(sidecar: SidecarProcess) -> None:
    """ServerLive/Ready, ModelReady and ModelMetadata answer for the routed model."""
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("classifier")
    assert client.get_model_metadata("classifier").name == "classifier"
    assert client.get_server_metadata().name == "rollout-sidecar"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("other")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_health_and_reflection_on_predict_port(sidecar: SidecarProcess) -> None:
    """grpc.health.v1 reports SERVING for the routed services; reflection lists them."""
    channel = grpc.insecure_channel(sidecar.predict_address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sidecar.v1.Predict", "inference.GRPCInferenceService"):
        deadline = time.monotonic() + 10
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {
        "sidecar.v1.Predict",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names


def test_sigterm_drains_in_flight_requests_and_exits_zero(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """SIGTERM while requests run: they complete, new ones are refused, exit code 0."""
    proc = SidecarProcess(sidecar_config(mlserver.grpc_address), run_dir=tmp_path).start()
    client = grpcclient.InferenceServerClient(proc.predict_address)
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(200):
                triton_infer(client, iris_x[i % 150 : i % 150 + 1], headers={"x-user-id": f"u{i}"})
                results.append("ok")
        except InferenceServerException as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    deadline = time.monotonic() + 10
    while len(results) < 5 and time.monotonic() < deadline:  # requests are flowing
        time.sleep(0.01)
    assert proc._proc is not None
    proc._proc.send_signal(signal.SIGTERM)
    code = proc.stop()
    thread.join(10)
    assert code == 0
    assert results, "requests before SIGTERM were served"
    # Calls after shutdown are refused, never answered wrongly: UNAVAILABLE, or CANCELLED
    # for a call whose stream opened just as the server closed the connection (a gRPC
    # transport race seen about once in 20 runs; the process still drained and exited 0).
    statuses = [(str(e.status()), e.message()) for e in errors]  # type: ignore[attr-defined]
    assert all("UNAVAILABLE" in status or "CANCELLED" in status for status, _ in statuses), statuses
    assert any(e.get("event") == "sidecar.stopped" for e in proc.events)

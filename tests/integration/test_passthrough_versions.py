"""Every model on the server and explicit versions, end to end: ONE real MLServer serving
`classifier` v1 / v2 (routed by the sidecar: stable v1, canary v2) and `classifier-weak`
and `classifier-shadow-same` (not routed: they pass through to the same MLServer), the
real `sidecar serve` process, tritonclient as the app (and the sidecar's Predict client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from clients.predict import PredictClient
from sidecar.testing.credentials import control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

ROUTED = "classifier"
PASSED = "classifier-weak"  # a stump: its answers differ from classifier's


@pytest.fixture(scope="module")
def sidecar(
    mlserver: MLServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProcess]:
    """classifier routed 90/10 (v1 stable, v2 canary); every other model passes through
    to the same MLServer."""
    address = mlserver.grpc_address
    config: dict[str, Any] = {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": ROUTED,
        "variants": {
            "stable": {"address": address, "model_name": ROUTED, "model_version": "v1"},
            "canary": {"address": address, "model_name": ROUTED, "model_version": "v2"},
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 9000, "canary": 1000},
        },
        "passthrough": {"address": address},
        "server": {"log_level": "info"},
        "control": control_section(),
    }
    with SidecarProcess(config, run_dir=tmp_path_factory.mktemp("sidecar")) as proc:
        yield proc


def request_for(rows: npt.NDArray[np.float64], model: str, version: str = "") -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="req-7")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=list(rows.shape))
    tensor.contents.fp64_contents.extend(rows.reshape(-1).tolist())
    return request


def triton_answer(
    client: grpcclient.InferenceServerClient, rows: npt.NDArray[np.float64], model: str, **kw: Any
) -> tuple[list[int], str, str]:
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(np.ascontiguousarray(rows))
    result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput("predict")], **kw)  # fmt: skip
    reply = result.get_response()
    return result.as_numpy("predict").reshape(-1).tolist(), reply.model_name, reply.model_version


def test_tritonclient_gets_mlservers_answers_for_routed_and_passed_models(
    sidecar: SidecarProcess, mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """Through the sidecar, the passed model answers exactly what MLServer answers (the
    same bytes for the same request bytes), and the routed model answers what MLServer's
    served version answers."""
    via = grpcclient.InferenceServerClient(sidecar.predict_address)
    direct = grpcclient.InferenceServerClient(mlserver.grpc_address)
    passed = triton_answer(via, iris_x, PASSED)
    assert passed == triton_answer(direct, iris_x, PASSED)
    assert passed[1:] == (PASSED, "v1")
    labels, name, version = triton_answer(via, iris_x, ROUTED, headers={"x-user-id": "u-1"})
    assert name == ROUTED and version in ("v1", "v2")
    assert labels == triton_answer(direct, iris_x, ROUTED, model_version=version)[0]
    raw = request_for(iris_x[:5], PASSED).SerializeToString()
    sidecar_bytes = grpc.insecure_channel(sidecar.predict_address).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )(raw, timeout=10)
    server_bytes = grpc.insecure_channel(mlserver.grpc_address).unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )(raw, timeout=10)
    assert sidecar_bytes == server_bytes


def test_passed_model_errors_come_back_as_mlserver_sends_them(
    sidecar: SidecarProcess, mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """A version MLServer does not have for a passed model: MLServer's status and
    message, unchanged."""
    errors = []
    for target in (sidecar.predict_address, mlserver.grpc_address):
        stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request_for(iris_x[:1], PASSED, "v9"), timeout=10)
        errors.append((info.value.code(), info.value.details()))
    assert errors[0] == errors[1] and errors[0][0] != grpc.StatusCode.OK


def test_repository_index_through_the_sidecar(
    sidecar: SidecarProcess, mlserver: MLServerProcess
) -> None:
    """tritonclient's repository index through the sidecar: the routed model once per
    served version (READY), then MLServer's own entries for every model not routed, as
    MLServer words them (MLServer 1.7 writes its state as "State.READY")."""
    via = grpcclient.InferenceServerClient(sidecar.predict_address)
    direct = grpcclient.InferenceServerClient(mlserver.grpc_address)
    index = via.get_model_repository_index(as_json=True)["models"]
    own = [(m["name"], m.get("version", ""), m["state"]) for m in index]
    assert own[:2] == [(ROUTED, "v1", "READY"), (ROUTED, "v2", "READY")]
    server = direct.get_model_repository_index(as_json=True)["models"]
    passed = sorted((m["name"], m.get("version", ""), m["state"]) for m in server if m["name"] != ROUTED)  # fmt: skip
    assert sorted(own[2:]) == passed and PASSED in [name for name, _, _ in passed]


def test_version_requests_choose_the_variant_or_are_not_found(
    sidecar: SidecarProcess, mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """v1 -> stable, v2 -> canary (x-variant, and Predict's variant and reason), for any
    user; v9 -> NOT_FOUND; is_model_ready for v9 is false, for v1 / v2 true; metadata for
    v2 is MLServer's for v2, for v9 NOT_FOUND."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sidecar.predict_address))
    for version, variant in (("v1", "stable"), ("v2", "canary")):
        for user in ("u-1", "u-2", "u-3"):
            reply, call = stub.ModelInfer.with_call(
                request_for(iris_x[:3], ROUTED, version), metadata=(("x-user-id", user),)
            )
            assert dict(call.trailing_metadata())["x-variant"] == variant
            assert (reply.model_name, reply.model_version) == (ROUTED, version)
    with PredictClient(sidecar.predict_address) as client:
        answer = client.predict({"input-0": iris_x[:2]}, targeting_key="u-1", version="v2")
        assert (answer.variant, answer.reason, answer.model_version) == (
            "canary",
            "VERSION_REQUESTED",
            "v2",
        )
    triton = grpcclient.InferenceServerClient(sidecar.predict_address)
    with pytest.raises(InferenceServerException) as info:
        triton_answer(triton, iris_x[:1], ROUTED, model_version="v9")
    assert "NOT_FOUND" in str(info.value.status())
    assert "has no version 'v9'" in str(info.value.message())
    assert not triton.is_model_ready(ROUTED, "v9")
    assert triton.is_model_ready(ROUTED, "v1") and triton.is_model_ready(ROUTED, "v2")
    assert triton.is_model_ready(PASSED)
    direct = grpcclient.InferenceServerClient(mlserver.grpc_address)
    meta = triton.get_model_metadata(ROUTED, "v2", as_json=True)
    assert meta == direct.get_model_metadata(ROUTED, "v2", as_json=True)
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata(ROUTED, "v9")
    assert "NOT_FOUND" in str(info.value.status())


def test_routed_models_cannot_be_unloaded_through_the_sidecar(sidecar: SidecarProcess) -> None:
    """Unloading the routed model through the sidecar is refused (FAILED_PRECONDITION),
    and it stays ready."""
    triton = grpcclient.InferenceServerClient(sidecar.predict_address)
    with pytest.raises(InferenceServerException) as info:
        triton.unload_model(ROUTED)
    assert "FAILED_PRECONDITION" in str(info.value.status())
    assert triton.is_model_ready(ROUTED, "v1")

"""What an app sees of its model server through the sidecar, with tritonclient: a failure
names the variant and never the model server's address (the sidecar's log has it), and
the trailing metadata MLServer sends with an answer reaches the app next to the
sidecar's own x-variant / x-request-id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from sidecar.testing.credentials import control_section
from sidecar.testing.mlserver import (
    MLServerProcess,
    ModelSpec,
    free_port,
    write_model_repository,
)
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

MODEL_TRAILERS = (("x-model-runtime", "sklearn"), ("x-served-by", "mlserver"))


def config(stable: tuple[str, str], canary: tuple[str, str], canary_bp: int) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": stable[0], "model_name": "classifier", "model_version": stable[1]},
            "canary": {"address": canary[0], "model_name": "classifier", "model_version": canary[1]},
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 10_000 - canary_bp, "canary": canary_bp},
        },
        "control": control_section(),
    }  # fmt: skip


def failure(client: grpcclient.InferenceServerClient, x: npt.NDArray[np.float64]) -> Any:
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(x[:1])
    with pytest.raises(InferenceServerException) as info:
        client.infer("classifier", [tensor], headers={"x-user-id": "u1"})
    return info.value


def test_failures_name_the_variant_not_the_address(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """A canary whose model server is down: tritonclient gets UNAVAILABLE naming the
    variant, without its address (in the sidecar's log instead, once: rate-limited). A
    canary asking MLServer for a version it does not have: MLServer's own words pass,
    naming the variant, without the address."""
    dead = f"127.0.0.1:{free_port()}"
    raw = config((mlserver.grpc_address, "v1"), (dead, "v2"), 10_000)
    with SidecarProcess(raw, run_dir=tmp_path / "dead") as sc:
        client = grpcclient.InferenceServerClient(sc.predict_address)
        errors = [failure(client, iris_x) for _ in range(5)]
        logged = sc.wait_for_event("upstream.failed")
    for exc in errors:
        assert exc.status() == "StatusCode.UNAVAILABLE"
        assert exc.message() == "variant 'canary' is unavailable", exc.message()
        assert dead not in str(exc) and dead.split(":")[1] not in str(exc)
    assert logged["address"] == dead and logged["variant"] == "canary"
    assert dead.split(":")[1] in logged["details"]
    assert len([e for e in sc.events if e.get("event") == "upstream.failed"]) == 1

    raw = config((mlserver.grpc_address, "v1"), (mlserver.grpc_address, "v9"), 10_000)
    with SidecarProcess(raw, run_dir=tmp_path / "v9") as sc:
        exc = failure(grpcclient.InferenceServerClient(sc.predict_address), iris_x)
    assert exc.message().startswith("variant 'canary' failed: "), exc.message()
    assert "v9" in exc.message()  # MLServer's message: the version it does not have
    assert mlserver.grpc_address not in str(exc) and str(mlserver.grpc_port) not in str(exc)


def test_mlserver_trailers_reach_the_app(tmp_path: Path, iris_x: npt.NDArray[np.float64]) -> None:
    """A model whose answers carry headers: MLServer sends them as trailing metadata and
    the app (tritonclient's generated stub) gets them with x-variant / x-request-id."""
    repo = write_model_repository(
        tmp_path / "models",
        [ModelSpec("classifier", "v1", "logreg", trailers=MODEL_TRAILERS)],
    )
    with MLServerProcess(repo, run_dir=tmp_path / "mlserver") as server:
        direct = service_pb2_grpc.GRPCInferenceServiceStub(
            grpc.insecure_channel(server.grpc_address)
        )
        request = service_pb2.ModelInferRequest(model_name="classifier", model_version="v1")
        tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
        tensor.contents.fp64_contents.extend(iris_x[0].tolist())
        _, call = direct.ModelInfer.with_call(request, timeout=10)
        assert set(MODEL_TRAILERS) <= set(call.trailing_metadata())  # MLServer sends them
        raw = config((server.grpc_address, "v1"), (server.grpc_address, "v1"), 0)
        with SidecarProcess(raw, run_dir=tmp_path / "sidecar") as sc:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(
                grpc.insecure_channel(sc.predict_address)
            )
            reply, call = stub.ModelInfer.with_call(
                request, metadata=(("x-user-id", "u1"),), timeout=10
            )
    trailers = dict(call.trailing_metadata())
    assert trailers["x-model-runtime"] == "sklearn" and trailers["x-served-by"] == "mlserver"
    assert trailers["x-variant"] == "stable" and len(trailers["x-request-id"]) == 32
    assert reply.model_name == "classifier" and len(reply.outputs) == 1

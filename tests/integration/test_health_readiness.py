"""The overall health status (grpc.health.v1, service "") is readiness: it follows the
stable variant's MLServer. Killed: NOT_SERVING; back on the same port: SERVING. Liveness
(OIP ServerLive, health service "liveness") stays true while the sidecar runs. What a
Kubernetes readiness probe (`grpc: {port: 8500, service: ""}`) sees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from sidecar.testing.credentials import control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def stable_only(address: str) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": address, "model_name": "classifier", "model_version": "v1"}
        },
        "flag": {"key": "classifier-rollout", "stable": "stable", "weights": {"stable": 10000}},
        "control": control_section(),
        "upstream": {"connect_timeout": 1.0},
    }


def wait_for_status(health: health_pb2_grpc.HealthStub, want: int, timeout: float = 30.0) -> None:
    """Poll the overall status until it is `want` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        if status == want:
            return
        assert time.monotonic() < deadline, f'"" is {status}, not {want}, after {timeout} s'
        time.sleep(0.1)


def test_overall_health_follows_the_stable_model_server(
    fresh_mlserver: MLServerProcess, tmp_path: Path
) -> None:
    """SERVING with the stable's MLServer up; NOT_SERVING once it is SIGKILLed (and
    inference fails meanwhile), while ServerLive stays true; SERVING again once it is
    back on the same port, and inference works again."""
    with SidecarProcess(stable_only(fresh_mlserver.grpc_address), run_dir=tmp_path) as sc:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(sc.predict_address))
        client = grpcclient.InferenceServerClient(sc.predict_address)
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]]))
        wait_for_status(health, SERVING)
        fresh_mlserver.kill()
        wait_for_status(health, NOT_SERVING)
        with pytest.raises(InferenceServerException) as failed:
            client.infer("classifier", [tensor])
        assert failed.value.status() == "StatusCode.UNAVAILABLE"
        assert client.is_server_live()
        assert not client.is_server_ready()
        liveness = health_pb2.HealthCheckRequest(service="liveness")
        assert health.Check(liveness, timeout=5).status == SERVING  # what liveness probes ask
        fresh_mlserver.restart()
        wait_for_status(health, SERVING)
        assert client.infer("classifier", [tensor]).get_response().model_version == "v1"

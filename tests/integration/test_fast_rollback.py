"""The fast path end to end: stable and canary on two real MLServer processes, the real
sidecar process in front, ~100 requests a second through tritonclient; the canary's
MLServer is SIGKILLed and the sidecar rolls back by itself, long before its statistical
judge (60 s interval) would look. The failures the apps saw are counted, not timed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer, control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

RATE = 100.0  # requests a second, over all client threads
THREADS = 4
MAX_FAILED = 150  # the judge alone: up to one 60 s interval of canary failures (~3,000)


def sidecar_config(stable: str, canary: str) -> dict[str, Any]:
    def variant(address: str, version: str) -> dict[str, str]:
        return {"address": address, "model_name": "classifier", "model_version": version}

    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {"stable": variant(stable, "v1"), "canary": variant(canary, "v2")},
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 5000, "canary": 5000},
        },
        "control": control_section(),
        # The default judge (60 s interval) and the default fast path (>= 50% of >= 20
        # requests within 5 s), written out so the test says what it holds.
        "analysis": {
            "interval": 60.0,
            "fast_rollback": {"min_requests": 20, "failure_ratio": 0.5, "window": 5.0},
        },
    }


class Traffic:
    """`THREADS` tritonclient callers pacing themselves to `RATE` requests a second in
    all, each request with its own user; `outcomes` holds (model version or status)."""

    def __init__(self, address: str, x: npt.NDArray[np.float64]) -> None:
        self.address = address
        self.x = x
        self.outcomes: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(THREADS)]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _run(self, n: int) -> None:
        client = grpcclient.InferenceServerClient(self.address)
        period = THREADS / RATE
        due = time.monotonic()
        i = 0
        while not self.stop.is_set():
            tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
            tensor.set_data_from_numpy(self.x[i % 150 : i % 150 + 1])
            try:
                result = client.infer(
                    "classifier", [tensor], headers={"x-user-id": f"t{n}-{i}"}, client_timeout=5
                )
                self.outcomes.append(str(result.get_response().model_version))
            except InferenceServerException as exc:
                self.outcomes.append(str(exc.status()))
            i += 1
            due += period
            self.stop.wait(max(0.0, due - time.monotonic()))  # pacing, not waiting on a state

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Until `count` outcomes are in (bounded)."""
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < count:
            assert time.monotonic() < deadline, f"only {len(self.outcomes)} of {count} requests"
            time.sleep(0.02)


def audit(control_address: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "clients.sidecarctl", "--target", control_address,
         "audit", "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "SIDECARCTL_TOKEN": OPERATOR_TOKEN},
    )  # fmt: skip
    entries: list[dict[str, Any]] = json.loads(done.stdout)
    return entries


def test_a_killed_canary_is_rolled_back_by_the_fast_path(
    mlserver: MLServerProcess,
    fresh_mlserver: MLServerProcess,
    iris_x: npt.NDArray[np.float64],
    tmp_path: Path,
) -> None:
    """50/50 at ~100 requests a second; SIGKILL the canary's MLServer: the sidecar rolls
    back as health-checker with the fast path's reason (audited), at most MAX_FAILED
    requests fail (all UNAVAILABLE, the canary's), and every request after the rollback
    is served by stable."""
    config = sidecar_config(mlserver.grpc_address, fresh_mlserver.grpc_address)
    with SidecarProcess(config, run_dir=tmp_path / "sidecar") as sc:
        control = control_pb2_grpc.ControlStub(grpc.insecure_channel(sc.control_address))

        def canary_weight() -> int:
            state = control.GetState(control_pb2.GetStateRequest(), metadata=bearer(VIEWER_TOKEN))
            return int(dict(state.flag.weights)["canary"])

        with Traffic(sc.predict_address, iris_x) as traffic:
            traffic.wait_for(200)
            healthy = list(traffic.outcomes)
            fresh_mlserver.kill()
            deadline = time.monotonic() + 30
            while canary_weight() > 0:
                assert time.monotonic() < deadline, "no rollback within 30 s"
                time.sleep(0.05)
            rolled_back_at = len(traffic.outcomes)
            traffic.wait_for(rolled_back_at + 200)
        after_kill = traffic.outcomes[len(healthy) :]
        entries = audit(sc.control_address)
    assert {"v1", "v2"} <= set(healthy) and set(healthy) <= {"v1", "v2"}
    failed = [o for o in after_kill if o not in ("v1", "v2")]
    assert 0 < len(failed) <= MAX_FAILED, len(failed)
    assert set(failed) == {"StatusCode.UNAVAILABLE"}
    # A few requests already on their way to the canary may end after the poll saw the
    # rollback; the 100 last ones were all routed after it.
    assert traffic.outcomes[-100:] == ["v1"] * 100
    rollback = entries[-1]
    assert (rollback["method"], rollback["principal"]) == ("Rollback", "health-checker")
    assert rollback["reason"].startswith("fast-path: canary failed ")
    assert [e["method"] for e in entries].count("Rollback") == 1

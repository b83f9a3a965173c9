"""Automatic rollback end to end: stable on MLServer, canary on a fault-injecting proxy
in front of MLServer that starts failing mid-stage; the real sidecar process rolls back
by itself. Observed through WatchState, the audit log (sidecarctl) and the spans."""

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
from sidecar.testing.fault_upstream import Fault, ThreadedFaultInjectingUpstream
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.otlp import OtlpReceiver
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration


def test_failing_canary_rolls_back_by_itself(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Canary errors start mid-stage; within the evaluation interval the sidecar sends all
    traffic to stable as `health-checker`, audited with the verdict; stable requests
    never fail; the canary's failures are visible in the spans."""
    with (
        OtlpReceiver() as receiver,
        ThreadedFaultInjectingUpstream(target=mlserver.grpc_address) as canary_proxy,
    ):
        config: dict[str, Any] = {
            "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
            "model": "classifier",
            "variants": {
                "stable": {
                    "address": mlserver.grpc_address,
                    "model_name": "classifier",
                    "model_version": "v1",
                },
                "canary": {
                    "address": canary_proxy.address,
                    "model_name": "classifier",
                    "model_version": "v2",
                },
            },
            "flag": {
                "key": "classifier-rollout",
                "stable": "stable",
                "canary": "canary",
                "weights": {"stable": 7000, "canary": 3000},
            },
            "control": control_section(),
            # The canary's proxy hop adds latency; this test is about errors, so the
            # latency guards are widened to keep the healthy phase healthy.
            "analysis": {
                "interval": 0.5,
                "lookback": 3.0,
                "bucket": 0.5,
                "horizon": 60.0,
                "min_requests": 40,
                "min_latency_samples": 40,
                "max_p50_ratio": 5.0,
                "max_p95_ratio": 5.0,
                # This test is about the statistical judge: the fast path (which would
                # roll this canary back first) is tested in test_fast_rollback.py.
                "fast_rollback": {"enabled": False},
            },
        }
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        with SidecarProcess(config, run_dir=tmp_path, extra_env=env) as sc:
            control = control_pb2_grpc.ControlStub(grpc.insecure_channel(sc.control_address))
            states: list[control_pb2.State] = []
            stream = control.WatchState(
                control_pb2.WatchStateRequest(), metadata=bearer(VIEWER_TOKEN)
            )

            def watch() -> None:
                try:
                    for state in stream:
                        states.append(state)
                except grpc.RpcError:
                    return

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            outcomes: list[tuple[str, str]] = []  # (version or "ERROR", status)
            stop = threading.Event()

            def traffic(n: int) -> None:
                client = grpcclient.InferenceServerClient(sc.predict_address)
                i = 0
                while not stop.is_set():
                    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
                    tensor.set_data_from_numpy(iris_x[i % 150 : i % 150 + 1])
                    try:
                        result = client.infer(
                            "classifier", [tensor], headers={"x-user-id": f"t{n}-{i}"}
                        )
                        outcomes.append((result.get_response().model_version, "OK"))
                    except InferenceServerException as exc:
                        outcomes.append(("ERROR", str(exc.status())))
                    i += 1

            threads = [threading.Thread(target=traffic, args=(n,)) for n in range(3)]
            for t in threads:
                t.start()
            # healthy stage: wait (bounded) until the controller has judged the canary PASS
            judged = time.monotonic() + 30
            while not control.GetRollout(
                control_pb2.GetRolloutRequest(), metadata=bearer(VIEWER_TOKEN)
            ).verdict.startswith("PASS"):
                assert time.monotonic() < judged, "the canary was never judged"
                time.sleep(0.1)
            early = [s.update_reason for s in states if s.updated_by == "health-checker"]
            assert not early, early
            canary_proxy.inject(
                Fault(status=grpc.StatusCode.INTERNAL, message="canary model crashed")
            )
            failing_since = time.monotonic()
            deadline = failing_since + 30
            while time.monotonic() < deadline and not any(
                s.updated_by == "health-checker" for s in states
            ):
                time.sleep(0.1)
            detected_after = time.monotonic() - failing_since
            served = len(outcomes)  # traffic goes on after the rollback, all to stable
            while len(outcomes) < served + 50 and time.monotonic() < deadline + 10:
                time.sleep(0.05)
            stop.set()
            for t in threads:
                t.join(10)
            stream.cancel()
            env_ctl = {**os.environ, "SIDECARCTL_TOKEN": OPERATOR_TOKEN}
            audit = subprocess.run(
                [sys.executable, "-m", "clients.sidecarctl", "--target", sc.control_address,
                 "audit", "-o", "json"],
                capture_output=True, text=True, env=env_ctl, timeout=60, check=True,
            )  # fmt: skip
            spans = receiver.wait_for(
                lambda s: any(
                    x.attributes.get("feature_flag.result.variant") == "canary"
                    and x.attributes.get("rpc.grpc.status_code") == 13
                    for x in s
                ),
                timeout=20,
            )
    rolled = next(s for s in states if s.updated_by == "health-checker")
    assert dict(rolled.flag.weights)["canary"] == 0
    assert detected_after < 10.0, detected_after
    entries = json.loads(audit.stdout)
    rollback = entries[-1]
    assert rollback["method"] == "Rollback" and rollback["principal"] == "health-checker"
    assert "error_rate" in rollback["reason"]
    stable_errors = [o for o in outcomes if o[0] == "ERROR"]
    versions = {o[0] for o in outcomes}
    assert "v1" in versions and "v2" in versions
    # Only canary requests failed, and only while the canary was failing.
    assert len(stable_errors) > 0
    assert all(status == "StatusCode.INTERNAL" for _, status in stable_errors)
    failed_spans = [
        s for s in spans
        if s.kind == 2 and s.attributes.get("rpc.grpc.status_code") == 13
    ]  # fmt: skip
    assert failed_spans and all(
        s.attributes["feature_flag.result.variant"] == "canary" for s in failed_spans
    )

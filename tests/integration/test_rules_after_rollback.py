"""Rollback means every request: after the AUTOMATIC rollback of a failing canary (stable
on MLServer, canary on a fault-injecting proxy in front of MLServer), a user pinned to the
canary and a segment routed to it are served by stable; `sidecarctl status` shows their
rules suspended; `sidecarctl rules restore` brings them back and is in the audit log."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from sidecar.testing.control_cli import ok, sidecarctl, status_json
from sidecar.testing.credentials import OPERATOR_TOKEN, control_section
from sidecar.testing.fault_upstream import Fault, ThreadedFaultInjectingUpstream
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

PINNED = {"x-user-id": "qa-user-1"}
SEGMENT = {"x-user-id": "someone", "x-segment": "internal"}


def config(stable: str, canary: str) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": stable, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": canary, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 7000, "canary": 3000},
            "segments": ["internal"],
        },
        "control": control_section(),
        # As in test_auto_rollback: the proxy hop adds latency; this test is about errors.
        "analysis": {
            "interval": 0.5,
            "lookback": 3.0,
            "bucket": 0.5,
            "horizon": 60.0,
            "min_requests": 40,
            "min_latency_samples": 40,
            "max_p50_ratio": 5.0,
            "max_p95_ratio": 5.0,
        },
    }


def served_by(address: str, x: npt.NDArray[np.float64], headers: dict[str, str]) -> str:
    """The x-variant trailer of one ModelInfer (tritonclient's generated stub)."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    request = service_pb2.ModelInferRequest(model_name="classifier")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(x[0].tolist())
    _, call = stub.ModelInfer.with_call(request, metadata=tuple(headers.items()), timeout=10)
    return str(dict(call.trailing_metadata())["x-variant"])


def version_of(
    client: grpcclient.InferenceServerClient, x: npt.NDArray[np.float64], headers: dict[str, str]
) -> str:
    """The model version that answered (tritonclient.infer), or ERROR:<status>."""
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(x[:1])
    try:
        result = client.infer("classifier", [tensor], headers=headers)
    except InferenceServerException as exc:
        return f"ERROR:{exc.status()}"
    return str(result.get_response().model_version)


def load(address: str, x: npt.NDArray[np.float64], stop: threading.Event) -> None:
    """Split traffic for the judge: many users, none pinned."""
    client = grpcclient.InferenceServerClient(address)
    i = 0
    while not stop.is_set():
        version_of(client, x[i % 150 :], {"x-user-id": f"load-{i}"})
        i += 1


def wait_for(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_automatic_rollback_suspends_pinned_users_and_segments(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Any
) -> None:
    """Pinned user and segment: canary before, stable after the automatic rollback (the
    canary still failing), suspended in status (text and json), back on the canary after
    `rules restore`, which the audit log records with suspended true -> false."""
    with (
        ThreadedFaultInjectingUpstream(target=mlserver.grpc_address) as canary_proxy,
        SidecarProcess(config(mlserver.grpc_address, canary_proxy.address), run_dir=tmp_path) as sc,
    ):
        ctl = sc.control_address
        ok(sidecarctl(ctl, "override", "set", "qa-user-1", "canary", "--reason", "QA", token=OPERATOR_TOKEN))  # fmt: skip
        ok(sidecarctl(ctl, "segment", "set", "internal", "canary", "--reason", "dogfood", token=OPERATOR_TOKEN))  # fmt: skip
        client = grpcclient.InferenceServerClient(sc.predict_address)
        assert version_of(client, iris_x, PINNED) == "v2"
        assert version_of(client, iris_x, SEGMENT) == "v2"
        assert served_by(sc.predict_address, iris_x, PINNED) == "canary"

        stop = threading.Event()
        threads = [
            threading.Thread(target=load, args=(sc.predict_address, iris_x, stop)) for _ in range(3)
        ]
        for t in threads:
            t.start()
        try:
            canary_proxy.inject(Fault(status=grpc.StatusCode.INTERNAL, message="crashed"))
            assert version_of(client, iris_x, PINNED) == "ERROR:StatusCode.INTERNAL"
            rolled = wait_for(
                lambda: (
                    (s := status_json(ctl, OPERATOR_TOKEN))["updated_by"] == "health-checker" and s
                ),
                60,
                "no automatic rollback",
            )
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        # The canary is still failing: whatever reaches it fails. Nothing does.
        assert rolled["rules_suspended"] is True
        assert rolled["rules_suspended_reason"].startswith("Rollback by health-checker: ")
        assert rolled["user_overrides"] == {"qa-user-1": "canary"}  # kept
        assert rolled["segment_rules"] == [{"segment": "internal", "variant": "canary"}]
        for _ in range(20):
            assert version_of(client, iris_x, PINNED) == "v1"
            assert version_of(client, iris_x, SEGMENT) == "v1"
        assert served_by(sc.predict_address, iris_x, PINNED) == "stable"
        assert served_by(sc.predict_address, iris_x, SEGMENT) == "stable"
        text = ok(sidecarctl(ctl, "status", token=OPERATOR_TOKEN))
        assert "RULES SUSPENDED since Rollback by health-checker" in text
        assert "user overrides (suspended)" in text and "qa-user-1 -> canary" in text

        canary_proxy.heal()
        restored = ok(sidecarctl(ctl, "rules", "restore", "--reason", "canary fixed", token=OPERATOR_TOKEN))  # fmt: skip
        assert "SUSPENDED" not in restored
        assert version_of(client, iris_x, PINNED) == "v2"
        assert served_by(sc.predict_address, iris_x, SEGMENT) == "canary"
        audit = json.loads(ok(sidecarctl(ctl, "audit", "-o", "json", token=OPERATOR_TOKEN)))
    rollback = next(e for e in audit if e["principal"] == "health-checker")
    assert rollback["method"] == "Rollback"
    assert rollback["diff"]["rules_suspended"] == [False, True]
    restore = audit[-1]
    assert (restore["method"], restore["reason"]) == ("RestoreRules", "canary fixed")
    assert restore["diff"]["rules_suspended"] == [True, False]


def test_manual_rollback_and_restore_through_sidecarctl(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Any
) -> None:
    """`sidecarctl rollback` with every weight already on stable and only a pin on the
    canary: not refused; the pinned user is served by stable until `rules restore`."""
    raw = config(mlserver.grpc_address, mlserver.grpc_address)
    raw["flag"]["weights"] = {"stable": 10_000, "canary": 0}
    raw["flag"]["user_overrides"] = {"qa-user-1": "canary"}
    with SidecarProcess(raw, run_dir=tmp_path) as sc:
        ctl = sc.control_address
        client = grpcclient.InferenceServerClient(sc.predict_address)
        assert version_of(client, iris_x, PINNED) == "v2"
        out = ok(sidecarctl(ctl, "rollback", "--reason", "bad model", token=OPERATOR_TOKEN))
        assert "RULES SUSPENDED since Rollback by ops: bad model" in out
        assert version_of(client, iris_x, PINNED) == "v1"
        ok(sidecarctl(ctl, "rules", "restore", "--reason", "fixed", token=OPERATOR_TOKEN))
        assert version_of(client, iris_x, PINNED) == "v2"
        again = sidecarctl(ctl, "rules", "restore", "--reason", "twice", token=OPERATOR_TOKEN)
        assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr

"""SIGHUP re-reads the configuration file of a running sidecar (real process, real
MLServer): a valid change that can apply live is applied (the shadow sample rate: from
none mirrored to all), an invalid file is refused with the field named and changes
nothing, a change that needs a restart is reported as such; the process keeps serving
throughout and never exits on SIGHUP."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.testing.credentials import control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration
TIMEOUT = 20.0


def config(address: str, sample_bp: int, **analysis: Any) -> dict[str, Any]:
    def variant(version: str) -> dict[str, str]:
        return {"address": address, "model_name": "classifier", "model_version": version}

    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0", "metrics": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {"stable": variant("v1"), "canary": variant("v2"), "shadow": variant("v2")},
        "flag": {"key": "k", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 10_000, "canary": 0}},
        "shadow": {"variant": "shadow", "sample_bp": sample_bp},
        "server": {"log_level": "info"},
        "control": control_section(),
        "state": {"backend": "memory"},
        "analysis": analysis,
    }  # fmt: skip


def comparisons(metrics: str) -> float:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sidecar_shadow_comparisons_total"
    )


def events_named(sidecar: SidecarProcess, name: str, count: int) -> list[dict[str, Any]]:
    """The first `count` events called `name`, waiting for them within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = [e for e in list(sidecar.events) if e.get("event") == name]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{name}: {len(found)} of {count}"
            return found
        time.sleep(0.05)


@pytest.fixture
def sidecar(mlserver: MLServerProcess) -> Iterator[SidecarProcess]:
    with SidecarProcess(config(mlserver.grpc_address, 0)) as proc:
        yield proc


def infer(sidecar: SidecarProcess, rows: npt.NDArray[np.float64], n: int, tag: str) -> None:
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.ascontiguousarray(rows[:1], dtype=np.float64))
    for i in range(n):
        result = client.infer("classifier", [tensor], headers={"x-user-id": f"{tag}-{i}"})
        assert result.get_response().model_version == "v1"


def wait_comparisons(metrics: str, at_least: float) -> float:
    deadline = time.monotonic() + TIMEOUT
    while (seen := comparisons(metrics)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(
    sidecar: SidecarProcess, mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    metrics = sidecar.wait_for_event("sidecar.started")["metrics"]
    assert sidecar.pid is not None
    infer(sidecar, iris_x, 10, "before")
    assert comparisons(metrics) == 0  # sample_bp 0: nothing mirrored

    # A valid change that applies live: mirror every request from now on.
    sidecar.config_path.write_text(yaml.safe_dump(config(mlserver.grpc_address, 10_000)))
    os.kill(sidecar.pid, signal.SIGHUP)
    (reloaded,) = events_named(sidecar, "config.reloaded", 1)
    assert reloaded["applied"] == ["shadow.sample_bp"] and reloaded["restart_needed"] == []
    infer(sidecar, iris_x, 10, "after")
    assert wait_comparisons(metrics, 10) == 10

    # An invalid file: refused with the field named; the configuration in force stays.
    invalid = config(mlserver.grpc_address, 0, interval=-5)
    sidecar.config_path.write_text(yaml.safe_dump(invalid))
    os.kill(sidecar.pid, signal.SIGHUP)
    (refused,) = events_named(sidecar, "config.reload_refused", 1)
    assert any(p.startswith("analysis.interval:") for p in refused["problems"])
    assert sidecar.returncode is None
    infer(sidecar, iris_x, 10, "refused")
    assert wait_comparisons(metrics, 20) == 20  # still mirroring: sample_bp 0 not applied

    # A change only a restart can apply is reported, not applied; the stored flag wins.
    restart = config(mlserver.grpc_address, 10_000)
    restart["listen"]["control"] = "127.0.0.1:1"
    restart["flag"]["weights"] = {"stable": 5000, "canary": 5000}
    sidecar.config_path.write_text(yaml.safe_dump(restart))
    os.kill(sidecar.pid, signal.SIGHUP)
    second = events_named(sidecar, "config.reloaded", 2)[1]
    assert second["restart_needed"] == ["listen.control"]
    assert second["ignored_stored_state_wins"] == ["flag.weights.canary", "flag.weights.stable"]
    (warning,) = events_named(sidecar, "config.reload_needs_restart", 1)
    assert warning["level"] == "warning"
    infer(sidecar, iris_x, 5, "still-stable")  # the weights in force: all on v1
    assert sidecar.returncode is None

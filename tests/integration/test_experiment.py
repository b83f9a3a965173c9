"""The experiment end to end: MLServer upstreams, the real `sidecar serve` process, the
app reporting outcomes through `PredictClient.report_outcome`, and the operator reading
`sidecarctl report` (tables, JSON, HTML) and running a plan whose 50% stage waits for the
A/B verdict.

The outcome is what an app would learn later: whether the served iris class was right.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from test_control_story import ctl, ok

from clients.control import ControlClient
from clients.predict import PredictClient
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, control_section
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration


def experiment_config(
    mlserver: str, canary_model: tuple[str, str], weights: dict[str, int], **extra: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": mlserver, "model_name": "classifier", "model_version": "v1"},
            "canary": {
                "address": mlserver,
                "model_name": canary_model[0],
                "model_version": canary_model[1],
            },
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": weights,
            "segments": ["mobile", "desktop"],
        },
        "experiment": {
            "metrics": [
                {"name": "correct", "kind": "bool", "minimum_effect": 0.1, "baseline": 0.85},
                {"name": "score", "kind": "number", "minimum_effect": 0.5},
            ],
            "segments": ["mobile", "desktop"],
            "look_interval": 0.5,
        },
        "drift": {"reference_size": 200, "window_size": 200, "sample_every": 1},
        "control": control_section(),
        "server": {"log_level": "info"},
    }
    config.update(extra)
    return config


def wait_for_saves(path: Path, saves: int, timeout: float = 20.0) -> None:
    """Poll the checkpoint file until it has been rewritten `saves` times (bounded)."""
    deadline = time.monotonic() + timeout
    last = path.stat().st_mtime_ns if path.exists() else 0
    seen = 0
    while seen < saves:
        assert time.monotonic() < deadline, f"{path} not rewritten {saves} times in time"
        stamp = path.stat().st_mtime_ns if path.exists() else 0
        if stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.02)


def drive(
    sc: SidecarProcess,
    rows: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    users: range,
    *,
    order: npt.NDArray[np.int64] | None = None,
) -> dict[str, int]:
    """One prediction per user (row i % 150, or `order`), then the app reports whether the
    class was right (`correct`) and a score; returns requests per variant."""
    served: dict[str, int] = {}
    with PredictClient(sc.predict_address) as client:
        for i in users:
            row = int(order[i % len(order)]) if order is not None else i % 150
            segment = "mobile" if i % 2 else "desktop"
            p = client.predict(
                {"input-0": rows[row : row + 1]}, targeting_key=f"user-{i}", segment=segment
            )
            served[p.variant] = served.get(p.variant, 0) + 1
            right = bool(int(p.outputs["predict"].reshape(-1)[0]) == int(labels[row]))
            client.report_outcome(p.request_id, "correct", right)
            client.report_outcome(p.request_id, "score", 1.0 if right else 0.0)
    return served


def report(sc: SidecarProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ok(ctl(sc, "report", "--json", token=VIEWER_TOKEN)))
    return data


def test_report_shows_verdicts_srm_segments_shadow_and_drift(
    mlserver: MLServerProcess,
    iris_x: npt.NDArray[np.float64],
    iris_y: npt.NDArray[np.int64],
    tmp_path: Path,
) -> None:
    """50/50 between logreg v1 and tree v2 (both about 96-97% right): the report says
    Equivalent on `correct` with an anytime-valid interval inside +-0.1, the split passes
    the SRM check, both declared segments are analysed, the shadow (v2) and the noise
    mirror (v1 against itself) are compared, and the inputs are tracked for drift. Then
    only setosa rows arrive: input drift reaches MAJOR, is alerted in the log and shown in
    `sidecarctl status`. The HTML report is one self-contained file with its plots."""
    config = experiment_config(
        mlserver.grpc_address,
        ("classifier", "v2"),
        {"stable": 5000, "canary": 5000},
        shadow={"variant": "canary", "sample_bp": 10_000, "noise_sample_bp": 10_000},
        analysis={"shadow_min_comparisons": 200},
    )
    rng = np.random.default_rng(7)
    with SidecarProcess(config, run_dir=tmp_path / "sc") as sc:
        served = drive(sc, iris_x, iris_y, range(1200), order=rng.permutation(150))
        assert set(served) == {"stable", "canary"}
        data = report(sc)
        assert data["control_variant"] == "stable" and data["treatment_variant"] == "canary"
        assert data["srm"]["mismatch"] is False
        metrics = {m["metric"]: m for m in data["metrics"]}
        correct = metrics["correct"]
        assert correct["verdict"] == "EQUIVALENT", correct
        n_a, n_b = correct["control"]["n"], correct["treatment"]["n"]
        assert n_a + n_b == 1200 and n_a == served["stable"]
        lower, upper = correct["difference"]["lower"], correct["difference"]["upper"]
        assert -0.1 < lower <= correct["difference"]["value"] <= upper < 0.1
        assert [s["segment"] for s in correct["segments"]] == ["mobile", "desktop"]
        assert metrics["score"]["kind"] == "number"
        shadow = data["shadow"]
        assert shadow["compared"] > 0 and shadow["recommendation"]
        assert shadow["noise"]["compared"] > 0
        assert shadow["noise"]["noise_disagreement"]["value"] == 0.0  # a deterministic model
        drift = {f["name"]: f for f in data["drift"]["features"]}
        assert {f"input-0[{j}]" for j in range(4)} <= set(drift)
        table = ok(ctl(sc, "report", token=VIEWER_TOKEN))
        assert "EQUIVALENT" in table and "correct" in table
        html = tmp_path / "report.html"
        ok(ctl(sc, "report", "--html", str(html), token=VIEWER_TOKEN))
        page = html.read_text()
        assert page.count("<svg") + page.count("data:image/png;base64") >= 4
        assert 'src="http' not in page

        setosa = np.flatnonzero(iris_y == 0)
        drive(sc, iris_x, iris_y, range(1200, 1700), order=setosa)
        drift = {f["name"]: f for f in report(sc)["drift"]["features"]}
        assert drift["input-0[2]"]["level"] == "MAJOR", drift["input-0[2]"]
        assert any(e.get("alert") == "drift.detected" for e in sc.events)
        status = json.loads(ok(ctl(sc, "status", "-o", "json", token=VIEWER_TOKEN)))
        assert any("drift" in w for w in status["warnings"]), status["warnings"]


def ab_plan() -> cpb.RolloutPlan:
    return cpb.RolloutPlan(
        stages=[
            cpb.RolloutStage(
                name="canary-50%",
                kind=cpb.STAGE_KIND_CANARY,
                canary_bp=5000,
                min_duration_seconds=0,
                min_samples=50,
                ab_gate=True,
            ),
            cpb.RolloutStage(name="promote", kind=cpb.STAGE_KIND_PROMOTE),
        ]
    )


def run_plan_until_done(
    sc: SidecarProcess,
    rows: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    budget: float = 90.0,
) -> cpb.Rollout:
    with ControlClient(sc.control_address, token=OPERATOR_TOKEN) as control:
        control.start_rollout(reason="A/B at 50%", plan=ab_plan(), force=True)
        deadline = time.monotonic() + budget
        start = 0
        while time.monotonic() < deadline:
            drive(sc, rows, labels, range(start, start + 100))
            start += 100
            rollout = control.get_rollout()
            if rollout.phase not in ("RUNNING", "PAUSED"):
                return rollout
        raise AssertionError(f"plan still {control.get_rollout()} after {budget}s")


@pytest.mark.parametrize(
    ("canary", "phase"),
    [(("classifier-weak", "v1"), "ROLLED_BACK"), (("classifier", "v2"), "SUCCEEDED")],
    ids=["worse-canary-rolled-back", "equivalent-canary-promoted"],
)
def test_fifty_percent_stage_waits_for_the_ab_verdict(
    mlserver: MLServerProcess,
    iris_x: npt.NDArray[np.float64],
    iris_y: npt.NDArray[np.int64],
    tmp_path: Path,
    canary: tuple[str, str],
    phase: str,
) -> None:
    """A plan with the A/B gate on its 50% stage: a canary that is right about 67% of the
    time against 97% (a depth-1 tree) is rolled back on Keep A; an equivalent one (tree
    v2) passes on Equivalent and is promoted. The audit log names the gate."""
    config = experiment_config(
        mlserver.grpc_address,
        canary,
        {"stable": 10_000, "canary": 0},
        analysis={"interval": 0.2, "bucket": 0.2, "lookback": 2.0, "horizon": 60.0},
    )
    with SidecarProcess(config, run_dir=tmp_path / "sc") as sc:
        rollout = run_plan_until_done(sc, iris_x, iris_y)
        assert rollout.phase == phase, rollout
        audit = json.loads(ok(ctl(sc, "audit", "-o", "json", token=VIEWER_TOKEN)))
        text = json.dumps(audit)
        if phase == "ROLLED_BACK":
            assert "ab_test" in text and "Keep A" in text.replace("KEEP_A", "Keep A"), text
        else:
            assert any(e["method"] == "Promote" for e in audit), text


def test_experiment_survives_sigkill(
    mlserver: MLServerProcess,
    iris_x: npt.NDArray[np.float64],
    iris_y: npt.NDArray[np.int64],
    tmp_path: Path,
) -> None:
    """A crash (SIGKILL) loses at most the last look interval: the experiment is
    checkpointed at every look, and the restarted sidecar reports the same epoch and
    counts, then keeps counting."""
    config = experiment_config(
        mlserver.grpc_address, ("classifier", "v2"), {"stable": 5000, "canary": 5000}
    )
    run_dir = tmp_path / "sc"
    with SidecarProcess(config, run_dir=run_dir) as sc:
        drive(sc, iris_x, iris_y, range(300))
        before = report(sc)
        # at least one look and checkpoint after the last outcome: two more saves (the
        # first may have started before the report)
        wait_for_saves(run_dir / "var" / "experiment.json", 2)
        sc.kill()
    with SidecarProcess(config, run_dir=run_dir) as sc:
        after = report(sc)
        drive(sc, iris_x, iris_y, range(300, 320))
        more = report(sc)

    def counts(data: dict[str, Any]) -> tuple[int, int]:
        correct = next(m for m in data["metrics"] if m["metric"] == "correct")
        return correct["control"]["n"], correct["treatment"]["n"]

    assert after["epoch"] == before["epoch"]
    assert counts(after) == counts(before) and sum(counts(before)) == 300
    assert sum(counts(more)) == 320

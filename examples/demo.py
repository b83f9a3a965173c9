"""`make demo`: the sidecar in front of real model servers, doing a canary with a shadow.

1. Trains two iris classifiers (v1 logistic regression, v2 decision tree) and serves them
   with MLServer (its own virtual environment, loopback ports).
2. Starts `sidecar serve` with embedded defaults: stable = v1, canary = v2 at 20%, and
   every request mirrored to a shadow candidate (v2) whose answers are compared, never
   served.
3. Sends traffic from 600 simulated users through tritonclient (the app does not know
   the sidecar is there; it passes x-user-id) and shows the split and the shadow
   comparison as they happen.
4. Flips the kill switch on and off as an operator would, showing its effect and the
   audit log.
5. Runs an automated rollout plan (shadow -> 5% -> 25% -> promote) that advances only
   through its gates, judged by the health checker on live spans.
6. Stops everything it started.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.control import ControlClient
from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer, control_section
from sidecar.testing.mlserver import (
    MLServerProcess,
    ModelSpec,
    iris_features,
    write_model_repository,
)
from sidecar.testing.process import SidecarProcess


def say(text: str = "") -> None:
    print(text, flush=True)


def config(mlserver: str) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": mlserver, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": mlserver, "model_name": "classifier", "model_version": "v2"},
            "candidate": {"address": mlserver, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 8000, "canary": 2000},
            "user_overrides": {"qa-user": "canary"},
            "segments": ["internal"],
            "segment_rules": [{"segment": "internal", "variant": "canary"}],
        },
        "shadow": {"variant": "candidate", "sample_bp": 10_000, "max_in_flight": 64},
        "server": {"log_level": "warning"},
        "control": control_section(),
        # Demo pace: evaluate every half second on 5-second windows (production: minutes).
        "analysis": {
            "interval": 0.5,
            "lookback": 5.0,
            "bucket": 0.5,
            "horizon": 120.0,
            "min_requests": 60,
            "min_latency_samples": 60,
            "planned_checks": 60,
        },
    }


DEMO_PLAN = control_pb2.RolloutPlan(
    stages=[
        control_pb2.RolloutStage(
            name="shadow", kind=control_pb2.STAGE_KIND_SHADOW, min_samples=200,
            min_duration_seconds=2,
        ),
        control_pb2.RolloutStage(
            name="canary-5%", kind=control_pb2.STAGE_KIND_CANARY, canary_bp=500,
            min_samples=30, min_duration_seconds=3,
        ),
        control_pb2.RolloutStage(
            name="canary-25%", kind=control_pb2.STAGE_KIND_CANARY, canary_bp=2500,
            min_samples=100, min_duration_seconds=3,
        ),
        control_pb2.RolloutStage(name="promote", kind=control_pb2.STAGE_KIND_PROMOTE),
    ]
)  # fmt: skip


GATE_NAMES = {
    control_pb2.GATE_PASS: "PASS", control_pb2.GATE_FAIL: "FAIL", control_pb2.GATE_WAIT: "WAIT",
}  # fmt: skip


def background_traffic(address: str, rows: np.ndarray, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(address)
    i = 0
    while not stop.is_set():
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(rows[i % len(rows)].reshape(1, 4))
        # The demo keeps going if a request fails; the sidecar counts and reports errors.
        with contextlib.suppress(InferenceServerException):
            client.infer("classifier", [tensor], headers={"x-user-id": f"bg-{i}"})
        i += 1


def shadow_line(report: control_pb2.ShadowReport) -> str:
    rate = f"{report.agreement_rate:.1%}" if report.compared else "n/a"
    lat = report.latency
    return (
        f"shadow: compared {report.compared}, agreed {report.agreed} ({rate}), "
        f"dropped {report.dropped}, errors {sum(report.errors_by_status.values())}, "
        f"latency p50 primary {lat.primary_p50_seconds * 1e3:.1f} ms / shadow "
        f"{lat.shadow_p50_seconds * 1e3:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--users", type=int, default=600, help="simulated users (default 600)")
    parser.add_argument(
        "--requests", type=int, default=1500, help="requests to send (default 1500)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (models, logs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    say(f"== 1. training iris models and starting MLServer (work dir {work})")
    repo = write_model_repository(
        work / "models",
        [ModelSpec("classifier", "v1", "logreg"), ModelSpec("classifier", "v2", "tree")],
    )
    rows = iris_features(repo)
    with MLServerProcess(
        repo, run_dir=work / "mlserver", extra_env={"MLSERVER_DEBUG": "false"}
    ) as ml:
        say(
            f"   MLServer ready at {ml.grpc_address} in {ml.startup_seconds:.1f}s, "
            "serving classifier v1 and v2"
        )
        say("== 2. starting the sidecar: stable=v1, canary=v2 at 20%, shadow candidate=v2 at 100%")
        with SidecarProcess(config(ml.grpc_address), run_dir=work / "sidecar") as sc:
            say(f"   sidecar: predict {sc.predict_address}, control {sc.control_address}")
            client = grpcclient.InferenceServerClient(sc.predict_address)
            control = control_pb2_grpc.ControlStub(grpc.insecure_channel(sc.control_address))
            say(
                f"== 3. {args.requests} requests from {args.users} users via tritonclient "
                "(x-user-id header)"
            )
            counts: collections.Counter[str] = collections.Counter()
            per_user: dict[str, set[str]] = collections.defaultdict(set)
            rng = np.random.default_rng(7)
            last = time.monotonic()
            started = last
            for i in range(args.requests):
                user = f"user-{int(rng.integers(args.users))}"
                row = rows[int(rng.integers(len(rows)))].reshape(1, 4)
                tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
                tensor.set_data_from_numpy(row)
                result = client.infer("classifier", [tensor], headers={"x-user-id": user})
                version = result.get_response().model_version
                counts[version] += 1
                per_user[user].add(version)
                now = time.monotonic()
                if now - last >= 1.0 or i == args.requests - 1:
                    last = now
                    total = sum(counts.values())
                    report = control.GetShadowReport(
                        control_pb2.GetShadowReportRequest(), metadata=bearer(VIEWER_TOKEN)
                    )
                    say(
                        f"   [{now - started:5.1f}s] {total:5d} requests  stable(v1) "
                        f"{counts['v1'] / total:6.1%}  canary(v2) {counts['v2'] / total:6.1%}  | "
                        + shadow_line(report)
                    )
            time.sleep(0.5)
            report = control.GetShadowReport(
                control_pb2.GetShadowReportRequest(), metadata=bearer(VIEWER_TOKEN)
            )
            sticky = sum(1 for v in per_user.values() if len(v) == 1)
            say("== 4. result")
            say(f"   split: {counts['v1']} stable / {counts['v2']} canary (configured 80/20)")
            say(f"   sticky users: {sticky} of {len(per_user)} always saw the same variant")
            override = (
                client.infer("classifier", [_row(rows)], headers={"x-user-id": "qa-user"})
                .get_response()
                .model_version
            )
            segment = (
                client.infer(
                    "classifier",
                    [_row(rows)],
                    headers={"x-user-id": "user-1", "x-segment": "internal"},
                )
                .get_response()
                .model_version
            )
            say(f"   user override qa-user -> {override}; segment rule internal -> {segment}")
            say("   " + shadow_line(report))
            for example in list(report.examples)[-3:]:
                say(
                    f"   disagreement {example.request_id[:8]} user {example.targeting_key}: "
                    f"{example.detail} (served {example.primary_output}, "
                    f"shadow {example.shadow_output})"
                )
            say("== 5. operator: kill switch on (sidecarctl kill on), traffic, then off")
            with ControlClient(sc.control_address, token=OPERATOR_TOKEN) as ops:
                state = ops.set_kill_switch(True, reason="demo: suspicious canary metrics")
                say(
                    f"   revision {state.revision}: kill switch ON "
                    f"({state.flag.kill_switch_reason})"
                )
                seen = collections.Counter(
                    client.infer("classifier", [_row(rows)], headers={"x-user-id": f"user-{u}"})
                    .get_response()
                    .model_version
                    for u in range(200)
                )
                say(f"   200 users while ON: {dict(seen)} (stable only)")
                state = ops.set_kill_switch(False, reason="demo: all clear")
                say(f"   revision {state.revision}: kill switch off; audit log:")
                for entry in list(ops.iter_audit())[-3:]:
                    say(
                        f"     r{entry.revision_after} {entry.principal} {entry.method}: "
                        + entry.reason
                    )
            say("== 6. automated rollout: shadow -> 5% -> 25% -> promote, advancing through gates")
            with ControlClient(sc.control_address, token=OPERATOR_TOKEN) as ops:
                ops.set_weights({"stable": 10_000, "canary": 0}, reason="demo: reset before plan")
                stop = threading.Event()
                workers = [
                    threading.Thread(
                        target=background_traffic, args=(sc.predict_address, rows, stop)
                    )
                    for _ in range(2)
                ]
                for worker in workers:
                    worker.start()
                try:
                    rollout = ops.start_rollout(reason="demo: ship classifier v2", plan=DEMO_PLAN)
                    shown = ""
                    deadline = time.monotonic() + 90
                    while rollout.phase in ("RUNNING", "PAUSED") and time.monotonic() < deadline:
                        time.sleep(1.0)
                        rollout = ops.get_rollout()
                        gates = ", ".join(
                            f"{g.name} {GATE_NAMES.get(g.status, '?')}" for g in rollout.gates
                        )
                        line = f"   stage {rollout.stage_name or '-'}: {rollout.phase} [{gates}]"
                        if line != shown:
                            say(line)
                            shown = line
                finally:
                    stop.set()
                    for worker in workers:
                        worker.join(10)
                state = ops.get_state()
                say(f"   rollout {rollout.phase}: {rollout.message}")
                say(
                    f"   stable is now {state.flag.stable_variant!r} "
                    f"(weights {dict(state.flag.weights)})"
                )
            say("== 7. stopping the sidecar (SIGTERM, graceful) and MLServer")
        code = sc.returncode
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    say(f"   sidecar exited with code {code}; done.")
    return 0 if code == 0 else 1


def _row(rows: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(rows[:1])
    return tensor


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: the sidecar in front of real model servers, doing a canary with a shadow.

1. Trains two iris classifiers (v1 logistic regression, v2 decision tree) and serves them
   with MLServer (its own virtual environment, loopback ports).
2. Starts `sidecar serve` with embedded defaults: stable = v1, canary = v2 at 20%, every
   request mirrored to a shadow candidate (v2) whose answers are compared, never served,
   part of the stable's requests mirrored to the stable itself (the noise mirror), an A/B
   experiment on the outcome `correct`, and drift monitoring on small demo windows.
3. Sends traffic from 600 simulated users through tritonclient (the app does not know
   the sidecar is there; it passes x-user-id) and shows the split and the shadow
   comparison as they happen.
4. Flips the kill switch on and off as an operator would, showing its effect and the
   audit log.
5. The app reports outcomes: requests through the Predict API (`PredictClient`, segments
   mobile / desktop), each followed by `report_outcome(request_id, "correct", ...)`, whether
   the served class equals the true iris label. Prints the experiment report (what
   `sidecarctl report` prints: anytime-valid verdict, sample-ratio check, segments, shadow
   with the noise subtracted, drift) and writes the HTML report (`--html`, default
   var/demo-report.html).
6. Runs an automated rollout plan (shadow -> 5% -> 25% -> 50% with the A/B gate ->
   promote) that advances only through its gates: the health checker on live spans, and at
   50% the experiment's verdict on `correct` (v1 and v2 are about equally accurate on iris,
   so it passes on Equivalent).
7. Stops everything it started.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc as grpcclient

from clients.control import ControlClient
from clients.predict import PredictClient, Prediction
from clients.render_text import render_experiment
from clients.report_html import render_html
from clients.views import recommendation_name, verdict_name
from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer, control_section
from sidecar.testing.mlserver import (
    MLServerProcess,
    ModelSpec,
    iris_features,
    iris_labels,
    write_model_repository,
)
from sidecar.testing.process import SidecarProcess

ROOT = Path(__file__).resolve().parent.parent
#: The segments the app's traffic carries (x-segment / RoutingContext.segment).
APP_SEGMENTS = ("mobile", "desktop")


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
            "segments": ["internal", *APP_SEGMENTS],
            "segment_rules": [{"segment": "internal", "variant": "canary"}],
        },
        # Every request is mirrored to the candidate; half of the users the stable serves
        # are also mirrored to the stable itself (the noise mirror): its disagreement is the
        # model's own noise, subtracted from the candidate's in the shadow report.
        "shadow": {
            "variant": "candidate",
            "sample_bp": 10_000,
            "max_in_flight": 64,
            "noise_sample_bp": 5000,
        },
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
            # The shadow report recommends (and subtracts the noise) from 500 comparisons.
            "shadow_min_comparisons": 500,
        },
        # The A/B experiment stable (A) vs canary (B) on what the app reports back: was the
        # served class right? Equivalent when the anytime-valid interval of the difference
        # lies within +-10 points. Looks every second (production: every 10 s or more).
        "experiment": {
            "metrics": [
                {"name": "correct", "kind": "bool", "minimum_effect": 0.1, "baseline": 0.85}
            ],
            "segments": list(APP_SEGMENTS),
            "look_interval": 1.0,
        },
        # Drift on demo-sized windows: the reference is the first 1,000 values of each series
        # (filled by step 3), then tumbling windows of 500. Without any drift the PSI still
        # averages about (bins - 1) * (1/1000 + 1/500) = 0.027 here: the small-sample noise
        # floor, well under the 0.1 MODERATE threshold. At 300/300 it is 0.06 and about one
        # window in ten crosses 0.1 by chance. Production keeps both sizes in the thousands.
        "drift": {"reference_size": 1000, "window_size": 500, "sample_every": 1},
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
        # The experiment restarts at 50/50 (a new epoch); the stage holds until its verdict
        # on `correct` is Ship B or Equivalent (Keep A rolls back).
        control_pb2.RolloutStage(
            name="canary-50%", kind=control_pb2.STAGE_KIND_CANARY, canary_bp=5000,
            min_samples=200, min_duration_seconds=3, ab_gate=True,
        ),
        control_pb2.RolloutStage(name="promote", kind=control_pb2.STAGE_KIND_PROMOTE),
    ]
)  # fmt: skip


GATE_NAMES = {
    control_pb2.GATE_PASS: "PASS", control_pb2.GATE_FAIL: "FAIL", control_pb2.GATE_WAIT: "WAIT",
}  # fmt: skip


def notable_events(sc: SidecarProcess, since: datetime) -> list[str]:
    """What the sidecar logged since `since` that an operator is alerted to: decided A/B
    verdicts, drift reaching MODERATE or MAJOR, the end of a rollout (its `alert` log events,
    also POSTed to analysis.webhook_url when set)."""
    events = list(sc.events)
    # Each change of the weights starts a new experiment epoch (logged with the weights).
    epochs: dict[Any, str] = {}
    for e in events:
        if e.get("event") == "experiment.new_epoch":
            treatment = e.get("treatment")
            share = int((e.get("weights") or {}).get(treatment, 0)) / 100
            epochs[e.get("epoch")] = f"{treatment} at {share:g}%"
    lines = []
    for e in events:
        try:
            if datetime.fromisoformat(str(e.get("timestamp"))) < since:
                continue
        except (TypeError, ValueError):  # no or a naive time stamp: not an event of this run
            continue
        what = e.get("alert") if e.get("event") == "alert" else None
        if e.get("event") == "drift.level_changed":
            what = "drift"
        if what == "experiment.verdict":
            epoch = e.get("epoch")
            during = f": {epochs[epoch]}" if epoch in epochs else ""
            lines.append(f"{what}: {e.get('metric')} {e.get('verdict')} (epoch {epoch}{during})")
        elif what == "rollout.finished":
            lines.append(f"{what}: {e.get('phase')} ({e.get('message')})")
        elif what == "drift" and e.get("new") in ("MODERATE", "MAJOR"):
            lines.append(f"drift: {e.get('series')} {e.get('old')} -> {e.get('new')}")
    return lines


def served_class(prediction: Prediction) -> int:
    return int(prediction.outputs["predict"].reshape(-1)[0])


def app_request(
    client: PredictClient,
    rows: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    row: int,
    user: str,
    segment: str,
) -> tuple[Prediction, bool]:
    """What the app does: ask for a prediction, learn later whether it was right (here the
    true iris label), and report that outcome with the prediction's request id."""
    p = client.predict({"input-0": rows[row : row + 1]}, targeting_key=user, segment=segment)
    right = served_class(p) == int(labels[row])
    client.report_outcome(p.request_id, "correct", right)
    return p, right


def background_traffic(
    address: str,
    rows: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    stop: threading.Event,
    worker: int,
) -> None:
    rng = np.random.default_rng(100 + worker)
    with PredictClient(address) as client:
        i = 0
        while not stop.is_set():
            # The demo keeps going if a request fails; the sidecar counts and reports errors.
            with contextlib.suppress(grpc.RpcError):
                app_request(
                    client,
                    rows,
                    labels,
                    int(rng.integers(len(rows))),
                    f"bg-{worker}-{i}",
                    APP_SEGMENTS[int(rng.integers(2))],
                )
            i += 1


def experiment_step(
    sc: SidecarProcess,
    rows: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
    requests: int,
    html_path: Path,
) -> None:
    """App traffic with outcomes at the current 80/20 split, then the experiment report as
    `sidecarctl report` prints it, and as HTML."""
    served: collections.Counter[str] = collections.Counter()
    right: collections.Counter[str] = collections.Counter()
    rng = np.random.default_rng(11)
    started = time.monotonic()
    with PredictClient(sc.predict_address) as client:
        for i in range(requests):
            p, ok = app_request(
                client,
                rows,
                labels,
                int(rng.integers(len(rows))),
                f"app-user-{i}",
                APP_SEGMENTS[int(rng.integers(2))],
            )
            served[p.model_version] += 1
            right[p.model_version] += ok
    say(
        f"   {requests} requests with outcomes in {time.monotonic() - started:.1f}s; the app "
        + ", ".join(
            f"saw {v} right {right[v]}/{served[v]} ({right[v] / served[v]:.1%})"
            for v in sorted(served)
        )
    )
    with ControlClient(sc.control_address, token=VIEWER_TOKEN) as viewer:
        report = viewer.experiment_report()
    say("   $ sidecarctl report")
    for line in render_experiment(report).splitlines():
        say("   | " + line)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(report), encoding="utf-8")
    verdicts = ", ".join(f"{m.metric} {verdict_name(m.verdict)}" for m in report.metrics)
    say(f"   verdict: {verdicts}; shadow: {recommendation_name(report.shadow.recommendation)}")
    say(f"   HTML report (sidecarctl report --html): {html_path}  (open it in a browser)")


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
    parser.add_argument(
        "--outcomes",
        type=int,
        default=2500,
        help="requests whose outcome the app reports (default 2500; the canary's 20%% must "
        "see at least 10 wrong answers before the first verdict)",
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=ROOT / "var" / "demo-report.html",
        help="where to write the HTML experiment report (default var/demo-report.html)",
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
    labels = iris_labels(repo)
    with MLServerProcess(
        repo, run_dir=work / "mlserver", extra_env={"MLSERVER_DEBUG": "false"}
    ) as ml:
        say(
            f"   MLServer ready at {ml.grpc_address} in {ml.startup_seconds:.1f}s, "
            "serving classifier v1 and v2"
        )
        say(
            "== 2. starting the sidecar: stable=v1, canary=v2 at 20%, shadow candidate=v2 at 100%"
            " (noise mirror: stable vs itself for half the users), A/B experiment on `correct`"
        )
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
            say(
                f"== 6. A/B experiment at the 80/20 split: the app reports outcomes for "
                f"{args.outcomes} requests (PredictClient.report_outcome)"
            )
            experiment_step(sc, rows, labels, args.outcomes, args.html.resolve())
            say(
                "== 7. automated rollout: shadow -> 5% -> 25% -> 50% (A/B gate) -> promote, "
                "advancing through gates"
            )
            with ControlClient(sc.control_address, token=OPERATOR_TOKEN) as ops:
                ops.set_weights({"stable": 10_000, "canary": 0}, reason="demo: reset before plan")
                stop = threading.Event()
                workers = [
                    threading.Thread(
                        target=background_traffic,
                        args=(sc.predict_address, rows, labels, stop, worker),
                    )
                    for worker in range(2)
                ]
                for worker in workers:
                    worker.start()
                try:
                    since = datetime.now(UTC)
                    rollout = ops.start_rollout(reason="demo: ship classifier v2", plan=DEMO_PLAN)
                    shown = ""
                    deadline = time.monotonic() + 120
                    while rollout.phase in ("RUNNING", "PAUSED") and time.monotonic() < deadline:
                        time.sleep(0.5)
                        rollout = ops.get_rollout()
                        gates = ", ".join(
                            f"{g.name} {GATE_NAMES.get(g.status, '?')}" for g in rollout.gates
                        )
                        line = f"   stage {rollout.stage_name or '-'}: {rollout.phase} [{gates}]"
                        if line != shown:
                            say(line)
                            shown = line
                            for gate in rollout.gates:
                                if gate.name == "ab_test":
                                    say(f"     ab_test: {gate.detail}")
                finally:
                    stop.set()
                    for worker in workers:
                        worker.join(10)
                state = ops.get_state()
                # The stage advances in the same tick its last gate passes, so the A/B gate's
                # PASS is rarely seen by polling; the sidecar's alert log records the verdict.
                for line in notable_events(sc, since):
                    say(f"   sidecar log: {line}")
                say(f"   rollout {rollout.phase}: {rollout.message}")
                say(
                    f"   stable is now {state.flag.stable_variant!r} "
                    f"(weights {dict(state.flag.weights)})"
                )
            say("== 8. stopping the sidecar (SIGTERM, graceful) and MLServer")
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

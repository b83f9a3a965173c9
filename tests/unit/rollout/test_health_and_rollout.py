"""The rollout controller through a real sidecar in process (gRPC Control, real windows fed
by spans, scripted fault-injection upstreams): automatic rollback with WatchState, audit
and webhook; a plan advancing through gates; skipped stages; pause/resume/abort; restart
mid-plan; drills; a failing shadow. Waiting is polling with a bound. The same behaviour
on a fake clock, tick by tick, is in test_controller.py."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import FAST_ANALYSIS, config_dict, running_sidecar, scripted_model
from sidecar.wiring import Sidecar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "telemetry"))
from test_metrics import scrape

OPS = bearer(OPERATOR_TOKEN)


@pytest.fixture
async def stable_up() -> AsyncIterator[FaultInjectingUpstream]:
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1, "shadow": 1})) as up:
        yield up


@pytest.fixture
async def canary_up() -> AsyncIterator[FaultInjectingUpstream]:
    async with FaultInjectingUpstream(respond=scripted_model({"canary": 2})) as up:
        yield up


class Webhook:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


def build(
    stable: FaultInjectingUpstream,
    canary: FaultInjectingUpstream,
    weights: dict[str, int],
    *,
    shadow: bool = False,
    **analysis: Any,
) -> dict[str, Any]:
    variants: dict[str, Any] = {"stable": stable.address, "canary": canary.address}
    if shadow:
        variants["shadow"] = (stable.address, "shadow")
    raw = config_dict(
        variants,
        weights=weights,
        shadow={"variant": "shadow"} if shadow else None,
        # The shadow shares the scripted stable server: on a busy machine its p95 jitters
        # past 1.5x; these tests are about gates and plan mechanics, so the guard is wide.
        analysis={**FAST_ANALYSIS, "shadow_max_p95_ratio": 5.0, **analysis},
    )
    return raw


def request() -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    return req


class Traffic:
    """Closed-loop clients in the background; counts answers and errors by variant."""

    def __init__(self, sc: Sidecar, clients: int = 4) -> None:
        self.stub = oip_grpc.GRPCInferenceServiceStub(
            grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        )
        self.by_variant: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._loop(n)) for n in range(clients)]

    async def _loop(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            call = self.stub.ModelInfer(
                request(), metadata=(("x-user-id", f"c{n}-{i}"),), timeout=5
            )
            try:
                await call
                variant = str(dict(await call.trailing_metadata())["x-variant"])
                self.by_variant[variant] = self.by_variant.get(variant, 0) + 1
            except grpc.aio.AioRpcError:
                md = dict(await call.trailing_metadata() or ())
                key = str(md.get("x-variant", "unrouted"))
                self.errors[key] = self.errors.get(key, 0) + 1
            i += 1
            await asyncio.sleep(0)  # yield to the other clients

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def control(sc: Sidecar) -> cpb_grpc.ControlStub:
    return cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))


async def wait_until(predicate: Any, timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


async def audit(sc: Sidecar) -> list[cpb.AuditEntry]:
    log = await control(sc).GetAuditLog(cpb.GetAuditLogRequest(page_size=1000), metadata=OPS)
    return list(log.entries)


async def test_failing_canary_is_rolled_back_by_the_health_checker(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream, webhook: Webhook
) -> None:
    """A canary that starts failing mid-stage is rolled back within the evaluation
    interval, through the Control path as `health-checker`, seen by WatchState and the
    audit log, alerted to the webhook; stable traffic sees no errors."""
    raw = build(stable_up, canary_up, {"stable": 8000, "canary": 2000}, webhook_url=webhook.url)
    async with running_sidecar(raw) as sc:
        watch = control(sc).WatchState(cpb.WatchStateRequest(), metadata=OPS)
        first = await watch.read()
        traffic = Traffic(sc)
        # healthy: the controller judges the canary PASS a few times, with no rollback
        await wait_until(lambda: _true(sc.controller.verdicts.get("PASS", 0) >= 3))
        assert sc.control.snapshot().state.weights["canary"] == 2000
        canary_up.inject(Fault(status=grpc.StatusCode.INTERNAL, message="model crashed"))
        failed_at = asyncio.get_running_loop().time()
        rolled = await asyncio.wait_for(watch.read(), timeout=20)
        detected = asyncio.get_running_loop().time() - failed_at
        served = traffic.by_variant.get("stable", 0)
        await wait_until(lambda: _true(traffic.by_variant.get("stable", 0) > served + 100))
        await traffic.stop()
        watch.cancel()
        entries = await audit(sc)
        await wait_until(lambda: _true(bool(webhook.bodies)))
    assert rolled.revision == first.revision + 1
    assert dict(rolled.flag.weights)["canary"] == 0 and rolled.updated_by == "health-checker"
    rollback = entries[-1]
    assert (rollback.method, rollback.principal) == ("Rollback", "health-checker")
    assert "error_rate" in rollback.reason and "FAIL" in rollback.reason
    assert detected < 5.0
    assert traffic.errors.get("stable", 0) == 0 and traffic.by_variant["stable"] > 100
    assert traffic.errors.get("canary", 0) > 0
    assert webhook.bodies[0]["event"] == "canary.rolled_back"
    assert "error_rate" in webhook.bodies[0]["reason"]


async def _true(value: bool) -> bool:
    return value


async def test_healthy_plan_walks_shadow_to_promote(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream
) -> None:
    """shadow -> 10% -> 50% -> promote: each stage advances only when its gates pass;
    the canary ends as stable; every step is audited."""
    raw = build(stable_up, canary_up, {"stable": 10_000, "canary": 0}, shadow=True)
    raw["listen"]["metrics"] = "127.0.0.1:0"
    plan = cpb.RolloutPlan(
        stages=[
            cpb.RolloutStage(name="shadow", kind=cpb.STAGE_KIND_SHADOW, min_samples=50, min_duration_seconds=0.3),
            cpb.RolloutStage(name="canary-5", kind=cpb.STAGE_KIND_CANARY, canary_bp=500, min_samples=10, min_duration_seconds=0.5),
            cpb.RolloutStage(name="canary-25", kind=cpb.STAGE_KIND_CANARY, canary_bp=2500, min_samples=40, min_duration_seconds=0.5),
            cpb.RolloutStage(name="promote", kind=cpb.STAGE_KIND_PROMOTE),
        ]
    )  # fmt: skip
    async with running_sidecar(raw) as sc:
        traffic = Traffic(sc)
        started = await control(sc).StartRollout(
            cpb.StartRolloutRequest(reason="ship v2", plan=plan), metadata=OPS
        )
        assert started.phase == "RUNNING" and started.stage_name == "shadow"
        seen: set[str] = set()

        async def done() -> bool:
            r = await control(sc).GetRollout(cpb.GetRolloutRequest(), metadata=OPS)
            seen.add(r.stage_name)
            return r.phase == "SUCCEEDED"

        await wait_until(done, timeout=40)
        await traffic.stop()
        state = await control(sc).GetState(cpb.GetStateRequest(), metadata=OPS)
        entries = await audit(sc)
        metrics = await asyncio.to_thread(scrape, sc.metrics.port)
    assert (
        metrics[("sidecar_canary_verdicts_total", (("model", "classifier"), ("verdict", "PASS")))]
        > 0
    )
    assert (
        metrics[
            (
                "sidecar_rollout_stage",
                (("model", "classifier"), ("phase", "SUCCEEDED"), ("stage", "promote")),
            )
        ]
        == 1
    )
    assert state.flag.stable_variant == "canary" and dict(state.flag.weights)["canary"] == 10_000
    assert {"shadow", "canary-5", "canary-25"} <= seen
    methods = [e.method for e in entries]
    assert methods.count("RolloutAdvance") == 3 and "Promote" in methods
    assert methods.count("RolloutStage") == 2
    assert traffic.errors == {}


async def test_skipping_stages_needs_force_and_is_audited(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream
) -> None:
    """shadow straight to 100% is refused (FAILED_PRECONDITION, nothing changes); with
    force and a reason it starts and the audit log names the skip."""
    raw = build(stable_up, canary_up, {"stable": 10_000, "canary": 0}, shadow=True)
    plan = cpb.RolloutPlan(
        stages=[
            cpb.RolloutStage(name="shadow", kind=cpb.STAGE_KIND_SHADOW, min_samples=10),
            cpb.RolloutStage(name="all-in", kind=cpb.STAGE_KIND_CANARY, canary_bp=10_000, min_samples=10),
        ]
    )  # fmt: skip
    async with running_sidecar(raw) as sc:
        before = await control(sc).GetState(cpb.GetStateRequest(), metadata=OPS)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await control(sc).StartRollout(
                cpb.StartRolloutRequest(reason="yolo", plan=plan), metadata=OPS
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "skips" in (info.value.details() or "") and "force" in (info.value.details() or "")
        assert (
            await control(sc).GetState(cpb.GetStateRequest(), metadata=OPS)
        ).revision == before.revision
        forced = await control(sc).StartRollout(
            cpb.StartRolloutRequest(reason="hotfix, reviewed", plan=plan, force=True), metadata=OPS
        )
        assert forced.phase == "RUNNING"
        entries = await audit(sc)
    assert entries[-1].method == "StartRollout" and "FORCED" in entries[-1].reason


async def test_rollout_refused_when_stable_is_not_ready(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream
) -> None:
    """No rollout starts while the stable variant is not ready."""
    raw = build(stable_up, canary_up, {"stable": 10_000, "canary": 0})
    async with running_sidecar(raw) as sc:
        stable_up.inject(
            Fault(status=grpc.StatusCode.UNAVAILABLE, methods=frozenset({"ModelReady"}))
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await control(sc).StartRollout(
                cpb.StartRolloutRequest(reason="go", force=True), metadata=OPS
            )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stable" in (info.value.details() or "")


async def test_pause_resume_abort(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream
) -> None:
    """Pause holds the plan, resume continues it, abort sends everything to stable."""
    raw = build(stable_up, canary_up, {"stable": 10_000, "canary": 0})
    plan = cpb.RolloutPlan(
        stages=[cpb.RolloutStage(name="c5", kind=cpb.STAGE_KIND_CANARY, canary_bp=500, min_samples=10**9)]
    )  # fmt: skip
    async with running_sidecar(raw) as sc:
        c = control(sc)
        await c.StartRollout(cpb.StartRolloutRequest(reason="go", plan=plan), metadata=OPS)
        await wait_until(lambda: _true(sc.control.snapshot().state.weights["canary"] == 500))
        paused = await c.PauseRollout(cpb.PauseRolloutRequest(reason="lunch"), metadata=OPS)
        assert paused.phase == "PAUSED"
        resumed = await c.ResumeRollout(cpb.ResumeRolloutRequest(reason="back"), metadata=OPS)
        assert resumed.phase == "RUNNING"
        aborted = await c.AbortRollout(
            cpb.AbortRolloutRequest(reason="changed my mind"), metadata=OPS
        )
        assert aborted.phase == "ABORTED"
        state = await c.GetState(cpb.GetStateRequest(), metadata=OPS)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await c.PauseRollout(cpb.PauseRolloutRequest(reason="x"), metadata=OPS)
    assert dict(state.flag.weights)["canary"] == 0
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_restart_mid_plan_resumes_the_stage(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream, tmp_path: Path
) -> None:
    """A sidecar restarted mid-plan resumes at the stage it was in (stage time kept) and
    logs that it resumed."""
    raw = build(stable_up, canary_up, {"stable": 10_000, "canary": 0})
    raw["state"] = {
        "backend": "sqlite",
        "path": str(tmp_path / "s.db"),
    }
    plan = cpb.RolloutPlan(
        stages=[
            cpb.RolloutStage(name="c5", kind=cpb.STAGE_KIND_CANARY, canary_bp=500, min_samples=10**9),
            cpb.RolloutStage(name="promote", kind=cpb.STAGE_KIND_PROMOTE),
        ]
    )  # fmt: skip
    async with running_sidecar(raw) as sc:
        started = await control(sc).StartRollout(
            cpb.StartRolloutRequest(reason="go", plan=plan), metadata=OPS
        )
        await wait_until(lambda: _true(sc.control.snapshot().state.weights["canary"] == 500))
    async with running_sidecar(raw) as sc:
        again = await control(sc).GetRollout(cpb.GetRolloutRequest(), metadata=OPS)
    assert again.phase == "RUNNING" and again.stage_name == "c5"
    assert again.stage_started_unix_time == pytest.approx(started.stage_started_unix_time)
    assert again.stage_elapsed_seconds > 0


async def test_drill_rehearses_rollback_and_restores_state(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream
) -> None:
    """RunDrill: the controller sees a failing canary, rolls back through Control, reports
    detection and revert times, then restores the previous state's content."""
    raw = build(stable_up, canary_up, {"stable": 9000, "canary": 1000})
    async with running_sidecar(raw) as sc:
        before = await control(sc).GetState(cpb.GetStateRequest(), metadata=OPS)
        report = await control(sc).RunDrill(
            cpb.RunDrillRequest(reason="quarterly drill"), metadata=OPS
        )
        after = await control(sc).GetState(cpb.GetStateRequest(), metadata=OPS)
        entries = await audit(sc)
    assert report.rolled_back and report.detection_seconds >= 0 and report.revert_seconds > 0
    assert "error_rate" in report.verdict_reason
    assert dict(after.flag.weights) == dict(before.flag.weights)
    assert after.revision == report.restored_revision == before.revision + 2
    assert [(e.method, e.principal) for e in entries[-2:]] == [
        ("Rollback", "health-checker"), ("DrillRestore", "ops"),
    ]  # fmt: skip
    assert "DRILL" in entries[-2].reason


async def test_shadow_stage_fails_when_every_shadow_call_fails(
    stable_up: FaultInjectingUpstream, canary_up: FaultInjectingUpstream
) -> None:
    """A shadow whose calls all fail is never compared; its error gate is judged on calls
    sent, so the shadow stage rolls back instead of waiting forever."""
    async with FaultInjectingUpstream(respond=scripted_model({"shadow": 1})) as broken:
        broken.inject(Fault(status=grpc.StatusCode.INTERNAL, message="shadow model crashed"))
        raw = build(stable_up, canary_up, {"stable": 10_000, "canary": 0}, shadow=True)
        raw["variants"]["shadow"]["address"] = broken.address
        plan = cpb.RolloutPlan(
            stages=[
                cpb.RolloutStage(name="shadow", kind=cpb.STAGE_KIND_SHADOW, min_samples=50),
                cpb.RolloutStage(name="promote", kind=cpb.STAGE_KIND_PROMOTE),
            ]
        )
        async with running_sidecar(raw) as sc:
            traffic = Traffic(sc)
            await control(sc).StartRollout(
                cpb.StartRolloutRequest(reason="try", plan=plan, force=True), metadata=OPS
            )

            async def rolled_back() -> bool:
                r = await control(sc).GetRollout(cpb.GetRolloutRequest(), metadata=OPS)
                return r.phase == "ROLLED_BACK"

            await wait_until(rolled_back)
            await traffic.stop()
            entries = await audit(sc)
    rollback = [e for e in entries if e.method == "Rollback"][-1]
    assert "shadow_error_rate" in rollback.reason
    assert traffic.errors == {}  # the primary never saw the shadow's failures

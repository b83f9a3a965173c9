"""The experiment in process: Predict + ReportOutcome through the real servers, the
Control report and its refusals, epochs following SetWeights, differential outcome
reporting caught by the sample-ratio check, the checkpoint across a restart, and the A/B
and drift gates of a rollout stage. Upstreams are scripted fault-injection servers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar._proto.sidecar.v1 import predict_pb2, predict_pb2_grpc
from sidecar.app.drift import DriftMonitorReport
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import FAST_ANALYSIS, config_dict, running_sidecar, scripted_model
from sidecar.wiring import Sidecar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "telemetry"))
from test_metrics import scrape

OPS = bearer(OPERATOR_TOKEN)
VIEW = bearer(VIEWER_TOKEN)
METRICS = [
    {"name": "converted", "kind": "bool", "minimum_effect": 0.05, "baseline": 0.5},
    {"name": "revenue", "kind": "number", "minimum_effect": 1.0},
]


@pytest.fixture
async def model() -> AsyncIterator[FaultInjectingUpstream]:
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1, "canary": 2})) as up:
        yield up


def config(
    up: FaultInjectingUpstream, weights: dict[str, int], tmp: Path | None = None, **extra: Any
) -> dict[str, Any]:
    raw = config_dict(
        {"stable": up.address, "canary": up.address},
        weights=weights,
        experiment={"metrics": METRICS, "segments": ["ios", "web"], "look_interval": 0.1},
        **{"analysis": {**FAST_ANALYSIS, **extra.pop("analysis", {})}, **extra},
    )
    if tmp is not None:
        raw["state"] = {
            "backend": "sqlite",
            "path": str(tmp / "sidecar.db"),
            "experiment_path": str(tmp / "experiment.json"),
        }
    return raw


def predict_stub(sc: Sidecar) -> predict_pb2_grpc.PredictStub:
    return predict_pb2_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))


def control(sc: Sidecar) -> cpb_grpc.ControlStub:
    return cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))


def request(user: str, segment: str) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest(
        context=predict_pb2.RoutingContext(targeting_key=user, segment=segment)
    )
    tensor = req.inference.inputs.add(name="x", datatype="FP64", shape=[1, 2])
    tensor.contents.fp64_contents.extend([float(len(user)), 1.0])
    return req


async def traffic(
    sc: Sidecar,
    users: range,
    *,
    converted: dict[str, float],
    report_share: dict[str, float] | None = None,
) -> dict[str, int]:
    """One prediction per user; the app reports `converted` (deterministically: the first
    `converted[variant]` share of each block of 100 users) and a revenue, and for
    `report_share[variant]` of the users only (a client that loses outcomes)."""
    client = predict_stub(sc)
    served: dict[str, int] = {}
    for i in users:
        reply = await client.Predict(request(f"user-{i}", "ios" if i % 2 else "web"))
        variant = reply.variant
        served[variant] = served.get(variant, 0) + 1
        if report_share is not None and (i % 100) / 100 >= report_share.get(variant, 1.0):
            continue
        won = (i * 37 % 100) / 100 < converted[variant]
        await client.ReportOutcome(
            predict_pb2.ReportOutcomeRequest(
                request_id=reply.request_id, metric="converted", bool_value=won
            )
        )
        await client.ReportOutcome(
            predict_pb2.ReportOutcomeRequest(
                request_id=reply.request_id, metric="revenue", number_value=10.0 if won else 0.0
            )
        )
    return served


async def report(sc: Sidecar, *metrics: str) -> cpb.ExperimentReport:
    result: cpb.ExperimentReport = await control(sc).GetExperimentReport(
        cpb.GetExperimentReportRequest(metrics=list(metrics)), metadata=VIEW
    )
    return result


def metric(rep: cpb.ExperimentReport, name: str) -> cpb.MetricResult:
    return next(m for m in rep.metrics if m.metric == name)


async def test_report_counts_split_outcomes_per_arm_and_segment(
    model: FaultInjectingUpstream,
) -> None:
    """Outcomes reported through Predict.ReportOutcome reach the experiment under the arm
    that served them; per-segment results cover the declared family; a viewer reads the
    report; the request with an override is not part of the experiment."""
    raw = config(model, {"stable": 5000, "canary": 5000})
    raw["flag"]["user_overrides"] = {"user-0": "canary"}
    async with running_sidecar(raw) as sc:
        served = await traffic(sc, range(400), converted={"stable": 0.5, "canary": 0.5})
        rep = await report(sc)
    conv = metric(rep, "converted")
    assert (rep.control_variant, rep.treatment_variant) == ("stable", "canary")
    assert conv.control.n + conv.treatment.n == 399  # user-0 came by override
    assert conv.control.n == served["stable"] and conv.treatment.n == served["canary"] - 1
    assert [s.segment for s in conv.segments] == ["ios", "web"]
    assert sum(s.control.n + s.treatment.n for s in conv.segments) == 399
    arms = {a.variant: a.observed for a in rep.srm.arms}
    assert arms == {"stable": served["stable"], "canary": served["canary"] - 1}
    assert not rep.srm.mismatch
    assert rep.srm.unit == "user"  # one request per key: users = requests here
    assert metric(rep, "revenue").kind == "number"
    assert rep.unit == "user" and rep.looks >= 1  # keyed requests: users are the unit
    assert conv.unit == "user" and conv.control.users == conv.control.n  # a request each
    assert conv.control.keyless == 0 and conv.planned_control == conv.planned_treatment


async def test_report_refusals_change_nothing(model: FaultInjectingUpstream) -> None:
    """No credentials: UNAUTHENTICATED; an unknown metric: INVALID_ARGUMENT naming it and
    the configured ones; neither changes the state revision or the counts."""
    async with running_sidecar(config(model, {"stable": 5000, "canary": 5000})) as sc:
        await traffic(sc, range(50), converted={"stable": 0.5, "canary": 0.5})
        before = await report(sc)
        revision = sc.control.snapshot().revision
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await control(sc).GetExperimentReport(cpb.GetExperimentReportRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await control(sc).GetExperimentReport(
                cpb.GetExperimentReportRequest(metrics=["clicks"]), metadata=VIEW
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "clicks" in (info.value.details() or "")
        assert "converted" in (info.value.details() or "")
        after = await report(sc, "converted")
        assert sc.control.snapshot().revision == revision
    assert [m.metric for m in after.metrics] == ["converted"]
    assert metric(after, "converted").control.n == metric(before, "converted").control.n


async def test_new_weights_start_a_new_epoch(model: FaultInjectingUpstream) -> None:
    """SetWeights starts a new experiment: counts restart from zero, and outcomes of
    requests served before the change are not mixed into it."""
    async with running_sidecar(config(model, {"stable": 5000, "canary": 5000})) as sc:
        client = predict_stub(sc)
        old = await client.Predict(request("late-reporter", "ios"))
        await traffic(sc, range(100), converted={"stable": 0.5, "canary": 0.5})
        first = await report(sc)
        await control(sc).SetWeights(
            cpb.SetWeightsRequest(weights={"stable": 8000, "canary": 2000}, reason="ramp down"),
            metadata=OPS,
        )
        await traffic(sc, range(100, 150), converted={"stable": 0.5, "canary": 0.5})
        await client.ReportOutcome(
            predict_pb2.ReportOutcomeRequest(
                request_id=old.request_id, metric="converted", bool_value=True
            )
        )
        second = await report(sc)
    assert second.epoch == first.epoch + 1
    conv = metric(second, "converted")
    assert conv.control.n + conv.treatment.n == 50
    shares = {a.variant: a.expected_share for a in second.srm.arms}
    assert shares == pytest.approx({"stable": 0.8, "canary": 0.2})


async def test_lost_canary_outcomes_block_the_verdict(model: FaultInjectingUpstream) -> None:
    """The app loses 40% of the canary's outcomes (a client bug): the split itself is
    fine, but the outcomes no longer follow the weights. The verdict is BLOCKED, the
    state's warnings and the Prometheus metrics say so."""
    raw = config(model, {"stable": 5000, "canary": 5000})
    raw["listen"]["metrics"] = "127.0.0.1:0"
    async with running_sidecar(raw) as sc:
        await traffic(
            sc,
            range(1000),
            converted={"stable": 0.3, "canary": 0.9},
            report_share={"canary": 0.6},
        )
        rep = await report(sc)
        state = await control(sc).GetState(cpb.GetStateRequest(), metadata=VIEW)
        metrics = await asyncio.to_thread(scrape, sc.metrics.port)
    assert metrics[("sidecar_experiment_sample_ratio_mismatch", (("model", "classifier"),))] == 1
    assert (
        metrics[
            (
                "sidecar_experiment_verdict",
                (("metric", "converted"), ("model", "classifier"), ("verdict", "BLOCKED")),
            )
        ]
        == 1
    )
    conv = metric(rep, "converted")
    assert conv.verdict == cpb.VERDICT_BLOCKED, conv.reason
    assert "sample ratio" in conv.reason.lower() or "srm" in conv.reason.lower()
    assert any("sample ratio" in w for w in rep.warnings), rep.warnings
    assert any("sample ratio" in w for w in state.warnings), state.warnings


async def test_checkpoint_survives_a_restart(model: FaultInjectingUpstream, tmp_path: Path) -> None:
    """The experiment's counts and sequential state are checkpointed: after a restart the
    report continues from the same epoch and counts."""
    raw = config(model, {"stable": 5000, "canary": 5000}, tmp_path)
    async with running_sidecar(raw) as sc:
        await traffic(sc, range(300), converted={"stable": 0.4, "canary": 0.6})
        before = await report(sc)
    assert (tmp_path / "experiment.json").is_file()
    async with running_sidecar(raw) as sc:
        after = await report(sc)
        await traffic(sc, range(300, 310), converted={"stable": 0.4, "canary": 0.6})
        more = await report(sc)
    for name in ("converted", "revenue"):
        a, b = metric(before, name), metric(after, name)
        assert (a.control.n, a.treatment.n) == (b.control.n, b.treatment.n)
        assert b.p_value <= a.p_value + 1e-12  # the always-valid p-value carries on
    assert after.epoch == before.epoch
    conv = metric(more, "converted")
    assert conv.control.n + conv.treatment.n == 310


def quarantined(folder: Path) -> list[Path]:
    return sorted(folder.glob("experiment.json.unreadable-*"))


async def test_unreadable_checkpoint_is_kept_aside_and_a_fresh_experiment_starts(
    model: FaultInjectingUpstream, tmp_path: Path
) -> None:
    """A checkpoint that cannot be read does not stop the sidecar and is never overwritten:
    it is moved aside, and the experiment starts afresh and is checkpointed again."""
    raw = config(model, {"stable": 5000, "canary": 5000}, tmp_path)
    (tmp_path / "experiment.json").write_text('{"epoch": "not a checkpoint"')
    async with running_sidecar(raw) as sc:
        await traffic(sc, range(40), converted={"stable": 0.5, "canary": 0.5})
        rep = await report(sc)
    aside = quarantined(tmp_path)
    assert len(aside) == 1 and aside[0].read_text() == '{"epoch": "not a checkpoint"'
    conv = metric(rep, "converted")
    assert conv.control.n + conv.treatment.n == 40
    assert (tmp_path / "experiment.json").is_file()  # the new experiment's checkpoint


async def test_noise_mirror_compares_the_stable_model_with_itself_only(
    model: FaultInjectingUpstream,
) -> None:
    """The noise mirror sends only requests its variant served, to that same model: with a
    deterministic model it never disagrees, also after a promotion (when the canary serves
    everything and its answers must not be compared with the old stable's)."""
    raw = config(
        model,
        {"stable": 5000, "canary": 5000},
        shadow={"variant": "canary", "noise_sample_bp": 10_000},
        analysis={"shadow_min_comparisons": 10},
    )
    async with running_sidecar(raw) as sc:
        served = await traffic(sc, range(60), converted={"stable": 0.5, "canary": 0.5})
        noise = sc.dataplane.noise
        assert noise is not None
        await until(lambda: noise.in_flight == 0)  # every noise copy compared
        first = noise.recorder.summary()
        await control(sc).Promote(cpb.PromoteRequest(reason="ship"), metadata=OPS)
        await traffic(sc, range(60, 120), converted={"stable": 0.5, "canary": 0.5})
        await until(lambda: noise.in_flight == 0)
        second = noise.recorder.summary()
        shadow = (await report(sc)).shadow
    assert first.compared == served["stable"] and first.agreed == first.compared
    assert second.compared == first.compared  # nothing served by the old stable since
    assert shadow.noise.compared == first.compared
    assert shadow.noise.noise_disagreement.value == 0.0


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `condition` until it holds, within `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def next_tick(sc: Sidecar) -> None:
    """Wait (bounded) until the rollout controller has judged the canary once more, or
    the plan has ended."""
    judged = sum(sc.controller.verdicts.values())

    def ticked() -> bool:
        rollout = sc.control.snapshot().state.rollout
        ended = rollout is None or not rollout.phase.active
        return ended or sum(sc.controller.verdicts.values()) > judged

    await until(ticked)


def _reference_full(report: DriftMonitorReport, size: int) -> bool:
    features = report.drift.features
    return bool(features) and all(f.reference_n >= size for f in features)


def ab_stage(**fields: Any) -> cpb.RolloutPlan:
    return cpb.RolloutPlan(
        stages=[
            cpb.RolloutStage(
                name="canary-50%",
                kind=cpb.STAGE_KIND_CANARY,
                canary_bp=5000,
                min_samples=20,
                **fields,
            ),
            cpb.RolloutStage(name="promote", kind=cpb.STAGE_KIND_PROMOTE),
        ]
    )


async def run_plan(sc: Sidecar, converted: dict[str, float], budget: int = 4000) -> cpb.Rollout:
    ctl = control(sc)
    await ctl.StartRollout(
        cpb.StartRolloutRequest(reason="A/B", plan=ab_stage(ab_gate=True), force=True),
        metadata=OPS,
    )
    for start in range(0, budget, 100):
        await traffic(sc, range(start, start + 100), converted=converted)
        await next_tick(sc)
        rollout: cpb.Rollout = await ctl.GetRollout(cpb.GetRolloutRequest(), metadata=VIEW)
        if rollout.phase not in ("RUNNING", "PAUSED"):
            return rollout
    raise AssertionError(f"plan still running: {rollout}")


async def test_ab_gate_rolls_back_on_keep_a(model: FaultInjectingUpstream) -> None:
    """A canary converting 20% against 60%: the 50% stage's A/B gate fails on Keep A and
    the plan is rolled back by the health checker; the audit names the gate."""
    async with running_sidecar(config(model, {"stable": 10_000, "canary": 0})) as sc:
        rollout = await run_plan(sc, {"stable": 0.6, "canary": 0.2})
        log = await control(sc).GetAuditLog(cpb.GetAuditLogRequest(page_size=100), metadata=OPS)
    assert rollout.phase == "ROLLED_BACK"
    rollback = [e for e in log.entries if e.method == "Rollback"][-1]
    assert rollback.principal == "health-checker" and "ab_test" in rollback.reason


async def test_ab_gate_passes_on_ship_b(model: FaultInjectingUpstream) -> None:
    """A canary converting 60% against 20% passes the A/B gate and is promoted."""
    async with running_sidecar(config(model, {"stable": 10_000, "canary": 0})) as sc:
        rollout = await run_plan(sc, {"stable": 0.2, "canary": 0.6})
    assert rollout.phase == "SUCCEEDED"


async def test_ab_gate_needs_an_outcome_metric(model: FaultInjectingUpstream) -> None:
    """A stage asking for the A/B gate on a sidecar with no outcome metric configured is
    refused with INVALID_ARGUMENT naming the field; nothing starts."""
    raw = config_dict(
        {"stable": model.address, "canary": model.address},
        weights={"stable": 10_000, "canary": 0},
    )
    async with running_sidecar(raw) as sc:
        revision = sc.control.snapshot().revision
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await control(sc).StartRollout(
                cpb.StartRolloutRequest(reason="A/B", plan=ab_stage(ab_gate=True), force=True),
                metadata=OPS,
            )
        assert sc.control.snapshot().revision == revision
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ab_gate" in (info.value.details() or "")


async def test_drift_gate_rolls_back_when_inputs_shift(model: FaultInjectingUpstream) -> None:
    """A stage with max_drift_psi: the reference is the first 100 values; then the inputs
    move far away, the PSI passes the limit and the stage is rolled back."""
    raw = config(
        model, {"stable": 10_000, "canary": 0}, drift={"reference_size": 100, "sample_every": 1}
    )
    raw["drift"]["window_size"] = 100
    async with running_sidecar(raw) as sc:
        client = predict_stub(sc)
        for i in range(150):  # the reference: user names of 6-8 characters
            await client.Predict(request(f"user-{i}", "ios"))
        drift = sc.insights.drift
        assert drift is not None
        await until(lambda: drift.pending == 0 and _reference_full(drift.report(), 100))
        ctl = control(sc)
        await ctl.StartRollout(
            cpb.StartRolloutRequest(reason="drift", plan=ab_stage(max_drift_psi=0.25), force=True),
            metadata=OPS,
        )
        rollout = None
        for i in range(40):
            for j in range(50):  # now names of 30+ characters: feature x[0] shifts
                await client.Predict(request(f"a-much-longer-user-name-{i}-{j:04d}", "ios"))
            await until(lambda: drift.pending == 0)
            await next_tick(sc)
            rollout = await ctl.GetRollout(cpb.GetRolloutRequest(), metadata=VIEW)
            if rollout.phase != "RUNNING":
                break
        log = await ctl.GetAuditLog(cpb.GetAuditLogRequest(page_size=100), metadata=OPS)
    assert rollout is not None and rollout.phase == "ROLLED_BACK", rollout
    rollback = [e for e in log.entries if e.method == "Rollback"][-1]
    assert "drift" in rollback.reason and "PSI" in rollback.reason

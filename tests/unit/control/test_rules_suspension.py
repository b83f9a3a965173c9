"""Rollback and abort suspend user overrides and segment rules; RestoreRules brings them
back. Through a real in-process gRPC sidecar (scripted upstream) for the effect on
requests and the audit log, and through the service alone for abort and edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from test_control_component import (
    OPS,
    control,
    infer_request,
    raw_config,
    service_on,
    upstream,  # noqa: F401  (fixture)
)

from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar._proto.sidecar.v1 import predict_pb2_grpc as pb_grpc
from sidecar.adapters.store.sqlite import SqliteStore
from sidecar.app.ports import AuditEntry
from sidecar.core.rollout import Phase
from sidecar.core.state import DesiredState
from sidecar.errors import FailedPrecondition
from sidecar.testing.clock import FakeClock
from sidecar.testing.credentials import VIEWER_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import running_sidecar


async def served_by(
    infer: oip_grpc.GRPCInferenceServiceStub, user: str = "", segment: str = ""
) -> str:
    metadata = tuple((k, v) for k, v in (("x-user-id", user), ("x-segment", segment)) if v)
    call = infer.ModelInfer(infer_request(), metadata=metadata)
    await call
    return str(dict(await call.trailing_metadata())["x-variant"])


async def audit_entries(stub: object) -> list[cpb.AuditEntry]:
    log = await stub.GetAuditLog(cpb.GetAuditLogRequest(page_size=1000), metadata=OPS)  # type: ignore[attr-defined]
    return list(log.entries)


async def test_rollback_suspends_rules_and_restore_brings_them_back(
    upstream: FaultInjectingUpstream,  # noqa: F811
) -> None:
    """A pinned user and a ruled segment go to stable after Rollback (Predict's reason is
    the split); the state shows the rules suspended; RestoreRules sends them back to the
    canary; both writes are audited with the suspension in their changes."""
    async with running_sidecar(raw_config(upstream)) as sc:
        stub = control(sc)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        infer = oip_grpc.GRPCInferenceServiceStub(channel)
        predict = pb_grpc.PredictStub(channel)
        await stub.SetUserOverride(
            cpb.SetUserOverrideRequest(reason="qa", targeting_key="qa-1", variant="canary"),
            metadata=OPS,
        )
        await stub.SetSegmentRule(
            cpb.SetSegmentRuleRequest(reason="dogfood", segment="internal", variant="canary"),
            metadata=OPS,
        )
        assert await served_by(infer, "qa-1") == "canary"
        assert await served_by(infer, "anyone", "internal") == "canary"

        back = await stub.Rollback(cpb.RollbackRequest(reason="p95 regression"), metadata=OPS)
        assert back.flag.rules_suspended
        assert back.flag.rules_suspended_reason == "Rollback by ops: p95 regression"
        assert dict(back.flag.user_overrides) == {"qa-1": "canary"}  # kept
        assert await served_by(infer, "qa-1") == "stable"
        assert await served_by(infer, "anyone", "internal") == "stable"
        answer = await predict.Predict(
            pb.PredictRequest(
                inference=pb.InferRequest(model_name="classifier", inputs=[_input()]),
                context=pb.RoutingContext(targeting_key="qa-1", segment="internal"),
            )
        )
        assert (answer.variant, answer.reason) == ("stable", pb.REASON_SPLIT)

        state = await stub.GetState(cpb.GetStateRequest(), metadata=bearer(VIEWER_TOKEN))
        assert state.flag.rules_suspended
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # a viewer cannot restore
            await stub.RestoreRules(
                cpb.RestoreRulesRequest(reason="x"), metadata=bearer(VIEWER_TOKEN)
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

        restored = await stub.RestoreRules(
            cpb.RestoreRulesRequest(reason="canary fixed", expected_revision=back.revision),
            metadata=OPS,
        )
        assert not restored.flag.rules_suspended and restored.flag.rules_suspended_reason == ""
        assert await served_by(infer, "qa-1") == "canary"
        assert await served_by(infer, "anyone", "internal") == "canary"

        entries = await audit_entries(stub)
        rollback, restore = entries[-2], entries[-1]
        assert (rollback.method, restore.method) == ("Rollback", "RestoreRules")
        assert json.loads(rollback.diff_json)["rules_suspended"] == [False, True]
        assert json.loads(restore.diff_json)["rules_suspended"] == [True, False]
        assert restore.principal == "ops" and restore.reason == "canary fixed"


def _input() -> pb.InferRequest.InputTensor:
    tensor = pb.InferRequest.InputTensor(name="x", datatype="FP64", shape=[1])
    tensor.contents.fp64_contents.append(1.0)
    return tensor


async def test_restore_when_not_suspended_is_refused_and_changes_nothing(
    upstream: FaultInjectingUpstream,  # noqa: F811
) -> None:
    """RestoreRules with nothing suspended: FAILED_PRECONDITION naming the field."""
    async with running_sidecar(raw_config(upstream)) as sc:
        stub = control(sc)
        before = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.RestoreRules(cpb.RestoreRulesRequest(reason="why not"), metadata=OPS)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "rules_suspended" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.RestoreRules(cpb.RestoreRulesRequest(reason=" "), metadata=OPS)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await stub.GetState(cpb.GetStateRequest(), metadata=OPS) == before


async def test_rollback_with_only_rules_off_stable_suspends_them() -> None:
    """Every weight already on stable but a user pinned to the canary: Rollback is not
    refused (it has something to take away) and suspends the rules."""
    service, _ = service_on(FakeClock())
    await service.set_weights("ops", "all stable", 0, {"stable": 10_000, "canary": 0})
    await service.set_user_override("ops", "qa", 0, "qa-1", "canary")
    snap = await service.rollback("ops", "canary broken", 0)
    assert snap.state.rules_suspended and snap.flag.rules_suspended
    assert snap.state.rules_suspended_reason == "Rollback by ops: canary broken"
    with pytest.raises(FailedPrecondition, match="no promotion to revert"):
        await service.rollback("ops", "again", 0)  # nothing left to take away


async def test_rules_set_while_suspended_are_stored_suspended() -> None:
    """An override or segment rule set after a rollback is kept, suspended, until restore;
    clearing works as usual."""
    service, audit = service_on(FakeClock())
    await service.rollback("ops", "regression", 0)
    snap = await service.set_user_override("ops", "qa", 0, "qa-2", "canary")
    assert snap.state.rules_suspended and snap.state.user_overrides == {"qa-2": "canary"}
    snap = await service.clear_user_override("ops", "done", 0, "qa-2")
    assert snap.state.rules_suspended and len(snap.state.user_overrides) == 0
    restored = await service.restore_rules("ops", "resume", 0)
    assert not restored.state.rules_suspended
    assert audit.entries[-1].method == "RestoreRules"
    assert audit.entries[-1].diff["rules_suspended"] == [True, False]


async def test_abort_and_a_reverted_promotion_suspend_the_rules() -> None:
    """AbortRollout goes the Rollback path (rules suspended, reason names the abort); so
    does a rollback that reverts the last promotion."""
    service, audit = service_on(FakeClock())
    await service.set_user_override("ops", "qa", 0, "qa-1", "canary")
    await service.start_rollout("ops", "v2", 0, (), force=False)
    aborted = await service.abort_rollout("ops", "offline eval regressed", 0)
    assert aborted.state.rollout is not None and aborted.state.rollout.phase is Phase.ABORTED
    assert aborted.state.rules_suspended
    assert aborted.state.rules_suspended_reason == "AbortRollout by ops: offline eval regressed"
    assert audit.entries[-1].diff["rules_suspended"] == [False, True]

    service, _ = service_on(FakeClock())
    await service.promote("ops", "ship", 0)
    reverted = await service.rollback("ops", "undo", 0)
    assert reverted.state.promotions[-1].reverted and reverted.state.rules_suspended


def test_the_sqlite_store_keeps_the_suspension(tmp_path: Path) -> None:
    """A suspended state committed to SQLite loads back suspended, reason and rules kept."""
    service, _ = service_on(FakeClock())
    state = DesiredState.from_flag(service.template, revision=3).evolve(
        user_overrides={"qa-1": "canary"}
    )
    suspended = state.suspend_rules("Rollback by health-checker: error_rate 0.5")
    store = SqliteStore(tmp_path / "sidecar.db")
    store.commit(suspended, AuditEntry(1.0, "health-checker", "Rollback", "r", 2, 3, {}))
    loaded = SqliteStore(tmp_path / "sidecar.db").load()
    assert loaded == suspended and loaded is not None and loaded.rules_suspended
    assert loaded.rules_suspended_reason == "Rollback by health-checker: error_rate 0.5"

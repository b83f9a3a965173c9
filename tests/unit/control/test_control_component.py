"""Control through a real gRPC server in process: validation, revisions, auth, effect on
the next request, watch, audit. Upstreams are scripted fault-injection servers. Time
stamps: the service alone, on a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.adapters.store.memory import MemoryStateStore
from sidecar.app.control import ControlService
from sidecar.app.state import StateHolder
from sidecar.config import parse_config
from sidecar.core.state import DesiredState
from sidecar.testing.clock import FakeClock
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.wiring import Sidecar

OPS = bearer(OPERATOR_TOKEN)


@pytest.fixture
async def upstream() -> AsyncIterator[FaultInjectingUpstream]:
    """Scripted model: version "stable" answers 1, "canary" 2, "blue" 3."""
    async with FaultInjectingUpstream(
        respond=scripted_model({"stable": 1, "canary": 2, "blue": 3})
    ) as up:
        yield up


def raw_config(up: FaultInjectingUpstream) -> dict[str, Any]:
    raw = config_dict(
        {"stable": up.address, "canary": up.address, "blue": up.address},
        weights={"stable": 9500, "canary": 500},
    )
    raw["flag"]["segments"] = ["beta", "internal"]
    return raw


@pytest.fixture
async def sidecar(upstream: FaultInjectingUpstream) -> AsyncIterator[Sidecar]:
    async with running_sidecar(raw_config(upstream)) as sc:
        yield sc


def control(sc: Sidecar) -> cpb_grpc.ControlStub:
    return cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))


def infer_request() -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    return req


async def variant_of(stub: oip_grpc.GRPCInferenceServiceStub, user: str) -> str:
    call = stub.ModelInfer(infer_request(), metadata=(("x-user-id", user),))
    await call
    return str(dict(await call.trailing_metadata())["x-variant"])


R = "test"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION
BAD_WRITES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("weights over 10,000", "SetWeights", cpb.SetWeightsRequest(reason=R, weights={"stable": 10_001, "canary": -1}), INVALID, "must be within 0..10000"),
    ("weights not summing", "SetWeights", cpb.SetWeightsRequest(reason=R, weights={"stable": 5000, "canary": 4000}), INVALID, "sum to 10000"),
    ("weights empty", "SetWeights", cpb.SetWeightsRequest(reason=R), INVALID, "weights"),
    ("weights unknown variant", "SetWeights", cpb.SetWeightsRequest(reason=R, weights={"stable": 5000, "ghost": 5000}), INVALID, "unknown variant 'ghost'"),
    ("empty reason", "SetKillSwitch", cpb.SetKillSwitchRequest(on=True), INVALID, "reason"),
    ("blank reason", "SetKillSwitch", cpb.SetKillSwitchRequest(reason="  ", on=True), INVALID, "reason"),
    ("override empty key", "SetUserOverride", cpb.SetUserOverrideRequest(reason=R, targeting_key="", variant="canary"), INVALID, "targeting_key"),
    ("override unknown variant", "SetUserOverride", cpb.SetUserOverrideRequest(reason=R, targeting_key="bob", variant="ghost"), INVALID, "variant: unknown variant"),
    ("clear absent override", "ClearUserOverride", cpb.ClearUserOverrideRequest(reason=R, targeting_key="nobody"), FAILED, "no override"),
    ("segment unknown", "SetSegmentRule", cpb.SetSegmentRuleRequest(reason=R, segment="gamma", variant="canary"), INVALID, "segment: unknown segment 'gamma'"),
    ("segment rule unknown variant", "SetSegmentRule", cpb.SetSegmentRuleRequest(reason=R, segment="beta", variant="ghost"), INVALID, "unknown variant"),
    ("clear absent segment rule", "ClearSegmentRule", cpb.ClearSegmentRuleRequest(reason=R, segment="beta"), FAILED, "no rule"),
    ("promote without traffic history", "Promote", cpb.PromoteRequest(reason=R), FAILED, "served no traffic"),
    ("rollback with nothing to undo", "Rollback", cpb.RollbackRequest(reason=R), FAILED, None),
    ("negative expected revision", "SetKillSwitch", cpb.SetKillSwitchRequest(reason=R, expected_revision=-3), INVALID, "expected_revision"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "request_", "code", "text"), BAD_WRITES)
async def test_bad_writes_are_refused_and_change_nothing(
    sidecar: Sidecar, name: str, method: str, request_: Any, code: grpc.StatusCode, text: str | None
) -> None:
    """Each bad write gets a clear status naming the field; revision and state stay."""
    stub = control(sidecar)
    before = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    if name == "rollback with nothing to undo":
        await stub.SetWeights(
            cpb.SetWeightsRequest(reason=R, weights={"stable": 10_000}), metadata=OPS
        )
        before = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(request_, metadata=OPS)
    assert info.value.code() == code, (name, info.value.details())
    if text:
        assert text in (info.value.details() or ""), info.value.details()
    after = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    assert after.revision == before.revision
    assert after == before


async def test_promote_refused_when_canary_not_ready(
    sidecar: Sidecar, upstream: FaultInjectingUpstream
) -> None:
    """Promote needs a ready canary: ModelReady false gives FAILED_PRECONDITION."""
    from sidecar.testing.fault_upstream import Fault

    stub = control(sidecar)
    await stub.SetWeights(cpb.SetWeightsRequest(reason=R, weights={"canary": 10_000}), metadata=OPS)
    await variant_of(
        oip_grpc.GRPCInferenceServiceStub(
            grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.predict_port}")
        ),
        "u",
    )
    upstream.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, methods=frozenset({"ModelReady"})))
    before = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Promote(cpb.PromoteRequest(reason=R), metadata=OPS)
    assert info.value.code() == FAILED and "not ready" in (info.value.details() or "")
    assert (await stub.GetState(cpb.GetStateRequest(), metadata=OPS)).revision == before.revision


async def test_stale_expected_revision_is_aborted(sidecar: Sidecar) -> None:
    """Two operators race with the same expected revision: one wins, one gets ABORTED."""
    stub = control(sidecar)
    rev = (await stub.GetState(cpb.GetStateRequest(), metadata=OPS)).revision
    results = await asyncio.gather(
        stub.SetWeights(
            cpb.SetWeightsRequest(
                reason="a", expected_revision=rev, weights={"stable": 7500, "canary": 2500}
            ),
            metadata=OPS,
        ),
        stub.SetKillSwitch(
            cpb.SetKillSwitchRequest(reason="b", expected_revision=rev, on=True), metadata=OPS
        ),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    wins = [r for r in results if isinstance(r, cpb.State)]
    assert len(errors) == 1 and len(wins) == 1
    assert errors[0].code() == grpc.StatusCode.ABORTED
    assert f"revision {rev + 1}, not {rev}" in (errors[0].details() or "")
    assert wins[0].revision == rev + 1
    assert (await stub.GetState(cpb.GetStateRequest(), metadata=OPS)).revision == rev + 1


async def test_credentials_are_required_and_roles_enforced(sidecar: Sidecar) -> None:
    """No token: UNAUTHENTICATED; wrong token: UNAUTHENTICATED; viewer writing:
    PERMISSION_DENIED; nothing changes; the viewer can read."""
    stub = control(sidecar)
    before = await stub.GetState(cpb.GetStateRequest(), metadata=bearer(VIEWER_TOKEN))
    kill = cpb.SetKillSwitchRequest(reason="x", on=True)
    cases = [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer not-a-real-token-at-all"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", OPERATOR_TOKEN),), grpc.StatusCode.UNAUTHENTICATED),  # no scheme
        (bearer(VIEWER_TOKEN), grpc.StatusCode.PERMISSION_DENIED),
    ]
    for metadata, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SetKillSwitch(kill, metadata=metadata)
        assert info.value.code() == code
        assert OPERATOR_TOKEN not in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetState(cpb.GetStateRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = await stub.GetState(cpb.GetStateRequest(), metadata=bearer(VIEWER_TOKEN))
    assert after == before and not after.flag.kill_switch


async def test_control_is_not_served_on_the_predict_port(sidecar: Sidecar) -> None:
    """The app-facing port exposes no Control method."""
    stub = cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.predict_port}"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="x", on=True), metadata=OPS)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_on_the_control_port_needs_no_token(sidecar: Sidecar) -> None:
    """The auth interceptor leaves server reflection open (it lists services, reads no
    state), as before it existed."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.control_port}")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = [a async for a in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in answers[0].list_services_response.service}
    assert "sidecar.v1.Control" in names


async def test_writes_take_effect_and_are_audited(sidecar: Sidecar) -> None:
    """Weights, overrides, segment rules, promote and rollback change routing; every
    write is in the audit log with principal, method, reason and the change."""
    stub = control(sidecar)
    infer = oip_grpc.GRPCInferenceServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.predict_port}")
    )
    state = await stub.SetWeights(
        cpb.SetWeightsRequest(reason="ramp", weights={"stable": 0, "canary": 10_000}), metadata=OPS
    )
    assert dict(state.flag.weights) == {"stable": 0, "canary": 10_000}
    assert await variant_of(infer, "anyone") == "canary"
    await stub.SetUserOverride(
        cpb.SetUserOverrideRequest(reason="qa", targeting_key="qa", variant="blue"), metadata=OPS
    )
    assert await variant_of(infer, "qa") == "blue"
    await stub.ClearUserOverride(
        cpb.ClearUserOverrideRequest(reason="done", targeting_key="qa"), metadata=OPS
    )
    assert await variant_of(infer, "qa") == "canary"
    await stub.SetSegmentRule(
        cpb.SetSegmentRuleRequest(reason="beta", segment="beta", variant="stable"), metadata=OPS
    )
    call = infer.ModelInfer(infer_request(), metadata=(("x-user-id", "z"), ("x-segment", "beta")))
    await call
    assert dict(await call.trailing_metadata())["x-variant"] == "stable"
    await stub.ClearSegmentRule(
        cpb.ClearSegmentRuleRequest(reason="x", segment="beta"), metadata=OPS
    )
    promoted = await stub.Promote(cpb.PromoteRequest(reason="looks good"), metadata=OPS)
    assert (promoted.flag.stable_variant, promoted.flag.canary_variant) == ("canary", "stable")
    assert dict(promoted.flag.weights)["canary"] == 10_000
    assert promoted.promotions[-1].from_variant == "stable"
    assert await variant_of(infer, "anyone") == "canary"
    back = await stub.Rollback(cpb.RollbackRequest(reason="regression"), metadata=OPS)
    assert back.flag.stable_variant == "stable" and back.promotions[-1].reverted
    assert await variant_of(infer, "anyone") == "stable"

    log = await stub.GetAuditLog(cpb.GetAuditLogRequest(page_size=3), metadata=OPS)
    entries = list(log.entries)
    while log.next_page_token:
        log = await stub.GetAuditLog(
            cpb.GetAuditLogRequest(page_size=3, page_token=log.next_page_token), metadata=OPS
        )
        entries.extend(log.entries)
    methods = [e.method for e in entries]
    assert methods == [
        "Initialize", "SetWeights", "SetUserOverride", "ClearUserOverride", "SetSegmentRule",
        "ClearSegmentRule", "Promote", "Rollback",
    ]  # fmt: skip
    assert all(e.principal == "ops" for e in entries[1:])
    assert entries[1].reason == "ramp"
    assert json.loads(entries[1].diff_json)["weights"] == [
        {"stable": 9500, "canary": 500},
        {"stable": 0, "canary": 10_000},
    ]
    assert [e.revision_after for e in entries] == list(range(1, 9))


async def test_watch_state_streams_every_change(sidecar: Sidecar) -> None:
    """WatchState sends the current state, then each change with its revision."""
    stub = control(sidecar)
    stream = stub.WatchState(cpb.WatchStateRequest(), metadata=bearer(VIEWER_TOKEN))
    first = await stream.read()
    await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="incident", on=True), metadata=OPS)
    await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="resolved", on=False), metadata=OPS)
    second, third = await stream.read(), await stream.read()
    stream.cancel()
    assert [first.revision + 1, first.revision + 2] == [second.revision, third.revision]
    assert second.flag.kill_switch and second.flag.kill_switch_reason == "incident"
    assert not third.flag.kill_switch


async def test_no_request_after_kill_ack_reaches_canary(sidecar: Sidecar) -> None:
    """4 concurrent clients send requests while the kill switch is flipped on; every
    request started after the acknowledgement is served by stable."""
    stub = control(sidecar)
    await stub.SetWeights(
        cpb.SetWeightsRequest(reason="half", weights={"stable": 5000, "canary": 5000}), metadata=OPS
    )
    infer = oip_grpc.GRPCInferenceServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.predict_port}")
    )
    loop = asyncio.get_running_loop()
    acked_at: list[float] = []
    records: list[tuple[float, str]] = []
    stop = asyncio.Event()

    async def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            started = loop.time()
            records.append((started, await variant_of(infer, f"c{n}-{i}")))
            i += 1

    async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = loop.time() + timeout
        while not condition():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.01)  # poll: the clients run meanwhile

    async def operator() -> None:
        await until(lambda: sum(v == "canary" for _, v in records) >= 10)
        await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="drill", on=True), metadata=OPS)
        acked_at.append(loop.time())
        await until(lambda: sum(t > acked_at[0] for t, _ in records) >= 100)
        stop.set()

    await asyncio.gather(operator(), *(client(n) for n in range(4)))
    before = [v for t, v in records if t < acked_at[0]]
    after = [v for t, v in records if t > acked_at[0]]
    assert "canary" in before, "the canary was serving before the flip"
    assert after and set(after) == {"stable"}


def service_on(clock: FakeClock) -> tuple[ControlService, MemoryStateStore]:
    """A ControlService over in-memory stores, on `clock`, with no server around it."""
    config = parse_config(
        config_dict(
            {"stable": "127.0.0.1:1", "canary": "127.0.0.1:1"},
            weights={"stable": 9500, "canary": 500},
        ),
        "<test>",
    )
    audit = MemoryStateStore()  # the store keeps the audit entries

    async def ready(variant: str) -> bool:
        return True

    service = ControlService(
        holder=StateHolder(config.flag, DesiredState.from_flag(config.flag, unix_time=clock())),
        template=config.flag,
        store=audit,
        ready=ready,
        served=lambda: {"canary": 1},
        clock=clock,
    )
    return service, audit


async def test_writes_are_stamped_with_the_service_clock() -> None:
    """Each write carries the clock's time (state and audit); a variant held at 100% keeps
    the time it got there across later writes, and loses it when promoted."""
    clock = FakeClock()
    service, audit = service_on(clock)
    clock.advance(60.0)
    full = await service.set_weights("ops", "all in", 0, {"stable": 0, "canary": 10_000})
    assert full.state.updated_unix_time == audit.entries[-1].unix_time == clock()
    assert full.state.held_full_since == {"canary": clock()}
    since = clock()
    clock.advance(3600.0)
    later = await service.set_kill_switch("ops", "pause traffic checks", 0, False)
    assert later.state.updated_unix_time == clock() and later.state.held_full_since == {
        "canary": since
    }
    promoted = await service.promote("ops", "ship", 0)
    assert promoted.state.stable == "canary" and promoted.state.held_full_since == {}
    assert promoted.state.promotions[-1].unix_time == clock()

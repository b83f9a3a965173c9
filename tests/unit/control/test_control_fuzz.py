"""Random Control requests against a real in-process Control server (hypothesis).

Every Control write and read gets random fields: empty, huge (up to 4 MiB), unicode,
NaN / +-inf, negative and extreme numbers, too many map entries or plan stages. Each
answer is a success or a clear refusal (INVALID_ARGUMENT, FAILED_PRECONDITION, ABORTED),
never UNKNOWN or INTERNAL (a request over the transport's message limit is refused by
gRPC itself: RESOURCE_EXHAUSTED), and a refused write changes nothing: the same revision, the same
routing state and no new audit entry.

One sidecar serves every example (an event loop in a background thread; the test talks
to it with the blocking client). The analysis interval is an hour, so nothing but the
examples writes the state while they run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_control_component import raw_config  # this folder is on sys.path (pytest prepend)

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import running_sidecar, scripted_model

OPS = bearer(OPERATOR_TOKEN)
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
}
TRANSPORT_LIMIT = 4 * 1024 * 1024  # server.max_message_bytes (default)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Served:
    stub: cpb_grpc.ControlStub
    control_port: int


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """A sidecar on an event loop in a background thread, for the blocking client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started: concurrent.futures.Future[tuple[int, asyncio.Event]] = concurrent.futures.Future()

    async def serve() -> None:
        stop = asyncio.Event()
        async with FaultInjectingUpstream(
            respond=scripted_model({"stable": 1, "canary": 2, "blue": 3})
        ) as up:
            raw = raw_config(up)
            raw["analysis"] = {"interval": 3600.0}
            raw["experiment"] = {
                "metrics": [{"name": "converted", "kind": "bool", "minimum_effect": 0.05}]
            }
            async with running_sidecar(raw) as sc:
                started.set_result((sc.control_port, stop))
                await stop.wait()

    done = asyncio.run_coroutine_threadsafe(serve(), loop)
    port, stop = started.result(timeout=60)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(cpb_grpc.ControlStub(channel), port)
    finally:
        channel.close()
        loop.call_soon_threadsafe(stop.set)
        done.result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=60)
        loop.close()


# ---- strategies -------------------------------------------------------------------------

KNOWN = ["", " ", "stable", "canary", "blue", "ghost", "beta", "internal", "converted"]
chars = st.characters(codec="utf-8")
huge = st.builds(lambda c, n: c * n, chars, st.sampled_from([257, 1025, 70_000, 1_100_000]))
texts = st.one_of(st.sampled_from(KNOWN), st.text(chars, max_size=40), huge)
names = st.one_of(st.sampled_from(KNOWN), st.text(chars, max_size=20), huge)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
revisions = st.one_of(st.just(0), st.integers(-3, 50), int64)
floats = st.floats()  # NaN, +-inf, subnormals, huge
counts = st.one_of(st.integers(-5, 1200), int32)
weights = st.dictionaries(
    names, st.one_of(st.sampled_from([0, 500, 9500, 10_000]), int32), max_size=70
)


def stages() -> st.SearchStrategy[cpb.RolloutStage]:
    return st.builds(
        cpb.RolloutStage,
        name=names,
        kind=st.integers(0, 4),
        canary_bp=st.one_of(st.sampled_from([0, 500, 2500, 10_000]), int32),
        min_duration_seconds=floats,
        min_samples=st.one_of(st.integers(-2, 10), int64),
        ab_gate=st.booleans(),
        max_drift_psi=floats,
    )


# ---- checks -----------------------------------------------------------------------------


def observed(stub: cpb_grpc.ControlStub) -> tuple[int, bytes, int]:
    """What a refused write must leave alone: revision, routing state, audit length."""
    state = stub.GetState(cpb.GetStateRequest(), metadata=OPS, timeout=30)
    total = stub.GetAuditLog(cpb.GetAuditLogRequest(page_size=1), metadata=OPS, timeout=30).total
    return state.revision, state.flag.SerializeToString(deterministic=True), total


def answer(call: Callable[..., Any], request: Message) -> grpc.StatusCode:
    """Send `request`; the status (OK or a clear refusal, never UNKNOWN / INTERNAL)."""
    try:
        call(request, metadata=OPS, timeout=30)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or ""  # type: ignore[attr-defined]
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and request.ByteSize() > TRANSPORT_LIMIT:
            return code  # the transport refused it before the sidecar saw it
        assert code in REFUSALS, (type(request).__name__, code, details[:300])
        assert details, "a refusal says why"
        return code  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def write(stub: cpb_grpc.ControlStub, method: str, request: Message) -> None:
    before = observed(stub)
    if answer(getattr(stub, method), request) is not grpc.StatusCode.OK:
        assert observed(stub) == before, f"refused {method} changed something"


# ---- writes -----------------------------------------------------------------------------


@FUZZ
@given(reason=texts, rev=revisions, table=weights)
def test_set_weights(served: Served, reason: str, rev: int, table: dict[str, int]) -> None:
    write(
        served.stub,
        "SetWeights",
        cpb.SetWeightsRequest(reason=reason, expected_revision=rev, weights=table),
    )


@FUZZ
@given(reason=texts, rev=revisions, on=st.booleans())
def test_set_kill_switch(served: Served, reason: str, rev: int, on: bool) -> None:
    write(
        served.stub,
        "SetKillSwitch",
        cpb.SetKillSwitchRequest(reason=reason, expected_revision=rev, on=on),
    )


@FUZZ
@given(reason=texts, rev=revisions, key=texts, variant=names)
def test_set_user_override(served: Served, reason: str, rev: int, key: str, variant: str) -> None:
    request = cpb.SetUserOverrideRequest(
        reason=reason, expected_revision=rev, targeting_key=key, variant=variant
    )
    write(served.stub, "SetUserOverride", request)


@FUZZ
@given(reason=texts, rev=revisions, key=texts)
def test_clear_user_override(served: Served, reason: str, rev: int, key: str) -> None:
    request = cpb.ClearUserOverrideRequest(reason=reason, expected_revision=rev, targeting_key=key)
    write(served.stub, "ClearUserOverride", request)


@FUZZ
@given(reason=texts, rev=revisions, segment=names, variant=names)
def test_set_segment_rule(
    served: Served, reason: str, rev: int, segment: str, variant: str
) -> None:
    request = cpb.SetSegmentRuleRequest(
        reason=reason, expected_revision=rev, segment=segment, variant=variant
    )
    write(served.stub, "SetSegmentRule", request)


@FUZZ
@given(reason=texts, rev=revisions, segment=names)
def test_clear_segment_rule(served: Served, reason: str, rev: int, segment: str) -> None:
    request = cpb.ClearSegmentRuleRequest(reason=reason, expected_revision=rev, segment=segment)
    write(served.stub, "ClearSegmentRule", request)


@FUZZ
@given(
    method=st.sampled_from(
        ["Promote", "Rollback", "PauseRollout", "ResumeRollout", "AbortRollout"]
    ),
    reason=texts,
    rev=revisions,
)
def test_verbs_with_a_reason(served: Served, method: str, reason: str, rev: int) -> None:
    request_type = getattr(cpb, f"{method}Request")
    write(served.stub, method, request_type(reason=reason, expected_revision=rev))


@FUZZ
@given(
    reason=texts,
    rev=revisions,
    plan=st.one_of(st.just([]), st.lists(stages(), max_size=40)),
    force=st.booleans(),
)
def test_start_rollout(
    served: Served, reason: str, rev: int, plan: list[cpb.RolloutStage], force: bool
) -> None:
    request = cpb.StartRolloutRequest(
        reason=reason, expected_revision=rev, plan=cpb.RolloutPlan(stages=plan), force=force
    )
    write(served.stub, "StartRollout", request)


@FUZZ
@given(reason=st.one_of(st.sampled_from(["", " ", "\t"]), huge))
def test_run_drill_refusals(served: Served, reason: str) -> None:
    """Only reasons a drill refuses (a valid one runs a whole drill: tested elsewhere)."""
    write(served.stub, "RunDrill", cpb.RunDrillRequest(reason=reason))


# ---- reads ------------------------------------------------------------------------------


@FUZZ
@given(size=counts, token=st.one_of(st.sampled_from(["", "0", "1", "5", "-1"]), texts))
def test_get_audit_log(served: Served, size: int, token: str) -> None:
    answer(served.stub.GetAuditLog, cpb.GetAuditLogRequest(page_size=size, page_token=token))


@FUZZ
@given(size=counts, token=texts, prefix=texts)
def test_list_user_overrides(served: Served, size: int, token: str, prefix: str) -> None:
    request = cpb.ListUserOverridesRequest(page_size=size, page_token=token, prefix=prefix)
    answer(served.stub.ListUserOverrides, request)


@FUZZ
@given(metrics=st.lists(names, max_size=70), omit=st.booleans())
def test_get_experiment_report(served: Served, metrics: list[str], omit: bool) -> None:
    request = cpb.GetExperimentReportRequest(metrics=metrics, omit_history=omit)
    answer(served.stub.GetExperimentReport, request)


def test_reads_without_fields_answer(served: Served) -> None:
    """GetState, GetRollout, GetShadowReport and the first WatchState message answer."""
    stub = served.stub
    for call, request in (
        (stub.GetState, cpb.GetStateRequest()),
        (stub.GetRollout, cpb.GetRolloutRequest()),
        (stub.GetShadowReport, cpb.GetShadowReportRequest()),
    ):
        assert answer(call, request) is grpc.StatusCode.OK
    watch = stub.WatchState(cpb.WatchStateRequest(), metadata=OPS)
    try:
        assert next(watch).revision >= 1
    finally:
        watch.cancel()

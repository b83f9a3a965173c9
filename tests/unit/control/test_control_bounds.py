"""Bounds of every Control input and answer, through a real in-process Control server.

Each input over its bound gets INVALID_ARGUMENT naming the field and the limit, with a
short status message, and changes nothing; every answer fits the message limit, also when
the overrides alone would not (issue #10, failure 5): GetState summarises them,
ListUserOverrides pages them by bytes as well as count, and the audit log keeps working
with entries larger than the limit (shown truncated with a marker), for the API and for
`sidecarctl status`, `sidecarctl audit` and `sidecarctl override list`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from test_control_component import raw_config  # this folder is on sys.path (pytest prepend)

from clients.sidecarctl import main as sidecarctl
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.core.limits import CONTROL_LIMITS, STATUS_MESSAGE_BYTES, TRUNCATED
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import running_sidecar, scripted_model
from sidecar.wiring import Sidecar

OPS = bearer(OPERATOR_TOKEN)
MIB = 1024 * 1024
R = "test"
L = CONTROL_LIMITS


@pytest.fixture
async def upstream() -> AsyncIterator[FaultInjectingUpstream]:
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1, "canary": 2})) as up:
        yield up


@pytest.fixture
async def sidecar(upstream: FaultInjectingUpstream) -> AsyncIterator[Sidecar]:
    raw = raw_config(upstream)
    raw["experiment"] = {"metrics": [{"name": "converted", "kind": "bool", "minimum_effect": 0.05}]}
    async with running_sidecar(raw) as sc:
        yield sc


def control(sc: Sidecar, **options: int) -> cpb_grpc.ControlStub:
    opts = [(f"grpc.{k}", v) for k, v in options.items()]
    return cpb_grpc.ControlStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}", options=opts)
    )


def stage(name: str = "canary-5%", **fields: Any) -> cpb.RolloutStage:
    fields.setdefault("canary_bp", 500)
    return cpb.RolloutStage(name=name, kind=cpb.STAGE_KIND_CANARY, **fields)


def plan(*stages: cpb.RolloutStage) -> cpb.RolloutPlan:
    return cpb.RolloutPlan(stages=list(stages))


HUGE = "x" * (3 * MIB)
LONG_KEY = "k" * (L.key_bytes + 1)
LONG_NAME = "n" * (L.name_bytes + 1)
TOO_MANY_WEIGHTS = {f"v{i}": 0 for i in range(L.weights + 1)}
BAD_INPUTS: list[tuple[str, str, Any, str, str]] = [
    ("3 MiB reason", "SetKillSwitch", cpb.SetKillSwitchRequest(reason=HUGE, on=True), "reason", f"at most {L.reason_bytes} bytes"),
    ("reason one byte over", "SetWeights", cpb.SetWeightsRequest(reason="é" * 513, weights={"stable": 10_000}), "reason", "got 1026"),
    ("long reason on promote", "Promote", cpb.PromoteRequest(reason=HUGE), "reason", "at most"),
    ("long reason on rollback", "Rollback", cpb.RollbackRequest(reason=HUGE), "reason", "at most"),
    ("long reason on a drill", "RunDrill", cpb.RunDrillRequest(reason=HUGE), "reason", "at most"),
    ("long reason on pause", "PauseRollout", cpb.PauseRolloutRequest(reason=HUGE), "reason", "at most"),
    ("long targeting key", "SetUserOverride", cpb.SetUserOverrideRequest(reason=R, targeting_key=LONG_KEY, variant="canary"), "targeting_key", f"at most {L.key_bytes} bytes"),
    ("1 MiB targeting key", "ClearUserOverride", cpb.ClearUserOverrideRequest(reason=R, targeting_key="k" * MIB), "targeting_key", "at most"),
    ("1 MiB variant name", "SetUserOverride", cpb.SetUserOverrideRequest(reason=R, targeting_key="bob", variant="v" * MIB), "variant", "at most"),
    ("1 MiB segment", "SetSegmentRule", cpb.SetSegmentRuleRequest(reason=R, segment="s" * MIB, variant="canary"), "segment", f"at most {L.name_bytes} bytes"),
    ("long segment to clear", "ClearSegmentRule", cpb.ClearSegmentRuleRequest(reason=R, segment=LONG_NAME), "segment", "at most"),
    ("too many weights", "SetWeights", cpb.SetWeightsRequest(reason=R, weights=TOO_MANY_WEIGHTS), "weights", f"at most {L.weights} entries"),
    ("long weight name", "SetWeights", cpb.SetWeightsRequest(reason=R, weights={LONG_NAME: 10_000}), "weights", "at most"),
    ("too many plan stages", "StartRollout", cpb.StartRolloutRequest(reason=R, plan=plan(*(stage(f"s{i}", canary_bp=i + 1) for i in range(L.plan_stages + 1)))), "plan.stages", f"at most {L.plan_stages} stages"),
    ("long stage name", "StartRollout", cpb.StartRolloutRequest(reason=R, plan=plan(stage(LONG_NAME))), "plan.stages[0].name", "at most"),
    ("NaN min_duration_seconds", "StartRollout", cpb.StartRolloutRequest(reason=R, plan=plan(stage(min_duration_seconds=float("nan")))), "plan.stages[0].min_duration_seconds", "finite"),
    ("inf min_duration_seconds", "StartRollout", cpb.StartRolloutRequest(reason=R, plan=plan(stage(min_duration_seconds=float("inf")))), "plan.stages[0].min_duration_seconds", "finite"),
    ("-inf max_drift_psi", "StartRollout", cpb.StartRolloutRequest(reason=R, plan=plan(stage(max_drift_psi=float("-inf")))), "plan.stages[0].max_drift_psi", "finite"),
    ("NaN max_drift_psi", "StartRollout", cpb.StartRolloutRequest(reason=R, plan=plan(stage(max_drift_psi=float("nan")))), "plan.stages[0].max_drift_psi", "finite"),
    ("audit page too large", "GetAuditLog", cpb.GetAuditLogRequest(page_size=L.audit_page + 1), "page_size", f"1..{L.audit_page}"),
    ("audit page negative", "GetAuditLog", cpb.GetAuditLogRequest(page_size=-1), "page_size", "1.."),
    ("audit token not ours", "GetAuditLog", cpb.GetAuditLogRequest(page_token="9" * 10_000), "page_token", "not a token"),
    ("override page too large", "ListUserOverrides", cpb.ListUserOverridesRequest(page_size=L.overrides_page + 1), "page_size", f"1..{L.overrides_page}"),
    ("override token not ours", "ListUserOverrides", cpb.ListUserOverridesRequest(page_token="%%%"), "page_token", "not a token"),
    ("override token too long", "ListUserOverrides", cpb.ListUserOverridesRequest(page_token="A" * MIB), "page_token", "at most"),
    ("override prefix too long", "ListUserOverrides", cpb.ListUserOverridesRequest(prefix=LONG_KEY), "prefix", "at most"),
    ("too many report metrics", "GetExperimentReport", cpb.GetExperimentReportRequest(metrics=["m"] * (L.report_metrics + 1)), "metrics", f"at most {L.report_metrics}"),
    ("1 MiB unknown metric", "GetExperimentReport", cpb.GetExperimentReportRequest(metrics=["m" * MIB]), "metrics", "unknown metric"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "request_", "field", "text"), BAD_INPUTS)
async def test_inputs_over_their_bound_are_refused_and_change_nothing(
    sidecar: Sidecar, name: str, method: str, request_: Any, field: str, text: str
) -> None:
    """INVALID_ARGUMENT naming the field and the limit, a short message, nothing changed."""
    stub = control(sidecar)
    before = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    audit_before = sidecar.control.store.audit_count()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(request_, metadata=OPS)
    details = info.value.details() or ""
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
    assert details.startswith(f"{field}:") or f"{field}:" in details, details
    assert text in details, details
    assert len(details.encode()) <= STATUS_MESSAGE_BYTES
    after = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    assert after == before
    assert sidecar.control.store.audit_count() == audit_before


async def test_a_full_override_table_refuses_new_keys_but_not_changes() -> None:
    """At the override limit a new key is refused (FAILED_PRECONDITION naming the field and
    the limit); changing or clearing an existing key still works."""
    from dataclasses import replace

    from test_control_component import service_on

    from sidecar.errors import FailedPrecondition
    from sidecar.testing.clock import FakeClock

    service, audit = service_on(FakeClock())
    service.limits = replace(CONTROL_LIMITS, user_overrides=3)
    for key in ("a", "b", "c"):
        await service.set_user_override("ops", R, 0, key, "canary")
    revision, audited = service.snapshot().revision, len(audit.entries)
    with pytest.raises(FailedPrecondition, match="user_overrides: at most 3 overrides"):
        await service.set_user_override("ops", R, 0, "d", "canary")
    assert service.snapshot().revision == revision and len(audit.entries) == audited
    await service.set_user_override("ops", R, 0, "a", "stable")
    await service.clear_user_override("ops", R, 0, "b")
    await service.set_user_override("ops", R, 0, "d", "canary")
    assert dict(service.snapshot().state.user_overrides) == {
        "a": "stable",
        "c": "canary",
        "d": "canary",
    }


LIMIT = 64 * 1024  # a small message limit, so that a few hundred overrides exceed it


@pytest.fixture
async def small_limit_sidecar(upstream: FaultInjectingUpstream) -> AsyncIterator[Sidecar]:
    raw = raw_config(upstream)
    raw["server"]["max_message_bytes"] = LIMIT
    async with running_sidecar(raw) as sc:
        yield sc


async def fill_overrides(sc: Sidecar, count: int) -> dict[str, str]:
    """`count` overrides of 200-byte keys, written through the service (faster than gRPC)."""
    overrides = {}
    for i in range(count):
        key = f"user-{i:05d}-" + "u" * 189
        variant = "canary" if i % 2 else "blue"
        await sc.control.set_user_override("ops", f"pin {i}", 0, key, variant)
        overrides[key] = variant
    return overrides


async def test_overrides_larger_than_the_message_limit_keep_every_read_working(
    small_limit_sidecar: Sidecar,
) -> None:
    """500 overrides of 200-byte keys (~100 KiB) under a 64 KiB message limit: GetState
    and the write answers show the first 100 and the count, ListUserOverrides pages all of
    them in order within the limit, and the audit log pages every entry (those whose diff
    exceeds the limit shown truncated with the marker)."""
    sc = small_limit_sidecar
    overrides = await fill_overrides(sc, 500)
    assert sum(len(k) for k in overrides) > LIMIT
    stub = control(sc, max_receive_message_length=LIMIT)

    state = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    assert state.flag.user_override_count == 500
    assert dict(state.flag.user_overrides) == {k: overrides[k] for k in sorted(overrides)[:100]}
    assert state.ByteSize() <= LIMIT
    answer = await stub.SetUserOverride(
        cpb.SetUserOverrideRequest(reason=R, targeting_key="zed", variant="canary"), metadata=OPS
    )
    assert answer.flag.user_override_count == 501 and answer.ByteSize() <= LIMIT
    overrides["zed"] = "canary"

    listed: list[tuple[str, str]] = []
    token, pages = "", 0
    while True:
        page = await stub.ListUserOverrides(
            cpb.ListUserOverridesRequest(page_size=1000, page_token=token), metadata=OPS
        )
        assert page.total == 501 and page.ByteSize() <= LIMIT
        listed.extend((o.targeting_key, o.variant) for o in page.overrides)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert listed == sorted(overrides.items())
    assert pages > 1  # bounded by bytes, not by the page size of 1000

    prefixed = await stub.ListUserOverrides(
        cpb.ListUserOverridesRequest(prefix="user-001"), metadata=OPS
    )
    assert prefixed.total == 100 and len(prefixed.overrides) == 100
    assert all(o.targeting_key.startswith("user-001") for o in prefixed.overrides)

    entries: list[cpb.AuditEntry] = []
    token = ""
    while True:
        log = await stub.GetAuditLog(
            cpb.GetAuditLogRequest(page_size=1000, page_token=token), metadata=OPS
        )
        assert log.ByteSize() <= LIMIT
        entries.extend(log.entries)
        token = log.next_page_token
        if not token:
            break
    assert [e.revision_after for e in entries] == list(range(1, state.revision + 2))
    # Each entry carries its own change (per key), never the whole map, so none needs
    # clipping however many overrides there are.
    assert not [e for e in entries if e.truncated]
    for entry in entries[1:]:
        assert len(json.loads(entry.diff_json)["user_overrides"]) == 1


async def test_sidecarctl_status_audit_and_override_list_work_past_the_limit(
    small_limit_sidecar: Sidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's failure 5 from the operator's side: with overrides exceeding the
    message limit, `status`, `audit` and `override list` answer (exit 0)."""
    sc = small_limit_sidecar
    overrides = await fill_overrides(sc, 400)
    common = ["--target", f"127.0.0.1:{sc.control_port}", "--token", OPERATOR_TOKEN]

    async def run(*argv: str) -> str:
        capsys.readouterr()
        code = await asyncio.to_thread(sidecarctl, [*argv, *common])
        out = capsys.readouterr()
        assert code == 0, out.err
        return out.out

    status = await run("status")
    assert "user overrides: 400, the first 100 by targeting key" in status
    assert "sidecarctl override list" in status
    audit = json.loads(await run("audit", "--limit", "0", "--output", "json"))
    assert len(audit) == 401 and not any(e["truncated"] for e in audit)
    listed = json.loads(await run("override", "list", "--output", "json"))
    assert [(o["targeting_key"], o["variant"]) for o in listed] == sorted(overrides.items())
    table = await run("override", "list", "--prefix", "user-001", "--limit", "3")
    assert table.count("user-001") == 3 and "TARGETING KEY" in table


async def test_texts_stored_before_the_bounds_are_shown_clipped(sidecar: Sidecar) -> None:
    """A 3 MiB reason already in the state and the audit log (written before the bounds,
    here through `apply`, which the verbs guard) does not break GetState or the audit
    log: both show it clipped with the marker."""
    await sidecar.control.apply(
        principal="legacy",
        method="SetKillSwitch",
        reason=HUGE,
        expected_revision=0,
        mutate=lambda s: s.evolve(kill_switch=True, kill_switch_reason=HUGE),
    )
    stub = control(sidecar)
    state = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    assert state.update_reason.endswith(TRUNCATED) and state.flag.kill_switch
    assert len(state.update_reason.encode()) <= L.shown_text_bytes
    assert state.flag.kill_switch_reason.endswith(TRUNCATED)
    entries: list[cpb.AuditEntry] = []
    token = ""
    while True:  # the 3 MiB entry comes on a page of its own (pages are bounded by bytes)
        log = await stub.GetAuditLog(cpb.GetAuditLogRequest(page_token=token), metadata=OPS)
        entries.extend(log.entries)
        token = log.next_page_token
        if not token:
            break
    last = entries[-1]
    assert last.truncated and last.reason.endswith(TRUNCATED)

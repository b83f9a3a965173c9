"""The operator CLI (`sidecarctl`) and its client (`clients.control`) against a FAKE server.

`FakeControl` is not the sidecar: it is an in-process `sidecar.v1.Control` servicer on
127.0.0.1:0 that records each request with its metadata, answers canned `State`s (and canned
`Rollout`s / `DrillReport`s for the rollout verbs, a canned `ExperimentReport` for `report`)
and can be told to fail a method with a status. It pins the CLI's own behaviour (requests
sent, output, exit codes, credentials); the real servicer's semantics are tested elsewhere.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.protobuf.message import Message

from clients.control import ControlClient, ControlError
from clients.render_text import render_audit, render_shadow, render_state
from clients.sidecarctl import main, parse_weight
from clients.views import format_percent, state_to_dict
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.pki import OPENSSL, make_pki

TOKEN = "tok-3f9a1c77e2b84d0d"


def canned_state(revision: int = 7, *, kill_switch: bool = False) -> cpb.State:
    return cpb.State(
        model="classifier",
        variants=[
            cpb.Variant(
                name="stable",
                address="10.0.0.1:9000",
                model_name="iris",
                model_version="1",
                served=9120,
            ),
            cpb.Variant(
                name="canary",
                address="10.0.0.2:9000",
                model_name="iris",
                model_version="2",
                served=480,
            ),
            cpb.Variant(
                name="shadow", address="10.0.0.3:9000", model_name="iris", model_version="3"
            ),
        ],
        flag=cpb.FlagState(
            key="classifier-rollout",
            stable_variant="stable",
            canary_variant="canary",
            default_variant="stable",
            weights={"stable": 9500, "canary": 500, "shadow": 0},
            kill_switch=kill_switch,
            kill_switch_reason="canary error rate 4x stable" if kill_switch else "",
            user_overrides={"user-42": "canary"},
            segment_rules=[cpb.SegmentRule(segment="beta", variant="canary")],
            segments=["beta", "internal"],
        ),
        shadow=cpb.ShadowSettings(
            variant="shadow",
            sample_bp=1000,
            max_in_flight=8,
            deadline_seconds=0.5,
            comparator="exact",
        ),
        revision=revision,
        updated_unix_time=1_700_000_000.0,
        updated_by="alice",
        update_reason="canary step 1",
    )


def default_plan() -> cpb.RolloutPlan:
    """The plan the FAKE answers for a StartRollout without one (shaped like the sidecar's)."""
    return cpb.RolloutPlan(
        stages=[
            cpb.RolloutStage(name="shadow", kind=cpb.STAGE_KIND_SHADOW, min_duration_seconds=600, min_samples=1000),
            cpb.RolloutStage(name="canary-5%", kind=cpb.STAGE_KIND_CANARY, canary_bp=500, min_duration_seconds=900, min_samples=500),
            cpb.RolloutStage(name="canary-25%", kind=cpb.STAGE_KIND_CANARY, canary_bp=2500, min_duration_seconds=900, min_samples=2000),
            cpb.RolloutStage(name="canary-50%", kind=cpb.STAGE_KIND_CANARY, canary_bp=5000, min_duration_seconds=1800, min_samples=5000),
            cpb.RolloutStage(name="canary-100%", kind=cpb.STAGE_KIND_CANARY, canary_bp=10000, min_duration_seconds=1800, min_samples=5000),
            cpb.RolloutStage(name="promote", kind=cpb.STAGE_KIND_PROMOTE),
        ]
    )  # fmt: skip


@dataclass
class RecordedCall:
    method: str
    request: Message
    metadata: dict[str, str]
    peer_identity: list[bytes]


def until_call_ends(context: grpc.ServicerContext, bound: float = 10.0) -> None:
    """Block the handler until the client's deadline or cancel ends the call (at most `bound`
    seconds): an event, not a polling sleep."""
    ended = threading.Event()
    if context.add_callback(ended.set):  # False: the call has already ended
        ended.wait(bound)


@dataclass
class FakeControl(cpb_grpc.ControlServicer):  # type: ignore[misc]
    """FAKE Control servicer: records calls, answers canned States, fails on request."""

    state: cpb.State = field(default_factory=canned_state)
    calls: list[RecordedCall] = field(default_factory=list)
    failures: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)
    hang: bool = False  # answer only once the call has ended (deadline, cancel)
    watch_states: list[cpb.State] = field(default_factory=list)
    watch_hold_open: bool = False
    audit: list[cpb.AuditEntry] = field(default_factory=list)
    audit_max_page: int = 1000
    overrides: list[tuple[str, str]] = field(default_factory=list)
    overrides_max_page: int = 1000
    shadow: cpb.ShadowReport = field(default_factory=cpb.ShadowReport)
    # GetRollout answers `rollout`; queued `rollout_polls` replace it one per call (the last
    # one stays). Rollout writes answer `rollout` updated with the phase they set.
    rollout: cpb.Rollout = field(default_factory=lambda: cpb.Rollout(phase="NONE"))
    rollout_polls: list[cpb.Rollout] = field(default_factory=list)
    drill: cpb.DrillReport = field(default_factory=cpb.DrillReport)
    # GetExperimentReport answers `experiment` as it is (the request is recorded).
    experiment: cpb.ExperimentReport = field(default_factory=cpb.ExperimentReport)
    fleet: cpb.ListFleetMembersResponse = field(default_factory=cpb.ListFleetMembersResponse)
    models: cpb.ListModelsResponse = field(default_factory=cpb.ListModelsResponse)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        fresh = FakeControl()
        for name in self.__dataclass_fields__:
            if name != "lock":
                setattr(self, name, getattr(fresh, name))

    def writes(self) -> list[RecordedCall]:
        return [c for c in self.calls if c.method != "GetState"]

    def _record(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        # grpc-stubs types auth_context() as Mapping[str, bytes]; it maps to lists of bytes.
        identity = cast("list[bytes]", context.auth_context().get("x509_common_name", []))
        with self.lock:
            self.calls.append(
                RecordedCall(
                    method,
                    request,
                    {k: str(v) for k, v in context.invocation_metadata()},
                    identity,
                )
            )
        if self.hang:
            until_call_ends(context)
        failure = self.failures.get(method) or self.failures.get("*")
        if failure:
            context.abort(*failure)

    def _write(self, method: str, request: Message, context: grpc.ServicerContext) -> cpb.State:
        self._record(method, request, context)
        new = cpb.State()
        new.CopyFrom(self.state)
        new.revision += 1
        new.update_reason = getattr(request, "reason", "")
        if isinstance(request, cpb.SetKillSwitchRequest):
            new.flag.kill_switch = request.on
            new.flag.kill_switch_reason = request.reason
        if isinstance(request, cpb.RollbackRequest):  # the rules are suspended, as the sidecar does
            new.flag.rules_suspended = True
            new.flag.rules_suspended_reason = f"Rollback by alice: {request.reason}"
        if isinstance(request, cpb.RestoreRulesRequest):
            new.flag.rules_suspended = False
            new.flag.rules_suspended_reason = ""
        self.state = new
        return new

    def GetState(self, request: cpb.GetStateRequest, context: grpc.ServicerContext) -> cpb.State:
        self._record("GetState", request, context)
        return self.state

    def WatchState(
        self, request: cpb.WatchStateRequest, context: grpc.ServicerContext
    ) -> Iterator[cpb.State]:
        self._record("WatchState", request, context)
        yield from self.watch_states
        if self.watch_hold_open:
            until_call_ends(context)

    def ListModels(self, request: Message, context: grpc.ServicerContext) -> cpb.ListModelsResponse:
        self._record("ListModels", request, context)
        return self.models

    def ListFleetMembers(
        self, request: Message, context: grpc.ServicerContext
    ) -> cpb.ListFleetMembersResponse:
        self._record("ListFleetMembers", request, context)
        return self.fleet

    def SetWeights(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("SetWeights", request, context)

    def SetKillSwitch(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("SetKillSwitch", request, context)

    def SetUserOverride(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("SetUserOverride", request, context)

    def ClearUserOverride(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("ClearUserOverride", request, context)

    def SetSegmentRule(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("SetSegmentRule", request, context)

    def ClearSegmentRule(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("ClearSegmentRule", request, context)

    def Promote(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("Promote", request, context)

    def Rollback(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("Rollback", request, context)

    def RestoreRules(self, request: Message, context: grpc.ServicerContext) -> cpb.State:
        return self._write("RestoreRules", request, context)

    def _rollout_write(
        self, method: str, request: Message, context: grpc.ServicerContext, phase: str
    ) -> cpb.Rollout:
        self._write(method, request, context)  # records, may fail, bumps the revision
        rollout = cpb.Rollout()
        if isinstance(request, cpb.StartRolloutRequest):
            rollout.plan.CopyFrom(request.plan if request.plan.stages else default_plan())
            rollout.stage_name = rollout.plan.stages[0].name
            rollout.started_unix_time = rollout.stage_started_unix_time = 1_700_000_000.0
            rollout.message = "started"
        else:
            rollout.CopyFrom(self.rollout)
            rollout.message = getattr(request, "reason", "")
        rollout.phase = phase
        rollout.revision = self.state.revision
        self.rollout = rollout
        return rollout

    def StartRollout(self, request: Message, context: grpc.ServicerContext) -> cpb.Rollout:
        return self._rollout_write("StartRollout", request, context, "RUNNING")

    def PauseRollout(self, request: Message, context: grpc.ServicerContext) -> cpb.Rollout:
        return self._rollout_write("PauseRollout", request, context, "PAUSED")

    def ResumeRollout(self, request: Message, context: grpc.ServicerContext) -> cpb.Rollout:
        return self._rollout_write("ResumeRollout", request, context, "RUNNING")

    def AbortRollout(self, request: Message, context: grpc.ServicerContext) -> cpb.Rollout:
        return self._rollout_write("AbortRollout", request, context, "ABORTED")

    def GetRollout(
        self, request: cpb.GetRolloutRequest, context: grpc.ServicerContext
    ) -> cpb.Rollout:
        self._record("GetRollout", request, context)
        with self.lock:
            if self.rollout_polls:
                self.rollout = self.rollout_polls.pop(0)
        return self.rollout

    def RunDrill(
        self, request: cpb.RunDrillRequest, context: grpc.ServicerContext
    ) -> cpb.DrillReport:
        self._record("RunDrill", request, context)
        return self.drill

    def GetAuditLog(
        self, request: cpb.GetAuditLogRequest, context: grpc.ServicerContext
    ) -> cpb.GetAuditLogResponse:
        self._record("GetAuditLog", request, context)
        start = int(request.page_token or "0")
        end = start + min(request.page_size or 50, self.audit_max_page)
        return cpb.GetAuditLogResponse(
            entries=self.audit[start:end],
            next_page_token=str(end) if end < len(self.audit) else "",
            total=len(self.audit),
        )

    def ListUserOverrides(
        self, request: cpb.ListUserOverridesRequest, context: grpc.ServicerContext
    ) -> cpb.ListUserOverridesResponse:
        """Pages of `overrides_max_page` over `overrides` (sorted), the token the index."""
        self._record("ListUserOverrides", request, context)
        matching = sorted(o for o in self.overrides if o[0].startswith(request.prefix))
        start = int(request.page_token or "0")
        end = start + min(request.page_size or 100, self.overrides_max_page)
        return cpb.ListUserOverridesResponse(
            overrides=[
                cpb.UserOverride(targeting_key=k, variant=v) for k, v in matching[start:end]
            ],
            next_page_token=str(end) if end < len(matching) else "",
            total=len(matching),
            revision=self.state.revision,
        )

    def GetShadowReport(
        self, request: cpb.GetShadowReportRequest, context: grpc.ServicerContext
    ) -> cpb.ShadowReport:
        self._record("GetShadowReport", request, context)
        return self.shadow

    def GetExperimentReport(
        self, request: cpb.GetExperimentReportRequest, context: grpc.ServicerContext
    ) -> cpb.ExperimentReport:
        self._record("GetExperimentReport", request, context)
        return self.experiment


def start_server(
    fake: FakeControl, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    cpb_grpc.add_ControlServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture
def target(served: tuple[FakeControl, int]) -> str:
    return f"127.0.0.1:{served[1]}"


@dataclass
class Run:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ----------------------------------------------------------------------------- writes

WRITES: list[tuple[list[str], str, Message]] = [
    (
        ["weights", "stable=9000", "canary=1000"],
        "SetWeights",
        cpb.SetWeightsRequest(weights={"stable": 9000, "canary": 1000}),
    ),
    (["kill", "on"], "SetKillSwitch", cpb.SetKillSwitchRequest(on=True)),
    (["kill", "off"], "SetKillSwitch", cpb.SetKillSwitchRequest(on=False)),
    (
        ["override", "set", "user-7", "canary"],
        "SetUserOverride",
        cpb.SetUserOverrideRequest(targeting_key="user-7", variant="canary"),
    ),
    (
        ["override", "clear", "user-7"],
        "ClearUserOverride",
        cpb.ClearUserOverrideRequest(targeting_key="user-7"),
    ),
    (
        ["segment", "set", "beta", "canary"],
        "SetSegmentRule",
        cpb.SetSegmentRuleRequest(segment="beta", variant="canary"),
    ),
    (["segment", "clear", "beta"], "ClearSegmentRule", cpb.ClearSegmentRuleRequest(segment="beta")),
    (["promote"], "Promote", cpb.PromoteRequest()),
    (["rollback"], "Rollback", cpb.RollbackRequest()),
    (["rules", "restore"], "RestoreRules", cpb.RestoreRulesRequest()),
]


@pytest.mark.parametrize(("argv", "method", "expected"), WRITES, ids=lambda v: str(v))
def test_write_sends_request_with_reason_revision_and_token(
    fake: FakeControl,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    method: str,
    expected: Message,
) -> None:
    """Each write subcommand sends its RPC with the fields, reason, expected revision, token."""
    r = run(capsys, "--token", TOKEN, *argv, "--reason", "step 2", "--expect-revision", "7")
    assert r.code == 0, r.err
    [call] = fake.writes()
    assert call.method == method
    expected.reason = "step 2"  # type: ignore[attr-defined]
    expected.expected_revision = 7  # type: ignore[attr-defined]
    assert call.request == expected
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"
    assert [c.method for c in fake.calls] == [method]  # the revision was known: no extra read


def test_write_prints_new_state_and_revision_summary(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a write the table of the new state and "revision A -> B" are printed."""
    r = run(capsys, "kill", "on", "--reason", "canary errors")
    assert r.code == 0, r.err
    assert "KILL SWITCH: ON" in r.out
    assert r.out.rstrip().splitlines()[-1] == "kill switch ON: revision 7 -> 8"
    assert [c.method for c in fake.calls] == ["GetState", "SetKillSwitch"]
    assert fake.writes()[0].request == cpb.SetKillSwitchRequest(reason="canary errors", on=True)


def test_write_json_prints_state_document_and_summary_on_stderr(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """In json mode a write prints only the new state as JSON on stdout; the summary on stderr."""
    r = run(capsys, "promote", "--reason", "healthy 24h", "--output", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["revision"] == 8
    assert doc["update_reason"] == "healthy 24h"
    assert "promoted: revision 7 -> 8" in r.err


@pytest.mark.parametrize(
    ("arg", "bp"),
    [("canary=5%", 500), ("canary=0.5%", 50), ("canary=12.25%", 1225), ("canary=100%", 10000)],
)
def test_weights_percentages_become_basis_points(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], arg: str, bp: int
) -> None:
    """`weights canary=5%` sends 500 basis points (percentages with up to 2 decimals)."""
    r = run(capsys, "weights", arg, "--reason", "r", "--expect-revision", "7")
    assert r.code == 0, r.err
    request = fake.writes()[0].request
    assert isinstance(request, cpb.SetWeightsRequest)
    assert dict(request.weights) == {"canary": bp}


@pytest.mark.parametrize(
    "arg",
    [
        "canary",
        "canary=",
        "=500",
        "canary=abc",
        "canary=5.5",
        "canary=-1",
        "canary=10001",
        "canary=100.01%",
        "canary=0.125%",
        "canary=5%%",
        "canary=nan%",
        "canary=5 bp",
    ],
)
def test_bad_weight_syntax_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], arg: str
) -> None:
    """Anything but VARIANT=BP or VARIANT=P% exits 2 with usage and sends nothing."""
    r = run(capsys, "weights", "stable=9500", arg, "--reason", "r")
    assert r.code == 2
    assert "usage: sidecarctl weights" in r.err
    assert fake.calls == []


def test_duplicate_weight_variant_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """Naming a variant twice in `weights` exits 2 and sends nothing."""
    r = run(capsys, "weights", "canary=5%", "canary=500", "--reason", "r")
    assert r.code == 2
    assert "'canary' given twice" in r.err
    assert fake.calls == []


def test_parse_weight_accepts_both_units() -> None:
    """parse_weight reads basis points and percentages to the same basis points."""
    assert parse_weight("canary=500") == ("canary", 500)
    assert parse_weight(" canary = 5% ") == ("canary", 500)


@pytest.mark.parametrize(
    "argv",
    [
        ["weights", "canary=500"],
        ["kill", "on"],
        ["override", "set", "u", "canary"],
        ["segment", "clear", "beta"],
        ["promote"],
        ["rollback"],
        ["rollback", "--reason", "   "],
    ],
)
def test_write_without_reason_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A write without a (non-blank) --reason exits 2 and sends nothing."""
    r = run(capsys, *argv)
    assert r.code == 2
    assert "--reason" in r.err
    assert fake.calls == []


# --------------------------------------------------------------------------- failures


def test_server_refusal_exits_1_with_code_and_message(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stale revision (ABORTED) exits 1 printing `error: ABORTED: <server message>`."""
    fake.failures["SetWeights"] = (grpc.StatusCode.ABORTED, "expected revision 6, state is at 7")
    r = run(capsys, "weights", "canary=5%", "stable=95%", "--reason", "r", "--expect-revision", "6")
    assert r.code == 1
    assert "error: ABORTED: expected revision 6, state is at 7" in r.err
    assert "--expect-revision" in r.err  # the hint says how to recover
    assert r.out == ""


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
def test_other_refusals_exit_1(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], code: grpc.StatusCode
) -> None:
    """Every refusal by the server (not reachability) exits 1 naming the status."""
    fake.failures["*"] = (code, "weights: sum is 9000, want 10000")
    r = run(capsys, "status")
    assert r.code == 1
    assert f"error: {code.name}: weights: sum is 9000, want 10000" in r.err


def test_unreachable_target_exits_3_with_hint(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening at the target exits 3 with UNAVAILABLE and a hint naming the target."""
    dead = f"127.0.0.1:{free_port()}"
    r = run(capsys, "--target", dead, "kill", "on", "--reason", "r", "--expect-revision", "1")
    assert r.code == 3
    assert "error: UNAVAILABLE:" in r.err
    assert f"hint: could not reach the sidecar's control API at {dead}" in r.err


def test_deadline_exceeded_exits_3(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """A call outliving --timeout exits 3 (DEADLINE_EXCEEDED counts as unreachable)."""
    fake.hang = True
    r = run(capsys, "--timeout", "0.1", "status")
    assert r.code == 3
    assert "error: DEADLINE_EXCEEDED:" in r.err


def test_client_raises_control_error_from_rpc_error(fake: FakeControl, target: str) -> None:
    """ControlClient turns grpc.RpcError into ControlError(code name, details), chained."""
    fake.failures["Promote"] = (grpc.StatusCode.FAILED_PRECONDITION, "no canary configured")
    with ControlClient(target) as client, pytest.raises(ControlError) as info:
        client.promote(reason="r")
    assert (info.value.code, info.value.message) == ("FAILED_PRECONDITION", "no canary configured")
    assert not info.value.unreachable
    assert isinstance(info.value.__cause__, grpc.RpcError)


# ------------------------------------------------------------------------ credentials


@pytest.mark.parametrize(
    ("flag", "file", "env", "sent"),
    [
        ("from-flag", "from-file", "from-env", "from-flag"),
        (None, "from-file", "from-env", "from-file"),
        (None, None, "from-env", "from-env"),
        (None, None, None, None),
    ],
)
def test_token_precedence_flag_then_file_then_env(
    fake: FakeControl,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    file: str | None,
    env: str | None,
    sent: str | None,
) -> None:
    """The bearer token comes from --token, else --token-file, else $SIDECARCTL_TOKEN."""
    argv: list[str] = []
    if flag:
        argv += ["--token", flag]
    if file:
        path = tmp_path / "token"
        path.write_text(f"{file}\n")
        argv += ["--token-file", str(path)]
    if env:
        monkeypatch.setenv("SIDECARCTL_TOKEN", env)
    r = run(capsys, *argv, "status")
    assert r.code == 0, r.err
    metadata = fake.calls[0].metadata
    if sent is None:
        assert "authorization" not in metadata
    else:
        assert metadata["authorization"] == f"Bearer {sent}"


def test_token_never_printed(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The token appears in no output: success, server errors echoing it, usage errors."""
    outputs = [run(capsys, "--token", TOKEN, "status"), run(capsys, "-o", "json", "status")]
    fake.failures["*"] = (grpc.StatusCode.UNAUTHENTICATED, f"unknown token {TOKEN!r}")
    outputs.append(run(capsys, "--token", TOKEN, "status"))
    assert outputs[-1].code == 1
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    outputs.append(run(capsys, "--token-file", str(token_file), "status"))
    outputs.append(run(capsys, "--token", TOKEN, "status", "--bogus", TOKEN))
    assert outputs[-1].code == 2
    outputs.append(run(capsys, f"--token={TOKEN}", "weights", TOKEN, "--reason", "r"))
    assert outputs[-1].code == 2
    for r in outputs:
        assert TOKEN not in r.out
        assert TOKEN not in r.err
    assert "<redacted>" in outputs[2].err


def test_unreadable_token_file_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A missing or empty --token-file exits 2 and sends nothing."""
    assert run(capsys, "--token-file", str(tmp_path / "missing"), "status").code == 2
    (tmp_path / "empty").write_text("\n")
    r = run(capsys, "--token-file", str(tmp_path / "empty"), "status")
    assert r.code == 2
    assert "is empty" in r.err
    assert fake.calls == []


# ----------------------------------------------------------------------------- reads


def test_status_table(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """`status` prints the state table: kill switch line, variants with %, bp and served."""
    r = run(capsys, "status")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0] == "kill switch: off"
    canary_row = next(line for line in r.out.splitlines() if line.startswith("canary "))
    assert canary_row.split() == [
        "canary",
        "canary",
        "5%",
        "500",
        "bp",
        "480",
        "10.0.0.2:9000",
        "iris",
        "2",
    ]
    assert "revision 7" in r.out
    assert fake.calls[0].method == "GetState"


def test_status_json_and_options_after_the_command(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --output json` (global option after the command) prints the state as JSON."""
    r = run(capsys, "status", "--output", "json", "--token", TOKEN)
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["revision"] == 7
    assert doc["weights"] == {"canary": 500, "shadow": 0, "stable": 9500}
    assert doc["kill_switch"] is False
    assert doc["user_overrides"] == {"user-42": "canary"}
    assert doc["segment_rules"] == [{"segment": "beta", "variant": "canary"}]
    assert doc["updated_at"] == "2023-11-14T22:13:20Z"
    assert [(v["name"], v["role"], v["weight_bp"]) for v in doc["variants"]] == [
        ("stable", "stable", 9500),
        ("canary", "canary", 500),
        ("shadow", None, 0),
    ]
    assert fake.calls[0].metadata["authorization"] == f"Bearer {TOKEN}"


def test_status_watch_json_prints_one_line_per_state(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --watch -o json` prints one JSON object per streamed state, exits 0 at the end."""
    fake.watch_states = [canned_state(7), canned_state(8, kill_switch=True), canned_state(9)]
    r = run(capsys, "-o", "json", "status", "--watch")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert len(lines) == 3
    docs = [json.loads(line) for line in lines]
    assert [d["revision"] for d in docs] == [7, 8, 9]
    assert [d["kill_switch"] for d in docs] == [False, True, False]
    assert [c.method for c in fake.calls] == ["WatchState"]


def test_status_watch_table_renders_each_state(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --watch` re-renders the table under a revision header for every state."""
    fake.watch_states = [canned_state(7), canned_state(8, kill_switch=True)]
    r = run(capsys, "status", "--watch")
    assert r.code == 0, r.err
    assert r.out.count("=== revision") == 2
    assert r.out.index("=== revision 8 ===") < r.out.index("KILL SWITCH: ON")


def test_watch_state_can_be_cancelled(fake: FakeControl, target: str) -> None:
    """A watch on an open stream stops cleanly (no error) when cancelled."""
    fake.watch_states = [canned_state(7)]
    fake.watch_hold_open = True
    with ControlClient(target) as client:
        watch = client.watch_state()
        assert next(watch).revision == 7
        threading.Thread(target=watch.cancel).start()  # from another thread, as Ctrl-C does
        assert list(watch) == []


def make_audit(n: int) -> list[cpb.AuditEntry]:
    return [
        cpb.AuditEntry(
            unix_time=1_700_000_000.0 + i,
            principal="alice",
            method="SetWeights",
            reason=f"step {i}",
            revision_before=i,
            revision_after=i + 1,
            diff_json=json.dumps({"weights.canary": [i * 100, (i + 1) * 100]}),
        )
        for i in range(1, n + 1)
    ]


def test_audit_follows_page_tokens(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """`audit` reads every page by its next_page_token and prints entries oldest first."""
    fake.audit = make_audit(5)
    fake.audit_max_page = 2
    r = run(capsys, "audit")
    assert r.code == 0, r.err
    assert [c.request.page_token for c in fake.calls] == ["", "2", "4"]  # type: ignore[attr-defined]
    rows = [line for line in r.out.splitlines() if "SetWeights" in line]
    assert [row.split("step ")[1].split()[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert "weights.canary: 500 -> 600" in rows[-1]


def test_audit_limit_keeps_newest_last(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit --limit 2 -o json` lists the 2 most recent entries, newest last."""
    fake.audit = make_audit(5)
    fake.audit_max_page = 2
    r = run(capsys, "audit", "--limit", "2", "-o", "json")
    assert r.code == 0, r.err
    docs = json.loads(r.out)
    assert [(d["reason"], d["revision_after"]) for d in docs] == [("step 4", 5), ("step 5", 6)]
    assert docs[-1]["diff"] == {"weights.canary": [500, 600]}


def test_override_list_follows_pages_with_prefix_and_limit(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`override list` reads every page in key order; --prefix is sent, --limit stops."""
    fake.overrides = [(f"user-{i:02d}", "canary" if i % 2 else "stable") for i in range(25)]
    fake.overrides_max_page = 10
    r = run(capsys, "override", "list", "-o", "json")
    assert r.code == 0, r.err
    assert [(d["targeting_key"], d["variant"]) for d in json.loads(r.out)] == fake.overrides
    assert [c.request.page_token for c in fake.calls] == ["", "10", "20"]  # type: ignore[attr-defined]
    fake.calls.clear()
    r = run(capsys, "override", "list", "--prefix", "user-1", "--limit", "3")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].split() == ["TARGETING", "KEY", "VARIANT"]
    assert [line.split()[0] for line in r.out.splitlines()[1:]] == ["user-10", "user-11", "user-12"]
    assert {c.request.prefix for c in fake.calls} == {"user-1"}  # type: ignore[attr-defined]


def test_status_says_how_many_overrides_and_where_the_rest_are(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """A State listing only the first overrides: the table and the JSON give the count."""
    fake.state.flag.user_override_count = 5000
    r = run(capsys, "status")
    assert r.code == 0, r.err
    assert "user overrides: 5000, the first 1 by targeting key" in r.out
    assert "sidecarctl override list" in r.out
    r = run(capsys, "status", "-o", "json")
    assert json.loads(r.out)["user_override_count"] == 5000


def test_truncated_audit_entry_is_shown_and_flagged(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry the server clipped renders its marker; the JSON says `truncated`."""
    fake.audit = [
        cpb.AuditEntry(
            method="SetUserOverride",
            reason="pin",
            revision_before=1,
            revision_after=2,
            diff_json=json.dumps({"truncated": '{"user_overrides": [{…[truncated]'}),
            truncated=True,
        )
    ]
    r = run(capsys, "audit")
    assert r.code == 0, r.err
    assert 'too large, clipped by the sidecar; --output json for more) {"user_overrides"' in r.out
    r = run(capsys, "audit", "-o", "json")
    assert json.loads(r.out)[0]["truncated"] is True


def shadow_report() -> cpb.ShadowReport:
    return cpb.ShadowReport(
        shadow_variant="shadow",
        comparator="exact",
        sampled=100,
        sent=95,
        dropped=5,
        compared=90,
        agreed=81,
        agreement_rate=0.9,
        errors_by_status={"DEADLINE_EXCEEDED": 3},
        latency=cpb.LatencySummary(
            count=90, primary_p50_seconds=0.012, primary_p95_seconds=0.03, ratio_p50=1.1
        ),
        examples=[
            cpb.Disagreement(
                request_id="req-9",
                targeting_key="user-9",
                primary_variant="stable",
                detail="predict: 1 of 4 elements differ; first at (2,): 0 vs 2",
                unix_time=1_700_000_100.0,
            )
        ],
    )


def test_shadow_table_and_json(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """`shadow` shows counts, agreement, errors and disagreements; json carries the same."""
    fake.shadow = shadow_report()
    r = run(capsys, "shadow")
    assert r.code == 0, r.err
    assert "agreement 90.00%" in r.out
    assert "DEADLINE_EXCEEDED 3" in r.out
    assert "req-9" in r.out
    doc = json.loads(run(capsys, "shadow", "-o", "json").out)
    assert (doc["sent"], doc["dropped"], doc["agreement_rate"]) == (95, 5, 0.9)
    assert doc["examples"][0]["request_id"] == "req-9"


def test_help_exits_0_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` exits 0 and shows the commands and an example; each command has its own."""
    r = run(capsys, "--help")
    assert r.code == 0
    for command in ("status", "weights", "kill", "override", "segment", "promote", "rollback"):
        assert command in r.out
    assert "sidecarctl weights stable=95% canary=5%" in r.out
    r = run(capsys, "kill", "--help")
    assert r.code == 0
    assert "every request goes to the stable variant" in r.out
    assert "--expect-revision" in r.out


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    if OPENSSL is None:
        pytest.skip("openssl not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_mutual_tls(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --ca-file/--cert-file/--key-file the CLI talks mTLS; without the cert it can't."""
    fake = FakeControl()
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server, port = start_server(fake, credentials)
    try:
        tls: list[str] = ["--target", f"localhost:{port}", "--ca-file", str(pki / "ca.pem")]
        client_cert = [
            "--cert-file",
            str(pki / "client.pem"),
            "--key-file",
            str(pki / "client.key"),
        ]
        r = run(capsys, *tls, *client_cert, "--token", TOKEN, "status")
        assert r.code == 0, r.err
        assert fake.calls[0].peer_identity == [b"operator-alice"]
        assert fake.calls[0].metadata["authorization"] == f"Bearer {TOKEN}"
        assert run(capsys, *tls, "status").code == 3  # the server requires a client certificate
        half = run(capsys, *tls, "--cert-file", str(pki / "client.pem"), "status")
        assert half.code == 2
        assert "together" in half.err
    finally:
        server.stop(grace=None)


# ------------------------------------------------------------------------ rendering


def test_render_state_shows_kill_switch_on_first_with_reason() -> None:
    """With the kill switch on, the first line says so in capitals, with its reason."""
    first = render_state(canned_state(kill_switch=True)).splitlines()[0]
    assert first.startswith("KILL SWITCH: ON")
    assert "canary error rate 4x stable" in first
    assert "'stable'" in first


def test_render_state_variant_table_roles_percent_and_bp() -> None:
    """Variants show role (stable/canary/—), weight as % and bp, served, address, model."""
    lines = [line.split() for line in render_state(canned_state()).splitlines() if line]
    rows = {cells[0]: cells for cells in lines}
    assert rows["stable"][:6] == ["stable", "stable", "95%", "9500", "bp", "9120"]
    assert rows["canary"][:6] == ["canary", "canary", "5%", "500", "bp", "480"]
    assert rows["shadow"][:6] == ["shadow", "—", "0%", "0", "bp", "0"]
    assert rows["VARIANT"] == [
        "VARIANT",
        "ROLE",
        "WEIGHT",
        "BP",
        "SERVED",
        "ADDRESS",
        "MODEL",
        "VERSION",
    ]


def test_render_state_rules_shadow_and_last_change() -> None:
    """Overrides, segment rules, shadow settings and the last change are listed."""
    text = render_state(canned_state())
    assert "  user-42 -> canary" in text
    assert "  beta -> canary" in text
    assert "shadow: shadow gets a copy of 10% (1000 bp)" in text
    assert 'last change: revision 7 at 2023-11-14T22:13:20Z by alice: "canary step 1"' in text


def test_render_state_safe_mode_and_empty_state() -> None:
    """Safe mode is announced; an empty state renders without errors."""
    assert render_state(cpb.State(safe_mode=True)).startswith("SAFE MODE")
    text = render_state(cpb.State())
    assert "user overrides: none" in text
    assert "shadow: off" in text


def test_render_state_escapes_control_characters() -> None:
    """Terminal control characters in operator-supplied text are shown escaped, not sent."""
    state = canned_state(kill_switch=True)
    state.flag.kill_switch_reason = "oops\x1b[2J"
    text = render_state(state)
    assert "\x1b" not in text
    assert "oops\\x1b[2J" in text


def test_format_percent() -> None:
    """Basis points format as percentages without needless zeros."""
    assert [format_percent(bp) for bp in (10000, 500, 50, 1225, 1, 0)] == [
        "100%",
        "5%",
        "0.5%",
        "12.25%",
        "0.01%",
        "0%",
    ]


def test_state_to_dict_is_json_ready() -> None:
    """state_to_dict round-trips through json with integers kept as integers."""
    doc = json.loads(json.dumps(state_to_dict(canned_state(kill_switch=True))))
    assert doc["kill_switch"] is True
    assert doc["kill_switch_reason"] == "canary error rate 4x stable"
    assert doc["shadow"]["sample_bp"] == 1000
    assert doc["variants"][0]["served"] == 9120
    assert doc["safe_mode"] is False


def test_render_audit_and_shadow_empty() -> None:
    """Empty audit logs and unconfigured shadows render a plain sentence."""
    assert render_audit([]) == "audit log: no entries"
    assert render_shadow(cpb.ShadowReport()) == "shadow: no shadow variant configured"


def test_render_audit_shows_unparseable_diff_raw() -> None:
    """An audit diff that is not JSON is shown as-is rather than failing."""
    entry = cpb.AuditEntry(method="Promote", reason="r", diff_json="not json", revision_after=2)
    assert "not json" in render_audit([entry])


def test_render_state_shows_each_warning_on_its_own_line_near_the_top() -> None:
    """Flag lifecycle warnings appear as `WARNING:` lines right under the kill switch line."""
    state = canned_state()
    state.warnings.extend(["canary at 100% for 3 days without promotion", "bell\x07"])
    lines = render_state(state).splitlines()
    assert lines[0] == "kill switch: off"
    assert lines[1:3] == [
        "WARNING: canary at 100% for 3 days without promotion",
        "WARNING: bell\\x07",
    ]
    assert not any(line.startswith("WARNING") for line in render_state(canned_state()).splitlines())


def test_state_to_dict_and_status_json_carry_warnings(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status -o json` lists the state's warnings (an empty list when there are none)."""
    assert state_to_dict(canned_state())["warnings"] == []
    fake.state.warnings.append("stale flag: canary held at 100% for 72h")
    r = run(capsys, "status", "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["warnings"] == ["stale flag: canary held at 100% for 72h"]
    assert "WARNING: stale flag: canary held at 100% for 72h" in run(capsys, "status").out


def test_wait_sends_the_fleet_wait_header_and_exits_4_when_members_lag(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """--wait sends x-fleet-wait-seconds (the --wait-timeout); members listed as not
    applied make exit 4 naming them; without --wait no header is sent."""
    r = run(capsys, "kill", "on", "--reason", "incident", "--wait", "--wait-timeout", "2.5")
    assert r.code == 0, r.err
    assert fake.writes()[0].metadata["x-fleet-wait-seconds"] == "2.5"
    assert "x-fleet-wait-seconds" not in fake.calls[0].metadata  # the GetState before it
    fake.state.fleet = True
    fake.state.fleet_members_live = 3
    fake.state.fleet_not_applied.append("pod-b:7")
    r = run(capsys, "weights", "stable=100%", "--reason", "back", "--wait")
    assert r.code == 4
    assert "pod-b:7" in r.err and "not applied within 30s" in r.err
    assert "NOT APPLIED when the wait ended: pod-b:7" in r.out
    fake.state.ClearField("fleet_not_applied")
    r = run(capsys, "kill", "off", "--reason", "done")
    assert r.code == 0 and "x-fleet-wait-seconds" not in fake.writes()[-1].metadata


@pytest.mark.parametrize("value", ["0", "-1", "301", "nan", "x"])
def test_wait_timeout_is_bounded(capsys: pytest.CaptureFixture[str], value: str) -> None:
    r = run(capsys, "kill", "on", "--reason", "r", "--wait", "--wait-timeout", value)
    assert r.code == 2 and "--wait-timeout" in r.err


def test_fleet_lists_members_as_table_and_json(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fleet` shows each member's applied revision, lag, readiness and liveness."""
    fake.fleet = cpb.ListFleetMembersResponse(
        fleet="iris",
        revision=9,
        members=[
            cpb.FleetMember(member_id="pod-a:1", host="pod-a", version="1.0", applied_revision=9,
                            lag=0, ready=True, last_seen_unix_time=1.0, live=True),
            cpb.FleetMember(member_id="pod-b:1", host="pod-b", version="1.0", applied_revision=7,
                            lag=2, ready=False, last_seen_unix_time=1.0, live=False),
        ],
    )  # fmt: skip
    r = run(capsys, "fleet")
    assert r.code == 0, r.err
    assert "fleet iris   revision 9   members 2" in r.out
    row = next(line for line in r.out.splitlines() if line.startswith("pod-b:1"))
    assert row.split()[3:7] == ["7", "2", "NO", "NO"]
    r = run(capsys, "fleet", "-o", "json")
    data = json.loads(r.out)
    assert [(m["member_id"], m["lag"], m["ready"]) for m in data["members"]] == [
        ("pod-a:1", 0, True),
        ("pod-b:1", 2, False),
    ]


# ------------------------------------------------------------- suspended rules (rollback)


def test_rollback_then_status_shows_the_rules_suspended_and_restore_clears_it(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a rollback, `status` marks the overrides and segment rules SUSPENDED with the
    rollback's reason (text, json and yaml); `rules restore` sends RestoreRules and the
    state it prints has them in force again."""
    assert run(capsys, "rollback", "--reason", "p95 regression").code == 0
    text = run(capsys, "status").out
    assert "RULES SUSPENDED since Rollback by alice: p95 regression" in text
    assert "user overrides (suspended) (targeting key -> variant):" in text
    assert "segment rules (suspended) (segment -> variant):" in text
    assert "`sidecarctl rules restore`" in text
    document = json.loads(run(capsys, "status", "--output", "json").out)
    assert document["rules_suspended"] is True
    assert document["rules_suspended_reason"] == "Rollback by alice: p95 regression"
    assert "rules_suspended: true" in run(capsys, "status", "-o", "yaml").out

    restored = run(capsys, "rules", "restore", "--reason", "canary fixed", "--expect-revision", "8")
    assert restored.code == 0
    assert "SUSPENDED" not in restored.out and "(suspended)" not in restored.out
    assert "revision 8 -> 9" in restored.out
    call = fake.writes()[-1]
    assert call.method == "RestoreRules"
    assert call.request == cpb.RestoreRulesRequest(reason="canary fixed", expected_revision=8)


def test_rules_restore_refused_exits_1_with_the_servers_message(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing suspended: the server's FAILED_PRECONDITION reaches the operator, exit 1."""
    fake.failures["RestoreRules"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "rules_suspended: the user overrides and segment rules are not suspended",
    )
    result = run(capsys, "rules", "restore", "--reason", "x")
    assert result.code == 1
    assert "FAILED_PRECONDITION: rules_suspended" in result.err


def test_rollback_and_rules_help_say_what_happens_to_the_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`rollback --help` says pinned users and segments go to stable too, until restored."""
    r = run(capsys, "rollback", "--help")
    assert r.code == 0
    assert "pinned" in r.out and "suspended" in r.out and "sidecarctl rules restore" in r.out
    r = run(capsys, "rules", "restore", "--help")
    assert r.code == 0 and "sidecarctl rules restore --reason" in r.out
    assert "rules" in run(capsys, "--help").out

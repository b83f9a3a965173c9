"""`sidecarctl rollout ...` / `sidecarctl drill` and the rollout renderers, against a FAKE server.

The server is `FakeControl` from test_sidecarctl (an in-process FAKE `sidecar.v1.Control`
servicer, not the sidecar): it records each request with its metadata and answers canned
`Rollout`s and `DrillReport`s. These tests pin the CLI's side: the requests it sends (plan
stages converted from the file, force, reason, expected revision, token), what it prints,
its exit codes, and the pure renderers. The rollout controller itself is tested elsewhere.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import grpc
import pytest
from test_sidecarctl import TOKEN, FakeControl, canned_state, default_plan, run

from clients.control import ControlClient, ControlError
from clients.render_text import progress_bar, render_drill, render_rollout
from clients.sidecarctl import PlanFileError, load_plan, parse_plan
from clients.views import rollout_to_dict
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

SHADOW, CANARY, PROMOTE = cpb.STAGE_KIND_SHADOW, cpb.STAGE_KIND_CANARY, cpb.STAGE_KIND_PROMOTE
T0 = 1_700_000_000.0


def rollout(
    phase: str = "RUNNING",
    *,
    stage_index: int = 2,
    elapsed: float = 360.0,
    samples: int = 400,
    gates: list[cpb.Gate] | None = None,
) -> cpb.Rollout:
    """A canned rollout of the default plan, at canary-25% (900 s / 2000 samples) by default."""
    plan = default_plan()
    name = plan.stages[stage_index].name if stage_index < len(plan.stages) else ""
    return cpb.Rollout(
        phase=phase,
        plan=plan,
        stage_index=stage_index,
        stage_name=name,
        started_unix_time=T0,
        stage_started_unix_time=T0 + 3000,
        stage_elapsed_seconds=elapsed,
        stage_samples=samples,
        gates=gates
        if gates is not None
        else [
            cpb.Gate(name="health", status=cpb.GATE_PASS, value=1, threshold=1, detail="PASS: no difference"),
            cpb.Gate(name="min_samples", status=cpb.GATE_WAIT, value=400, threshold=2000, detail="400 of 2000 canary requests"),
            cpb.Gate(name="error_ratio", status=cpb.GATE_FAIL, value=2.5, threshold=2, detail="canary 2.5x stable"),
        ],
        verdict="PASS: canary error rate 0.10% vs stable 0.12%",
        message="stage canary-5% gates passed",
        baseline_error_rate=0.0012,
        baseline_p50_seconds=0.012,
        baseline_p95_seconds=0.031,
        baseline_requests=5000,
        revision=12,
    )  # fmt: skip


def methods(fake: FakeControl) -> list[str]:
    return [c.method for c in fake.calls]


PLAN_YAML = """\
- name: shadow
  kind: shadow
  min_duration: 10m
  min_samples: 1000
- name: canary-5%
  kind: canary
  canary_percent: 5
  min_duration: 900
  min_samples: 500
- name: half
  kind: Canary
  canary_bp: 5000
  min_duration: 1h30m
- name: promote
  kind: promote
"""

PLAN_STAGES = [
    cpb.RolloutStage(name="shadow", kind=SHADOW, min_duration_seconds=600, min_samples=1000),
    cpb.RolloutStage(name="canary-5%", kind=CANARY, canary_bp=500, min_duration_seconds=900, min_samples=500),
    cpb.RolloutStage(name="half", kind=CANARY, canary_bp=5000, min_duration_seconds=5400),
    cpb.RolloutStage(name="promote", kind=PROMOTE),
]  # fmt: skip


# ----------------------------------------------------------------------------- requests


def test_rollout_start_without_plan_sends_reason_revision_and_token(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rollout start` without --plan sends no plan (the server's default), no force."""
    r = run(
        capsys,
        "--token",
        TOKEN,
        "rollout",
        "start",
        "--reason",
        "iris v2",
        "--expect-revision",
        "7",
    )
    assert r.code == 0, r.err
    [call] = fake.calls
    assert call.method == "StartRollout"
    assert call.request == cpb.StartRolloutRequest(reason="iris v2", expected_revision=7)
    assert isinstance(call.request, cpb.StartRolloutRequest)
    assert not call.request.HasField("plan")
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_rollout_start_converts_plan_file_stages_and_sends_force(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    """A YAML or JSON plan file becomes RolloutStages (percent -> bp, "10m" -> 600 s); --force is sent."""
    import yaml

    path = tmp_path / f"plan{suffix}"
    stages = yaml.safe_load(PLAN_YAML)
    path.write_text(PLAN_YAML if suffix == ".yaml" else json.dumps({"stages": stages}))
    r = run(
        capsys,
        "rollout",
        "start",
        "--plan",
        str(path),
        "--force",
        "--reason",
        "hotfix",
        "--expect-revision",
        "7",
    )
    assert r.code == 0, r.err
    [call] = fake.calls
    assert call.request == cpb.StartRolloutRequest(
        reason="hotfix", expected_revision=7, force=True, plan=cpb.RolloutPlan(stages=PLAN_STAGES)
    )
    assert "rollout started with --force" in r.out


@pytest.mark.parametrize(
    ("action", "method", "request_type"),
    [
        ("pause", "PauseRollout", cpb.PauseRolloutRequest),
        ("resume", "ResumeRollout", cpb.ResumeRolloutRequest),
        ("abort", "AbortRollout", cpb.AbortRolloutRequest),
    ],
)
def test_rollout_verbs_send_reason_revision_and_token(
    fake: FakeControl,
    capsys: pytest.CaptureFixture[str],
    action: str,
    method: str,
    request_type: type[cpb.PauseRolloutRequest],
) -> None:
    """`rollout pause|resume|abort` send their RPC with the reason, expected revision and token."""
    fake.rollout = rollout()
    r = run(
        capsys,
        "--token",
        TOKEN,
        "rollout",
        action,
        "--reason",
        "p95 spike",
        "--expect-revision",
        "7",
    )
    assert r.code == 0, r.err
    [call] = fake.calls
    assert call.method == method
    assert call.request == request_type(reason="p95 spike", expected_revision=7)
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    "argv", [["start"], ["pause"], ["resume"], ["abort"], ["abort", "--reason", " "]]
)
def test_rollout_writes_without_reason_are_usage_errors(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """Every rollout verb needs a non-blank --reason: exit 2, nothing sent."""
    r = run(capsys, "rollout", *argv)
    assert r.code == 2
    assert "--reason" in r.err
    assert fake.calls == []


# ------------------------------------------------------------------------ write output


def test_rollout_write_prints_rollout_and_revision_summary(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `rollout start` the rollout (phase, ladder) and "revision A -> B" are printed."""
    r = run(capsys, "rollout", "start", "--reason", "iris v2")
    assert r.code == 0, r.err
    assert r.out.startswith("rollout RUNNING at stage 1 of 6, shadow")
    assert "plan: ▶ shadow (mirror only, 0 bp served)  · canary-5%" in r.out
    assert r.out.rstrip().splitlines()[-1] == "rollout started: revision 7 -> 8"
    assert methods(fake) == ["GetState", "StartRollout"]  # the revision before, then the write


def test_rollout_write_json_prints_one_document_and_summary_on_stderr(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """In json mode `rollout pause` prints only the rollout as JSON; the summary goes to stderr."""
    fake.rollout = rollout()
    r = run(capsys, "-o", "json", "rollout", "pause", "--reason", "hold", "--expect-revision", "7")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert (doc["phase"], doc["active"], doc["stage_name"], doc["revision"]) == (
        "PAUSED",
        True,
        "canary-25%",
        8,
    )
    assert doc["message"] == "hold"
    assert "rollout paused: revision 7 -> 8" in r.err


def test_rollout_start_failed_precondition_exits_1_with_message(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A plan the server refuses (FAILED_PRECONDITION: skips stages) exits 1 with its message."""
    message = (
        "plan skips stages: canary-50%: first canary stage at 5000 bp (> 500). "
        "Pass force with a reason to do it"
    )
    fake.failures["StartRollout"] = (grpc.StatusCode.FAILED_PRECONDITION, message)
    path = tmp_path / "plan.yaml"
    path.write_text("- {name: canary-50%, kind: canary, canary_percent: 50}\n")
    r = run(
        capsys,
        "rollout",
        "start",
        "--plan",
        str(path),
        "--reason",
        "fast",
        "--expect-revision",
        "7",
    )
    assert r.code == 1
    assert f"error: FAILED_PRECONDITION: {message}" in r.err
    assert r.out == ""


def test_client_rollout_calls_raise_control_error(
    fake: FakeControl, served: tuple[FakeControl, int]
) -> None:
    """ControlClient's rollout methods turn refusals into ControlError like the other calls."""
    fake.failures["AbortRollout"] = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "rollout: none is running or paused",
    )
    with ControlClient(f"127.0.0.1:{served[1]}") as client:
        assert client.get_rollout().phase == "NONE"
        with pytest.raises(ControlError) as info:
            client.abort_rollout(reason="r")
    assert (info.value.code, info.value.message) == (
        "FAILED_PRECONDITION",
        "rollout: none is running or paused",
    )


# -------------------------------------------------------------------------- plan files


PLAN_ERRORS: list[tuple[str, str, list[str]]] = [
    ("plan.yaml", "- {name: shadow, kind: shadow}\n- {name: c5, kind: canary, canary_percent: 5, min_duraton: 60}\n", ["stage 2 ('c5')", "unknown field 'min_duraton'"]),
    ("plan.yaml", "- {name: c5, kind: canery, canary_percent: 5}\n", ["stage 1 ('c5')", "field kind", "'canery'"]),
    ("plan.yaml", "- {name: c5, canary_percent: 5}\n", ["stage 1 ('c5')", "field kind: missing"]),
    ("plan.yaml", "- {kind: canary, canary_percent: 5}\n", ["stage 1", "field name: missing"]),
    ("plan.yaml", "- {name: '', kind: canary, canary_percent: 5}\n", ["stage 1", "field name"]),
    ("plan.yaml", "- {name: c5, kind: canary, canary_percent: 5}\n- {name: c25, kind: canary, canary_percent: 25.555}\n", ["stage 2 ('c25')", "field canary_percent", "2 decimals"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_percent: 120}\n", ["stage 1 ('c')", "field canary_percent"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 12000}\n", ["stage 1 ('c')", "field canary_bp"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 5.5}\n", ["stage 1 ('c')", "field canary_bp"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, canary_percent: 5}\n", ["stage 1 ('c')", "canary_percent and canary_bp"]),
    ("plan.yaml", "- {name: c, kind: canary}\n", ["stage 1 ('c')", "field canary_percent: missing"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, min_duration: soon}\n", ["stage 1 ('c')", "field min_duration", "'soon'"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, min_duration: -5}\n", ["stage 1 ('c')", "field min_duration"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, min_samples: -1}\n", ["stage 1 ('c')", "field min_samples"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, min_samples: yes}\n", ["stage 1 ('c')", "field min_samples", "True"]),
    ("plan.yaml", "- just-a-name\n", ["stage 1", "must be a mapping"]),
    ("plan.yaml", "name: c\nkind: canary\n", ["expected a non-empty list of stages"]),
    ("plan.yaml", "[]\n", ["expected a non-empty list of stages"]),
    ("plan.yaml", "- {name: c, kind: canary\n", ["not valid YAML"]),
    ("plan.json", '[{"name": "c", "kind": "canary",}]', ["not valid JSON"]),
    ("plan.json", '[{"name": "c", "kind": "canary", "canary_bp": "500"}]', ["stage 1 ('c')", "field canary_bp"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, ab_gate: sometimes}\n", ["stage 1 ('c')", "field ab_gate", "true or false"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, max_drift_psi: 11}\n", ["stage 1 ('c')", "field max_drift_psi"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, min_duration: .nan}\n", ["stage 1 ('c')", "field min_duration", "finite", "nan"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, min_duration: .inf}\n", ["stage 1 ('c')", "field min_duration", "finite", "inf"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_bp: 500, max_drift_psi: .nan}\n", ["stage 1 ('c')", "field max_drift_psi", "finite"]),
    ("plan.yaml", "- {name: c, kind: canary, canary_percent: -.inf}\n", ["stage 1 ('c')", "field canary_percent", "finite"]),
    ("plan.json", '[{"name": "c", "kind": "canary", "canary_bp": 500, "min_duration": NaN}]', ["stage 1 ('c')", "field min_duration", "finite"]),
    ("plan.json", '[{"name": "c", "kind": "canary", "canary_bp": 500, "max_drift_psi": Infinity}]', ["stage 1 ('c')", "field max_drift_psi", "finite"]),
    ("plan.yaml", "- name: c\n  kind: canary\n  canary_bp: 500\n  canary_bp: 5000\n", ["not valid YAML", "duplicate key 'canary_bp'", "line 4"]),
    ("plan.json", '[{"name": "c", "kind": "canary", "canary_bp": 500, "canary_bp": 5000}]', ["not valid JSON", "duplicate key 'canary_bp'"]),
    ("plan.yaml", "".join(f"- {{name: c{i}, kind: canary, canary_bp: {i + 1}}}\n" for i in range(33)), ["at most 32 stages, got 33"]),
    ("plan.yaml", f"- {{name: {'n' * 300}, kind: canary, canary_bp: 500}}\n", ["stage 1", "field name: at most 256 bytes, got 300"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("filename", "content", "fragments"), PLAN_ERRORS, ids=lambda v: str(v)[:40]
)
def test_plan_file_errors_exit_2_naming_stage_and_field(
    fake: FakeControl,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    filename: str,
    content: str,
    fragments: list[str],
) -> None:
    """A malformed plan file exits 2 naming the file, the stage and the field; nothing is sent."""
    path = tmp_path / filename
    path.write_text(content)
    r = run(capsys, "rollout", "start", "--plan", str(path), "--reason", "r")
    assert r.code == 2, r.err
    assert r.err.startswith(f"sidecarctl rollout start: error: {path}: ")
    for fragment in fragments:
        assert fragment in r.err
    assert fake.calls == []


def test_missing_plan_file_is_a_usage_error(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A --plan path that cannot be read exits 2 and sends nothing."""
    r = run(capsys, "rollout", "start", "--plan", str(tmp_path / "nope.yaml"), "--reason", "r")
    assert r.code == 2
    assert "cannot read --plan" in r.err
    assert fake.calls == []


@pytest.mark.parametrize(
    ("field", "value", "attribute", "expected"),
    [
        ("canary_percent", 5, "canary_bp", 500),
        ("canary_percent", 0.5, "canary_bp", 50),
        ("canary_percent", "12.25%", "canary_bp", 1225),
        ("canary_bp", 250, "canary_bp", 250),
        ("min_duration", 90, "min_duration_seconds", 90.0),
        ("min_duration", 2.5, "min_duration_seconds", 2.5),
        ("min_duration", "90s", "min_duration_seconds", 90.0),
        ("min_duration", "15m", "min_duration_seconds", 900.0),
        ("min_duration", "1h30m", "min_duration_seconds", 5400.0),
        ("min_duration", "300", "min_duration_seconds", 300.0),
        ("min_samples", 0, "min_samples", 0),
        ("ab_gate", True, "ab_gate", True),
        ("max_drift_psi", 0.25, "max_drift_psi", 0.25),
        ("max_drift_psi", 0, "max_drift_psi", 0.0),
    ],
)
def test_parse_plan_field_forms(field: str, value: object, attribute: str, expected: float) -> None:
    """Percentages become basis points; durations are seconds or "90s" / "15m" / "1h30m"."""
    weight = {} if field.startswith("canary") else {"canary_bp": 100}
    stage = parse_plan([{"name": "c", "kind": "canary", **weight, field: value}]).stages[0]
    assert getattr(stage, attribute) == expected


def test_parse_plan_leaves_soundness_to_the_server() -> None:
    """Syntax only: decreasing shares or a misplaced promote pass locally (the sidecar decides)."""
    plan = parse_plan(
        [
            {"name": "p", "kind": "promote"},
            {"name": "p", "kind": "canary", "canary_bp": 9000},
            {"name": "q", "kind": "canary", "canary_bp": 10},
        ]
    )
    assert [s.canary_bp for s in plan.stages] == [0, 9000, 10]
    with pytest.raises(PlanFileError, match=r"stage 1 \('p'\): field kind"):
        parse_plan([{"name": "p", "kind": 3}])


def test_plan_example_in_help_is_a_valid_plan_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The plan file example shown by `rollout start --help` parses as the stages it describes."""
    r = run(capsys, "rollout", "start", "--help")
    assert r.code == 0
    block = r.out.split("plan file (--plan):", 1)[1].split("\nShadow stages", 1)[0]
    example = "\n".join(line for line in block.splitlines()[1:])
    (tmp_path / "plan.yaml").write_text(example)
    plan = load_plan(str(tmp_path / "plan.yaml"))
    assert [(s.name, s.kind, s.canary_bp, s.min_duration_seconds) for s in plan.stages] == [
        ("shadow", SHADOW, 0, 600),
        ("canary-5%", CANARY, 500, 900),
        ("canary-25%", CANARY, 2500, 900),
        ("canary-50%", CANARY, 5000, 1800),
        ("promote", PROMOTE, 0, 0),
    ]
    assert [(s.ab_gate, s.max_drift_psi) for s in plan.stages][3] == (True, 0.25)


# ------------------------------------------------------------------------------ status


def test_rollout_status_table(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """`rollout status` prints the phase, ladder, progress bars and gate table from GetRollout."""
    fake.rollout = rollout()
    r = run(capsys, "--token", TOKEN, "rollout", "status")
    assert r.code == 0, r.err
    assert r.out.startswith("rollout RUNNING at stage 3 of 6, canary-25%")
    assert "time    [########------------]  40%  360s / 900s" in r.out
    assert "min_samples  WAIT" in r.out
    assert methods(fake) == ["GetRollout"]
    assert fake.calls[0].metadata["authorization"] == f"Bearer {TOKEN}"


def test_rollout_status_json(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """`rollout status -o json` prints the rollout as one JSON document with gates and plan."""
    fake.rollout = rollout()
    r = run(capsys, "rollout", "status", "-o", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert (doc["phase"], doc["stage_index"], doc["stage_kind"]) == ("RUNNING", 2, "canary")
    assert (doc["stage_elapsed_seconds"], doc["stage_min_duration_seconds"]) == (360.0, 900.0)
    assert (doc["stage_samples"], doc["stage_min_samples"]) == (400, 2000)
    assert [(g["name"], g["status"]) for g in doc["gates"]] == [
        ("health", "PASS"),
        ("min_samples", "WAIT"),
        ("error_ratio", "FAIL"),
    ]
    assert [s["kind"] for s in doc["plan"]] == [
        "shadow",
        "canary",
        "canary",
        "canary",
        "canary",
        "promote",
    ]
    assert doc["plan"][2] | {} == {
        "name": "canary-25%",
        "kind": "canary",
        "canary_bp": 2500,
        "canary_percent": 25.0,
        "min_duration_seconds": 900.0,
        "min_samples": 2000,
    }
    assert doc["started_at"] == "2023-11-14T22:13:20Z"
    assert doc["baseline"]["requests"] == 5000


def test_rollout_status_when_none_ever_ran(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """Phase NONE prints "no rollout has run"."""
    r = run(capsys, "rollout", "status")
    assert r.code == 0, r.err
    assert r.out.strip() == "no rollout has run"


def test_rollout_status_watch_json_stops_when_rollout_succeeds(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rollout status --watch -o json` prints one object per poll and exits 0 at SUCCEEDED."""
    fake.rollout_polls = [
        rollout(stage_index=1),
        rollout("PAUSED", stage_index=2),
        rollout(stage_index=5),
        rollout("SUCCEEDED", stage_index=6, gates=[]),
    ]
    r = run(capsys, "-o", "json", "rollout", "status", "--watch", "--interval", "0.01")
    assert r.code == 0, r.err
    docs = [json.loads(line) for line in r.out.splitlines()]
    assert [(d["phase"], d["stage_name"]) for d in docs] == [
        ("RUNNING", "canary-5%"),
        ("PAUSED", "canary-25%"),
        ("RUNNING", "promote"),
        ("SUCCEEDED", None),
    ]
    assert methods(fake) == ["GetRollout"] * 4


def test_rollout_status_watch_table_stops_when_rolled_back(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table watch re-renders under a timestamp header per poll and stops at ROLLED_BACK,
    exiting 5 (a failed rollout, for CI)."""
    fake.rollout_polls = [rollout(), rollout("ROLLED_BACK")]
    r = run(capsys, "rollout", "status", "--watch", "--interval", "0.01")
    assert r.code == 5, r.err
    assert len(re.findall(r"^=== \S+Z  every 0.01s, Ctrl-C to stop ===$", r.out, re.M)) == 2
    assert r.out.index("rollout RUNNING") < r.out.index("rollout ROLLED BACK at stage 3 of 6")
    assert "\x1b" not in r.out  # not a terminal: no screen clearing


def test_rollout_status_watch_ctrl_c_exits_0(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while waiting for the next poll ends the watch with exit 0."""

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("clients.sidecarctl.time.sleep", interrupt)
    fake.rollout = rollout()
    r = run(capsys, "rollout", "status", "--watch")
    assert r.code == 0, r.err
    assert r.out.count("rollout RUNNING") == 1
    assert methods(fake) == ["GetRollout"]


@pytest.mark.parametrize("interval", ["0", "-1", "soon", "nan"])
def test_rollout_status_interval_must_be_positive(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], interval: str
) -> None:
    """A non-positive or non-numeric --interval is a usage error."""
    r = run(capsys, "rollout", "status", "--watch", "--interval", interval)
    assert r.code == 2
    assert "--interval" in r.err
    assert fake.calls == []


def test_status_watch_shows_active_rollout_under_each_state(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status --watch` appends the RUNNING rollout's ladder and gates after each state."""
    fake.watch_states = [canned_state(7), canned_state(8)]
    fake.rollout = rollout()
    r = run(capsys, "status", "--watch")
    assert r.code == 0, r.err
    assert methods(fake) == ["WatchState", "GetRollout", "GetRollout"]
    blocks = r.out.split("=== revision ")[1:]
    for block in blocks:
        assert block.index("last change:") < block.index("rollout RUNNING at stage 3 of 6")
        assert "▶ canary-25% (2500 bp)" in block
        assert ["error_ratio", "FAIL", "2.5", "2"] in [
            line.split()[:4] for line in block.splitlines()
        ]


def test_status_watch_omits_finished_rollout_and_json_is_unchanged(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished rollout is not shown under the state; json watch lines stay bare states."""
    fake.watch_states = [canned_state(7)]
    fake.rollout = rollout("SUCCEEDED", stage_index=6)
    r = run(capsys, "status", "--watch")
    assert r.code == 0, r.err
    assert "rollout SUCCEEDED" not in r.out
    assert "plan:" not in r.out
    assert methods(fake) == ["WatchState", "GetRollout"]
    fake.calls.clear()
    r = run(capsys, "-o", "json", "status", "--watch")
    assert "plan" not in json.loads(r.out)
    assert methods(fake) == ["WatchState"]


def test_status_watch_survives_a_sidecar_without_rollouts(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """An UNIMPLEMENTED GetRollout (older sidecar) is asked once, then states keep printing."""
    fake.watch_states = [canned_state(7), canned_state(8)]
    fake.failures["GetRollout"] = (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    r = run(capsys, "status", "--watch")
    assert r.code == 0, r.err
    assert r.out.count("=== revision") == 2
    assert methods(fake) == ["WatchState", "GetRollout"]


# ------------------------------------------------------------------------------- drill


def drill_report(rolled_back: bool = True) -> cpb.DrillReport:
    return cpb.DrillReport(
        rolled_back=rolled_back,
        detection_seconds=0.0042,
        revert_seconds=1.5,
        verdict_reason="canary error rate 50.0% vs stable 0.0% (p < 0.001)",
        restored_revision=15,
    )


def test_drill_prints_detection_and_revert_times_and_verdict(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`drill` sends RunDrill with the reason and token and prints both times and the verdict."""
    fake.drill = drill_report()
    r = run(capsys, "--token", TOKEN, "drill", "--reason", "quarterly rehearsal")
    assert r.code == 0, r.err
    [call] = fake.calls
    assert call.request == cpb.RunDrillRequest(reason="quarterly rehearsal")
    assert call.metadata["authorization"] == f"Bearer {TOKEN}"
    lines = r.out.splitlines()
    assert lines[0].startswith("drill PASSED")
    assert "detection  4.2 ms  (injected failure -> verdict)" in lines
    assert "revert     1.50 s  (verdict -> all traffic on stable)" in lines
    assert "verdict    canary error rate 50.0% vs stable 0.0% (p < 0.001)" in lines
    assert "revision 15" in lines[-1]


def test_drill_json_and_reason_required(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    """`drill -o json` prints the report as JSON; without --reason it is a usage error."""
    fake.drill = drill_report()
    doc = json.loads(run(capsys, "drill", "--reason", "r", "-o", "json").out)
    assert doc == {
        "rolled_back": True,
        "detection_seconds": 0.0042,
        "revert_seconds": 1.5,
        "verdict_reason": "canary error rate 50.0% vs stable 0.0% (p < 0.001)",
        "restored_revision": 15,
    }
    fake.calls.clear()
    assert run(capsys, "drill").code == 2
    assert fake.calls == []


def test_render_drill_without_rollback_says_failed() -> None:
    """A drill that did not roll back is announced as FAILED, with no revert time."""
    text = render_drill(drill_report(rolled_back=False))
    assert text.startswith("drill FAILED: NO automatic rollback")
    assert "revert     n/a" in text


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("done", "target", "expected"),
    [
        (360, 900, "[########------------]  40%"),
        (0, 900, "[--------------------]   0%"),
        (899.9, 900, "[###################-]  99%"),
        (900, 900, "[####################] 100%"),
        (5000, 900, "[####################] 100%"),
        (-5, 900, "[--------------------]   0%"),
        (3, 0, "[####################] 100%"),
    ],
)
def test_progress_bar(done: float, target: float, expected: str) -> None:
    """The bar fills done/target of 20 cells, floored (100% only once reached) and capped."""
    assert progress_bar(done, target) == expected


def test_render_rollout_ladder_marks_done_current_and_next_stages() -> None:
    """The plan ladder ticks finished stages, points at the current one with its bp, dots the rest."""
    lines = render_rollout(rollout()).splitlines()
    assert (
        "plan: ✓ shadow  ✓ canary-5%  ▶ canary-25% (2500 bp)  · canary-50%  · canary-100%  · promote"
        in lines
    )


def test_render_rollout_progress_bars_for_time_and_samples() -> None:
    """Stage time and samples show as bars against the stage's minimums."""
    lines = render_rollout(rollout()).splitlines()
    assert "time    [########------------]  40%  360s / 900s" in lines
    assert "samples [####----------------]  20%  400 / 2000 canary requests" in lines
    shadow = render_rollout(rollout(stage_index=0, elapsed=60, samples=250)).splitlines()
    assert "samples [#####---------------]  25%  250 / 1000 comparisons" in shadow
    promote = render_rollout(rollout(stage_index=5, elapsed=3, samples=0)).splitlines()
    assert "time    3s (no minimum)" in promote
    assert "samples 0 (no minimum)" in promote


def test_render_rollout_gate_table() -> None:
    """Gates are a table: name, PASS/FAIL/WAIT, value, threshold, detail."""
    lines = render_rollout(rollout()).splitlines()
    header = lines.index(next(line for line in lines if line.startswith("GATE")))
    assert lines[header].split() == ["GATE", "STATUS", "VALUE", "THRESHOLD", "DETAIL"]
    rows = [line.split(maxsplit=4) for line in lines[header + 1 : header + 4]]
    assert rows == [
        ["health", "PASS", "1", "1", "PASS: no difference"],
        ["min_samples", "WAIT", "400", "2000", "400 of 2000 canary requests"],
        ["error_ratio", "FAIL", "2.5", "2", "canary 2.5x stable"],
    ]
    assert "gates: none evaluated yet" in render_rollout(rollout(gates=[]))


def test_render_rollout_shortens_long_gate_details_but_json_keeps_them() -> None:
    """A gate detail longer than 100 characters is cut with … in the table, whole in JSON."""
    r = rollout()
    r.gates[0].detail = "INCONCLUSIVE: " + "error_rate NODATA; " * 20
    row = next(line for line in render_rollout(r).splitlines() if line.startswith("health"))
    detail = row.split(maxsplit=4)[4]
    assert len(detail) <= 100
    assert detail.endswith("…")
    assert rollout_to_dict(r)["gates"][0]["detail"] == r.gates[0].detail


def test_render_rollout_verdict_baseline_message_and_age() -> None:
    """The last verdict, stable's baseline, the message and (given now) the rollout's age show."""
    text = render_rollout(rollout(), now=T0 + 3725)
    assert "started 2023-11-14T22:13:20Z (1h02m ago)   revision 12" in text
    assert "last verdict: PASS: canary error rate 0.10% vs stable 0.12%" in text
    assert "error rate 0.12%, p50 12.0 ms, p95 31.0 ms, over 5000 requests" in text
    assert 'message: "stage canary-5% gates passed"' in text
    assert "ago" not in render_rollout(rollout())


def test_render_rollout_paused_and_finished_phases() -> None:
    """PAUSED says time is stopped; ROLLED_BACK/ABORTED mark the stage ✗; SUCCEEDED ticks all."""
    paused = render_rollout(rollout("PAUSED"))
    assert paused.startswith("rollout PAUSED at stage 3 of 6, canary-25%")
    assert "360s / 900s  (paused: not counting)" in paused
    rolled_back = render_rollout(rollout("ROLLED_BACK"))
    assert rolled_back.startswith(
        "rollout ROLLED BACK at stage 3 of 6, canary-25%: all traffic went to stable"
    )
    assert "✓ canary-5%  ✗ canary-25% (2500 bp)  · canary-50%" in rolled_back
    assert "time " not in rolled_back
    assert "GATE" not in rolled_back
    assert render_rollout(rollout("ABORTED")).startswith("rollout ABORTED at stage 3 of 6")
    succeeded = render_rollout(rollout("SUCCEEDED", stage_index=6))
    assert succeeded.startswith("rollout SUCCEEDED: all 6 stages done")
    assert (
        "plan: ✓ shadow  ✓ canary-5%  ✓ canary-25%  ✓ canary-50%  ✓ canary-100%  ✓ promote"
        in succeeded
    )


def test_render_rollout_none_and_escapes() -> None:
    """Phase NONE (or unset) says no rollout has run; control characters are escaped."""
    assert render_rollout(cpb.Rollout(phase="NONE")) == "no rollout has run"
    assert render_rollout(cpb.Rollout()) == "no rollout has run"
    evil = rollout()
    evil.gates[0].detail = "ok\x1b[2J"
    evil.message = "m\x1b]0;x\x07"
    text = render_rollout(evil)
    assert "\x1b" not in text
    assert "ok\\x1b[2J" in text


def test_rollout_to_dict_is_strict_json() -> None:
    """rollout_to_dict round-trips through strict JSON: NaN gate values become null."""
    r = rollout()
    r.gates[0].value = math.nan
    doc = json.loads(json.dumps(rollout_to_dict(r), allow_nan=False))
    assert doc["gates"][0]["value"] is None
    none = rollout_to_dict(cpb.Rollout())
    assert (none["phase"], none["active"], none["plan"], none["stage_kind"]) == (
        "NONE",
        False,
        [],
        None,
    )


def test_rollout_help_explains_traffic_and_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """Each rollout command's --help says what it does to traffic and shows an example."""
    expectations = {
        ("rollout",): "sidecarctl rollout start --reason",
        ("rollout", "start"): "all traffic goes to the stable variant",
        ("rollout", "pause"): "traffic split stays as it is",
        ("rollout", "resume"): "same traffic",
        ("rollout", "abort"): "all traffic to the stable variant",
        ("rollout", "status"): "Read-only",
        ("drill",): "all traffic goes to stable",
    }
    for argv, phrase in expectations.items():
        r = run(capsys, *argv, "--help")
        assert r.code == 0
        assert phrase in " ".join(r.out.split()), argv
        assert "example" in r.out
    main_help = run(capsys, "--help").out
    assert "rollout" in main_help
    assert "drill" in main_help

"""Operator conventions of `sidecarctl`, against the FAKE Control server of test_sidecarctl:
`--version`, `completion bash|zsh`, `-o yaml`, `rollout status --watch` exiting non-zero
when the rollout ends ABORTED or ROLLED_BACK, and `status --watch` refreshing the request
counts on a timer between changes."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml
from test_sidecarctl import FakeControl, canned_state, run
from test_sidecarctl_rollout import methods, rollout

from clients import sidecarctl
from clients.control import ControlClient


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    r = run(capsys, "--version")
    assert r.code == 0
    assert r.out.strip() == f"sidecarctl {sidecarctl.version()}"


@pytest.mark.parametrize("phase", ["ABORTED", "ROLLED_BACK"])
def test_rollout_status_watch_exits_4_when_the_rollout_fails(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], phase: str
) -> None:
    """CI waits with `rollout status --watch`: an aborted or rolled back rollout is exit 5 (4 is the fleet write wait's)."""
    fake.rollout_polls = [rollout(), rollout(stage_index=3), rollout(phase)]
    r = run(capsys, "-o", "json", "rollout", "status", "--watch", "--interval", "0.01")
    assert r.code == sidecarctl.EXIT_ROLLOUT_FAILED == 5, r.err
    assert methods(fake) == ["GetRollout"] * 3


def test_rollout_status_watch_exits_0_when_it_succeeds(
    fake: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.rollout_polls = [rollout(), rollout("SUCCEEDED", stage_index=6, gates=[])]
    r = run(capsys, "rollout", "status", "--watch", "--interval", "0.01")
    assert r.code == 0, r.err


def test_output_yaml(fake: FakeControl, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o yaml` prints the same document `-o json` does, as YAML."""
    as_json = run(capsys, "-o", "json", "status")
    as_yaml = run(capsys, "-o", "yaml", "status")
    assert as_json.code == as_yaml.code == 0
    assert yaml.safe_load(as_yaml.out) == json.loads(as_json.out)


def test_status_watch_refreshes_counts_between_changes(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One state streamed, then no change: the state is re-read every --interval and printed
    again (a YAML document each), until Ctrl-C (here: the third read)."""
    fake.watch_states = [canned_state(7)]
    fake.watch_hold_open = True
    reads = 0
    real = ControlClient.get_state

    def get_state(self: ControlClient) -> object:
        nonlocal reads
        reads += 1
        if reads == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(ControlClient, "get_state", get_state)
    r = run(capsys, "-o", "yaml", "status", "--watch", "--interval", "0.05")
    assert r.code == 0, r.err
    documents = list(yaml.safe_load_all(r.out))
    assert [d["revision"] for d in documents] == [7, 7, 7]
    assert methods(fake).count("GetState") == 2 and methods(fake)[0] == "WatchState"


def test_status_watch_table_marks_refreshed_readings(
    fake: FakeControl, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.watch_states = [canned_state(7)]
    fake.watch_hold_open = True
    real = ControlClient.get_state
    reads = 0

    def get_state(self: ControlClient) -> object:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(ControlClient, "get_state", get_state)
    r = run(capsys, "status", "--watch", "--interval", "0.05")
    assert r.code == 0, r.err
    headers = [line for line in r.out.splitlines() if line.startswith("=== revision")]
    assert headers[0] == "=== revision 7 ==="
    assert headers[1].startswith("=== revision 7 (refreshed ") and headers[1].endswith("Z) ===")


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_lists_commands_and_options(
    capsys: pytest.CaptureFixture[str], shell: str
) -> None:
    r = run(capsys, "completion", shell)
    assert r.code == 0, r.err
    assert "complete -F _sidecarctl sidecarctl" in r.out
    assert '"rollout") words="' in r.out
    rollout_words = r.out.split('"rollout") words="')[1].split('"')[0].split()
    assert {"start", "status", "pause", "resume", "abort"} <= set(rollout_words)
    assert '"rollout status") words="' in r.out and "--watch" in r.out


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_completes_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    """The script, sourced in a real bash, offers `status` after `sidecarctl rollout st`."""
    r = run(capsys, "completion", "bash")
    probe = (
        r.out
        + "\nCOMP_WORDS=(sidecarctl rollout st); COMP_CWORD=2; _sidecarctl; "
        + 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["start", "status"]


def test_a_plan_stage_sets_its_own_progress_deadline() -> None:
    """`progress_deadline` in a plan file reaches the server's Stage."""
    from sidecar.adapters.grpc.control import stages_from_proto

    plan = sidecarctl.parse_plan(
        [
            {"name": "c5", "kind": "canary", "canary_percent": 5, "progress_deadline": "30m"},
            {"name": "c50", "kind": "canary", "canary_percent": 25},
        ]
    )
    assert [s.progress_deadline_seconds for s in plan.stages] == [1800.0, 0.0]
    stages = stages_from_proto(plan)
    assert [s.progress_deadline_s for s in stages] == [1800.0, 0.0]


def test_any_member_of_a_fleet_answers(
    fake: FakeControl, served: tuple[FakeControl, int], capsys: pytest.CaptureFixture[str]
) -> None:
    """Several members in one --target (gRPC's ipv4: list): a member that is down is
    skipped and the next one answers (the state is shared, so any member will do)."""
    _, port = served
    down = "127.0.0.1:9"  # discard port: nothing listens
    r = run(capsys, "--target", f"ipv4:{down},127.0.0.1:{port}", "-o", "json", "status")
    assert r.code == 0, r.err
    assert json.loads(r.out)["revision"] == 7

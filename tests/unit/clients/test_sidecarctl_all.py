"""`sidecarctl --all`: a read command run against every live fleet member, against FAKE
Control servers (the `FakeControl` of test_sidecarctl: in-process servicers on 127.0.0.1:0
answering canned states; not the sidecar). The member list comes from the one `--target`
reaches (`ListFleetMembers`, each member's advertised `control_address`); each answer is
printed labelled (table) or collected in one document (json/yaml); writes are refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
import yaml
from test_sidecarctl import TOKEN, FakeControl, canned_state, free_port, run, start_server

from sidecar._proto.sidecar.v1 import control_pb2 as cpb


@dataclass
class Fleet:
    a: FakeControl  # the member --target reaches (it lists the fleet)
    b: FakeControl
    a_address: str
    b_address: str


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FakeControl, int, FakeControl, int]]:
    a, b = FakeControl(), FakeControl()
    server_a, port_a = start_server(a)
    server_b, port_b = start_server(b)
    yield a, port_a, b, port_b
    server_a.stop(grace=None)
    server_b.stop(grace=None)


def member(member_id: str, address: str, *, live: bool = True) -> cpb.FleetMember:
    return cpb.FleetMember(
        member_id=member_id, host=member_id.split(":")[0], version="1.0", applied_revision=7,
        ready=True, last_seen_unix_time=1.0, live=live, control_address=address,
    )  # fmt: skip


@pytest.fixture
def fleet(
    servers: tuple[FakeControl, int, FakeControl, int], monkeypatch: pytest.MonkeyPatch
) -> Fleet:
    """Two live members (a answers revision 7, b revision 8) and one that is not live."""
    a, port_a, b, port_b = servers
    a.reset()
    b.reset()
    b.state = canned_state(8)
    f = Fleet(a, b, f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}")
    a.fleet = cpb.ListFleetMembersResponse(
        fleet="iris",
        revision=7,
        members=[
            member("pod-a:1", f.a_address),
            member("pod-b:1", f.b_address),
            member("pod-c:1", "127.0.0.1:1", live=False),
        ],
    )
    monkeypatch.setenv("SIDECARCTL_TOKEN", TOKEN)
    monkeypatch.setenv("SIDECARCTL_TARGET", f.a_address)
    return f


def test_status_all_labels_every_live_members_answer(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run(capsys, "--all", "status")
    assert r.code == 0, r.err
    blocks = r.out.split("=== ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        f"pod-a:1 ({fleet.a_address}) ===",
        f"pod-b:1 ({fleet.b_address}) ===",
    ]
    assert "revision 7" in blocks[0] and "revision 8" in blocks[1]
    assert "skipped (not live): pod-c:1" in r.err
    # each member was asked itself, with the operator's token
    for fake in (fleet.a, fleet.b):
        asked = [c for c in fake.calls if c.method == "GetState"]
        assert len(asked) == 1 and asked[0].metadata["authorization"] == f"Bearer {TOKEN}"
    assert [c.method for c in fleet.b.calls] == ["GetState"]


def test_all_after_the_command_json_and_yaml(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--all` is accepted after the command too; json/yaml give one document."""
    r = run(capsys, "status", "--all", "-o", "json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["fleet"] == "iris"
    got = [(m["member_id"], m["control_address"], m["exit_code"], m["answer"]["revision"])
           for m in doc["members"]]  # fmt: skip
    assert got == [("pod-a:1", fleet.a_address, 0, 7), ("pod-b:1", fleet.b_address, 0, 8)]
    r = run(capsys, "status", "--all", "-o", "yaml")
    assert r.code == 0, r.err
    doc = yaml.safe_load(r.out)
    assert [m["answer"]["revision"] for m in doc["members"]] == [7, 8]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["kill", "on", "--reason", "incident"], "read commands only"),
        (["weights", "stable=100%", "--reason", "r", "--wait"], "add --wait"),
        (["rollout", "abort", "--reason", "r"], "this one is a write"),
        (["status", "--watch"], "--watch"),
    ],
)
def test_all_refuses_writes_and_watches_before_calling(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    r = run(capsys, "--all", *argv)
    assert r.code == 2 and words in r.err, r.err
    assert fleet.a.calls == [] and fleet.b.calls == []


def test_unreachable_and_unadvertised_members_are_reported_labelled(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every other member still answers; the exit code is the worst member's (3:
    unreachable); a member whose heartbeat has no address is named."""
    fleet.a.fleet.members.extend(
        [member("pod-d:1", f"127.0.0.1:{free_port()}"), member("pod-e:1", "")]
    )
    r = run(capsys, "--all", "status", "--timeout", "2")
    assert r.code == 3
    assert "revision 8" in r.out.split("=== pod-b:1")[1]
    assert "[pod-d:1] error: UNAVAILABLE" in r.err or "[pod-d:1] error: DEADLINE" in r.err
    assert "[pod-e:1] error: its heartbeat advertises no Control address" in r.err
    doc = json.loads(run(capsys, "--all", "status", "--timeout", "2", "-o", "json").out)
    codes = {m["member_id"]: m["exit_code"] for m in doc["members"]}
    assert codes == {"pod-a:1": 0, "pod-b:1": 0, "pod-d:1": 3, "pod-e:1": 1}


def test_a_member_refusing_gives_exit_1_and_its_message(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.b.failures["GetState"] = (grpc.StatusCode.PERMISSION_DENIED, "viewer only here")
    r = run(capsys, "--all", "status")
    assert r.code == 1
    assert "[pod-b:1] error: PERMISSION_DENIED: viewer only here" in r.err
    assert "revision 7" in r.out


def test_not_in_a_fleet_asks_the_target_alone(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.a.fleet = cpb.ListFleetMembersResponse(revision=7)
    r = run(capsys, "--all", "status")
    assert r.code == 0, r.err
    assert r.out.startswith(f"=== {fleet.a_address} ({fleet.a_address}) ===")
    assert fleet.b.calls == []


def test_listing_failure_is_the_usual_error(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.a.failures["ListFleetMembers"] = (grpc.StatusCode.UNAVAILABLE, "redis down")
    r = run(capsys, "--all", "status")
    assert r.code == 3 and "UNAVAILABLE: redis down" in r.err
    assert [c.method for c in fleet.b.calls] == []


def test_fleet_table_and_json_show_the_control_address(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run(capsys, "fleet")
    assert r.code == 0 and "CONTROL" in r.out
    row = next(line for line in r.out.splitlines() if line.startswith("pod-b:1"))
    assert row.split()[-1] == fleet.b_address
    doc = json.loads(run(capsys, "fleet", "-o", "json").out)
    assert [m["control_address"] for m in doc["members"]][:2] == [fleet.a_address, fleet.b_address]


def test_no_live_member_is_an_error(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    for m in fleet.a.fleet.members:
        m.live = False
    r = run(capsys, "--all", "status")
    assert r.code == 1 and "no live member in fleet iris" in r.err
    assert [c.method for c in fleet.b.calls] == []

"""The commit rule under crashes: the real `sidecar serve` is SIGKILLed at random points of
Control writes, and an audit that cannot be written makes a write fail and change nothing.

No model server is needed: Control writes do not call the upstreams (the variants point
at a closed port). The state is read back through Control (GetState) and the audit log
straight from the SQLite file (a second reader, as WAL allows).
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.credentials import bearer, control_section
from sidecar.testing.process import SidecarProcess

pytestmark = pytest.mark.integration

ROUNDS = 16
SEED = 1010


def crash_config() -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": "127.0.0.1:1", "model_name": "classifier"},
            "canary": {"address": "127.0.0.1:1", "model_name": "classifier"},
        },
        "flag": {"key": "crash", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 10_000, "canary": 0}},
        "control": control_section(),
        "server": {"log_level": "warning", "shutdown_grace": 1.0},
    }  # fmt: skip


def write(stub: cpb_grpc.ControlStub, k: int) -> Any:
    """Write number k (a future): kind and value follow from k (see `expected`)."""
    md, reason = bearer(), f"w{k}"
    if k % 3 == 0:
        request = cpb.SetUserOverrideRequest(reason=reason, targeting_key=f"u{k}", variant="canary")
        return stub.SetUserOverride.future(request, metadata=md, timeout=10)
    if k % 3 == 1:
        weights = {"stable": 10_000 - k, "canary": k}
        return stub.SetWeights.future(
            cpb.SetWeightsRequest(reason=reason, weights=weights), metadata=md, timeout=10
        )
    return stub.SetKillSwitch.future(
        cpb.SetKillSwitchRequest(reason=reason, on=k % 2 == 0), metadata=md, timeout=10
    )


def expected(k: int) -> tuple[int, bool, frozenset[str]]:
    """(canary weight, kill switch, overridden keys) after writes 1..k."""
    weights = [j for j in range(1, k + 1) if j % 3 == 1]
    kills = [j for j in range(1, k + 1) if j % 3 == 2]
    return (
        weights[-1] if weights else 0,
        kills[-1] % 2 == 0 if kills else False,
        frozenset(f"u{j}" for j in range(1, k + 1) if j % 3 == 0),
    )


def live(state: cpb.State) -> tuple[int, bool, frozenset[str]]:
    flag = state.flag
    return flag.weights["canary"], flag.kill_switch, frozenset(flag.user_overrides)


def audit_revisions(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT entry FROM audit ORDER BY seq").fetchall()
    return [(json.loads(e)["revision_after"], json.loads(e)["reason"]) for (e,) in rows]


@pytest.fixture
def channel_to() -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def open_stub(sc: SidecarProcess) -> cpb_grpc.ControlStub:
        channel = grpc.insecure_channel(sc.control_address)
        channels.append(channel)
        return cpb_grpc.ControlStub(channel)

    yield open_stub
    for channel in channels:
        channel.close()


def test_sigkill_mid_write_keeps_state_and_audit_together(tmp_path: Path, channel_to: Any) -> None:
    """SIGKILL at a random point of a stream of writes, ROUNDS times: after each restart
    the state is the last acknowledged write's or the next one's, its revision is audited,
    and the audit holds exactly one entry per revision (1, 2, ... in order)."""
    rng = random.Random(SEED)
    config = crash_config()
    db = tmp_path / "var" / "sidecar.db"
    acked = done = landed = 0  # last acknowledged write; last write in the state
    for round_no in range(ROUNDS + 1):
        sc = SidecarProcess(config, run_dir=tmp_path).start()
        try:
            stub = channel_to(sc)
            state = stub.GetState(cpb.GetStateRequest(), metadata=bearer())
            now = live(state)
            assert now in (expected(acked), expected(acked + 1)), f"round {round_no}"
            done = acked if now == expected(acked) else acked + 1
            landed += done - acked
            audited = audit_revisions(db)
            assert [r for r, _ in audited] == list(range(1, state.revision + 1))
            assert audited[-1][1] == (f"w{done}" if done else "initial state from configuration")
            if round_no == ROUNDS:
                break
            acked = done
            for _ in range(rng.randint(0, 4)):  # acknowledged writes before the killed one
                write(stub, acked + 1).result()
                acked += 1
            pending = write(stub, acked + 1)
            time.sleep(rng.uniform(0.0, 0.008))  # the crash point inside that write
        finally:
            sc.kill()
        with contextlib.suppress(grpc.RpcError):  # the killed write's outcome is unknown
            pending.result()
    # Both outcomes of a kill mid-write happen over the rounds (not asserted: timing).
    print(f"killed writes that landed: {landed} of {ROUNDS}")


def test_unwritable_audit_fails_the_write_and_changes_nothing(
    tmp_path: Path, channel_to: Any
) -> None:
    """An audit table that refuses inserts (a trigger added to the database) makes the write
    fail with UNAVAILABLE saying nothing changed; the state is unchanged, also after a
    restart, and no entry was added."""
    config = crash_config()
    db = tmp_path / "var" / "sidecar.db"
    with SidecarProcess(config, run_dir=tmp_path) as sc:
        stub = channel_to(sc)
        stub.SetWeights(
            cpb.SetWeightsRequest(reason="ramp", weights={"stable": 9000, "canary": 1000}),
            metadata=bearer(),
        )
        before = stub.GetState(cpb.GetStateRequest(), metadata=bearer())
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER audit_unwritable BEFORE INSERT ON audit "
                "BEGIN SELECT RAISE(ABORT, 'audit unwritable'); END"
            )
        with pytest.raises(grpc.RpcError) as info:
            stub.SetKillSwitch(
                cpb.SetKillSwitchRequest(reason="incident", on=True), metadata=bearer()
            )
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "nothing changed" in (info.value.details() or "")
        assert stub.GetState(cpb.GetStateRequest(), metadata=bearer()) == before
    with SidecarProcess(config, run_dir=tmp_path) as again:
        after = channel_to(again).GetState(cpb.GetStateRequest(), metadata=bearer())
    assert after.revision == before.revision and not after.flag.kill_switch
    assert after.flag.weights["canary"] == 1000
    assert [r for r, _ in audit_revisions(db)] == [1, 2]

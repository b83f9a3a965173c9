"""Fleet mode through real processes: a real redis-server, three real `sidecar serve`
members on MLServer, the real `sidecarctl`, tritonclient as the app.

Held here: a kill switch through one member is in force on all (and --wait answers once
all applied it); the audit log and the member list read the same from any member; racing
writes through two members, exactly one wins; the same users get the same variants from
every member; Redis stopped under load and restarted (no request fails, the kill switch
stays, writes say UNAVAILABLE naming Redis meanwhile); Redis restarted empty is re-seeded
above the old revision, once; an unreadable state document stops start-up naming the key
(and --safe-mode starts kill switch on); a wrong password names the setting."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import redis
import tritonclient.grpc as grpcclient

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.configs import config_dict
from sidecar.testing.control_cli import ok, sidecarctl, status_json
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess
from sidecar.testing.redis import RedisServer

pytestmark = pytest.mark.integration
USERS = [f"user-{i}" for i in range(120)]
STATE_KEY = "sidecar:{{{fleet}}}:state"


def fleet_config(mlserver: str, redis_url: str, fleet: str, **redis_extra: Any) -> dict[str, Any]:
    redis = {"url": redis_url, "fleet": fleet, "heartbeat_interval": 0.5, "member_ttl": 3.0}
    return config_dict(
        {"stable": (mlserver, "v1"), "canary": (mlserver, "v2")},
        weights={"stable": 10_000, "canary": 0},
        state={"backend": "redis", "redis": {**redis, "resync_interval": 1.0, **redis_extra}},
        server={"log_level": "info"},
    )


def ctl(
    sc: SidecarProcess, *args: str, token: str | None = OPERATOR_TOKEN
) -> subprocess.CompletedProcess[str]:
    return sidecarctl(sc.control_address, *args, token=token)


def state(sc: SidecarProcess) -> dict[str, Any]:
    return status_json(sc.control_address, VIEWER_TOKEN)


def poll(check: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def all_live(sc: SidecarProcess, n: int) -> bool:
    fleet = json.loads(ok(ctl(sc, "fleet", "-o", "json", token=VIEWER_TOKEN)))
    return sum(x["live"] for x in fleet["members"]) == n


def served_versions(
    sc: SidecarProcess, rows: npt.NDArray[np.float64], users: list[str] = USERS
) -> dict[str, str]:
    client = grpcclient.InferenceServerClient(sc.predict_address)
    out = {}
    for i, user in enumerate(users):
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(rows[i % 150 : i % 150 + 1])
        result = client.infer("classifier", [tensor], headers={"x-user-id": user})
        out[user] = result.get_response().model_version
    client.close()
    return out


@contextlib.contextmanager
def members(config: dict[str, Any], tmp_path: Path, n: int = 3) -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    try:
        for i in range(n):
            sc = SidecarProcess(
                config, run_dir=tmp_path / f"member-{i}", extra_env={"SIDECAR_MEMBER_ID": f"m{i}"}
            )
            started.append(sc.start())
        yield started
    finally:
        for sc in started:
            sc.stop()


def test_kill_switch_through_one_member_is_in_force_on_all(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Weights and a kill switch sent through one member are served by every member;
    --wait answers once all three applied it; audit and fleet read alike from any member;
    at one revision, the same users get the same variants from every member."""
    with (
        RedisServer() as redis_server,
        members(fleet_config(mlserver.grpc_address, redis_server.url, "kill"), tmp_path) as m,
    ):
        ok(ctl(m[0], "weights", "stable=50%", "canary=50%", "--reason", "ramp", "--wait"))
        poll(lambda: all(state(sc)["revision"] == 2 for sc in m), what="revision 2 everywhere")
        seen = [served_versions(sc, iris_x) for sc in m]
        assert seen[0] == seen[1] == seen[2]  # routing identical across members
        assert set(seen[0].values()) == {"v1", "v2"}

        done = ctl(m[1], "kill", "on", "--reason", "incident 42", "--wait", "-o", "json")
        answer = json.loads(ok(done))
        assert answer["revision"] == 3 and answer["kill_switch"] is True
        assert answer["fleet"] == {"members_live": 3, "members_applied": 3, "not_applied": []}
        for sc in m:  # in force on every member from the acknowledgement on
            assert set(served_versions(sc, iris_x, USERS[:40]).values()) == {"v1"}

        # A wait header that is not a bounded number is refused before anything changes.
        stub = cpb_grpc.ControlStub(grpc.insecure_channel(m[2].control_address))
        for bad in ("nan", "inf", "0", "301", "soon"):
            with pytest.raises(grpc.RpcError) as refused:
                stub.SetKillSwitch(
                    cpb.SetKillSwitchRequest(reason="r", on=False),
                    metadata=(*bearer(OPERATOR_TOKEN), ("x-fleet-wait-seconds", bad)),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "x-fleet-wait-seconds" in str(refused.value.details())
        assert all(state(sc)["revision"] == 3 for sc in m)

        for sc in m:
            fleet = json.loads(ok(ctl(sc, "fleet", "-o", "json", token=VIEWER_TOKEN)))
            assert [x["member_id"] for x in fleet["members"]] == ["m0", "m1", "m2"]
            assert all(x["applied_revision"] == 3 and x["lag"] == 0 for x in fleet["members"])
            assert all(x["live"] and x["ready"] for x in fleet["members"])
            audit = json.loads(ok(ctl(sc, "audit", "-o", "json", token=VIEWER_TOKEN)))
            assert [e["method"] for e in audit] == ["Initialize", "SetWeights", "SetKillSwitch"]
            assert audit[-1]["reason"] == "incident 42"


def test_racing_writes_through_two_members_exactly_one_wins(
    mlserver: MLServerProcess, tmp_path: Path
) -> None:
    """Two operators write at the same expected revision through two members at once:
    one is stored, the other is ABORTED and changed nothing; five rounds."""
    with (
        RedisServer() as redis_server,
        members(fleet_config(mlserver.grpc_address, redis_server.url, "race"), tmp_path, 2) as m,
    ):
        for round_ in range(5):
            _race_once(m, round_)
        audit = json.loads(ok(ctl(m[1], "audit", "-o", "json", token=VIEWER_TOKEN)))
        assert len(audit) == 6  # Initialize + one winner per round


def _race_once(m: list[SidecarProcess], round_: int) -> None:
    revision = state(m[0])["revision"]
    poll(lambda: state(m[1])["revision"] == revision, what="members agree")
    weights = [("stable=90%", "canary=10%"), ("stable=80%", "canary=20%")]

    def write(i: int) -> subprocess.CompletedProcess[str]:
        return ctl(
            m[i], "weights", *weights[i], "--reason", f"op{i} r{round_}",
            "--expect-revision", str(revision),
        )  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(write, range(2)))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.returncode, r.stderr) for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert "ABORTED" in loser.stderr
    winner = next(i for i, r in enumerate(results) if r.returncode == 0)
    expected = {"canary": 1000 + 1000 * winner, "stable": 9000 - 1000 * winner}
    for sc in m:
        poll(lambda sc=sc: state(sc)["revision"] == revision + 1, what="the winner")
        assert state(sc)["weights"] == expected


def _load(
    sidecar: SidecarProcess, rows: npt.NDArray[np.float64], stop: threading.Event,
    tally: dict[str, int],
) -> None:  # fmt: skip
    client = grpcclient.InferenceServerClient(sidecar.predict_address)
    i = 0
    while not stop.is_set():
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(rows[i % 150 : i % 150 + 1])
        try:
            result = client.infer(
                "classifier", [tensor], headers={"x-user-id": f"u{i}"}, client_timeout=10
            )
            version = result.get_response().model_version
            tally[version] = tally.get(version, 0) + 1
        except Exception:  # any failure is what the test counts
            tally["failed"] = tally.get("failed", 0) + 1
        i += 1
    client.close()


def test_redis_stopped_under_load_and_restarted(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """With Redis down, every member keeps serving the state it applied (kill switch
    on stays on; no request fails), writes are UNAVAILABLE naming Redis and change
    nothing; when Redis is back (AOF kept the data) writes work and all members apply."""
    with RedisServer(appendonly=True) as redis_server:
        config = fleet_config(mlserver.grpc_address, redis_server.url, "down")
        config["flag"]["weights"] = {"stable": 5000, "canary": 5000}
        with members(config, tmp_path) as m:
            ok(ctl(m[0], "kill", "on", "--reason", "before the outage", "--wait"))
            stop = threading.Event()
            tallies: list[dict[str, int]] = [{} for _ in m]
            loaders = [
                threading.Thread(target=_load, args=(sc, iris_x, stop, t))
                for sc, t in zip(m, tallies, strict=True)
            ]
            for t in loaders:
                t.start()
            try:
                poll(lambda: all(sum(t.values()) > 20 for t in tallies), what="load running")
                redis_server.stop()
                for sc in m:
                    sc.wait_for_event("fleet.redis_unavailable", timeout=15)
                before = [sum(t.values()) for t in tallies]
                poll(
                    lambda: all(sum(t.values()) > b + 50 for t, b in zip(tallies, before, strict=True)),
                    what="serving while Redis is down",
                )  # fmt: skip
                refused = ctl(m[1], "kill", "off", "--reason", "during the outage")
                assert refused.returncode == 3 and "UNAVAILABLE" in refused.stderr
                assert "redis 127.0.0.1" in refused.stderr
                redis_server.start()
                for sc in m:
                    sc.wait_for_event("fleet.redis_back", timeout=15)
                after = [sum(t.values()) for t in tallies]
                poll(
                    lambda: all(
                        sum(t.values()) > a + 20 for t, a in zip(tallies, after, strict=True)
                    )
                )
            finally:
                stop.set()
                for t in loaders:
                    t.join(30)
            for tally in tallies:
                assert tally.get("failed", 0) == 0, tally
                assert set(tally) == {"v1"}, tally  # the kill switch never went off
            assert all(state(sc)["kill_switch"] is True for sc in m)
            poll(lambda: all_live(m[2], 3), what="every member heartbeats again")
            ok(ctl(m[2], "kill", "off", "--reason", "after the outage", "--wait"))
            after_outage = [(state(sc)["revision"], state(sc)["kill_switch"]) for sc in m]
            assert all(not kill for _, kill in after_outage), (
                after_outage,
                ok(ctl(m[0], "fleet", "-o", "json", token=VIEWER_TOKEN)),
                [[e for e in sc.events if "fleet" in str(e.get("event"))] for sc in m],
            )


def test_redis_restarted_empty_is_reseeded(mlserver: MLServerProcess, tmp_path: Path) -> None:
    """A Redis that comes back without its data is re-seeded by exactly one member from
    the state the fleet serves, at a revision above the old one, audited as Reseed."""
    with RedisServer() as redis_server:
        config = fleet_config(mlserver.grpc_address, redis_server.url, "empty")
        with members(config, tmp_path) as m:
            ok(ctl(m[0], "weights", "stable=70%", "canary=30%", "--reason", "ramp"))
            ok(ctl(m[0], "kill", "on", "--reason", "hold", "--wait"))
            old = state(m[0])["revision"]
            redis_server.restart(empty=True)
            client = redis.Redis.from_url(redis_server.url)
            key = STATE_KEY.format(fleet="empty")
            poll(lambda: client.exists(key) == 1, what="re-seeded")
            poll(lambda: all(state(sc)["revision"] == old + 1 for sc in m), what="all follow")
            for sc in m:
                st = state(sc)
                assert st["kill_switch"] is True
                assert st["weights"] == {"canary": 3000, "stable": 7000}
            audit = json.loads(ok(ctl(m[2], "audit", "-o", "json", token=VIEWER_TOKEN)))
            assert [e["method"] for e in audit] == ["Reseed"]
            assert audit[0]["revision_after"] == old + 1
            reseeded = [
                sc for sc in m if any(e.get("event") == "fleet.reseeded" for e in sc.events)
            ]
            assert len(reseeded) == 1
            client.close()


def test_unreadable_state_document_names_the_key_and_safe_mode(
    mlserver: MLServerProcess, tmp_path: Path
) -> None:
    """A state document this version cannot read stops start-up with one line naming
    the Redis key; --safe-mode starts with the kill switch on at a higher revision."""
    with RedisServer() as redis_server:
        client = redis.Redis.from_url(redis_server.url)
        key = STATE_KEY.format(fleet="bad")
        doc = json.dumps({"schema_version": 99, "state": {"revision": 6}})
        client.hset(key, mapping={"revision": 6, "schema": 99, "doc": doc})
        config = fleet_config(mlserver.grpc_address, redis_server.url, "bad")
        refused = SidecarProcess(config, run_dir=tmp_path / "a", startup_timeout=15)
        with pytest.raises(RuntimeError) as info:
            refused.start()
        assert refused.returncode == 1
        lines = [x for x in str(info.value).splitlines() if x.startswith("sidecar:")]
        assert len(lines) == 1 and key in lines[0] and "schema_version 99" in lines[0]
        with SidecarProcess(config, run_dir=tmp_path / "b", extra_args=["--safe-mode"]) as sc:
            st = state(sc)
            assert st["kill_switch"] is True and st["safe_mode"] is True
            assert st["revision"] == 7
        client.close()


def test_wrong_redis_password_names_the_setting(mlserver: MLServerProcess, tmp_path: Path) -> None:
    """A wrong password is a one-line start-up error naming state.redis.password_env."""
    with RedisServer(password="right") as redis_server:
        config = fleet_config(
            mlserver.grpc_address, redis_server.url, "pw", password_env="FLEET_REDIS_PASSWORD"
        )
        refused = SidecarProcess(
            config, run_dir=tmp_path, startup_timeout=15,
            extra_env={"FLEET_REDIS_PASSWORD": "wrong"},
        )  # fmt: skip
        with pytest.raises(RuntimeError) as info:
            refused.start()
        lines = [x for x in str(info.value).splitlines() if x.startswith("sidecar:")]
        assert len(lines) == 1 and "state.redis.password_env" in lines[0], info.value
        assert "wrong" not in lines[0].replace("refused the password", "")

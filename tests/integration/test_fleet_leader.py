"""One rollout driver and fleet-wide statistics through real processes: a real
redis-server, three real `sidecar serve` members on MLServer, the real `sidecarctl`,
tritonclient and the app client as callers.

Held here: exactly one member holds the leader lease; the leader is SIGKILLed mid-plan and
another member takes over and continues the plan (its steps audited as
`rollout-controller`, written by the new leader); an outcome reported to another member
than the one that served it counts once in the fleet's experiment report, whichever member
is asked; counts made while Redis is down arrive in the fleet's report after it returns."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import redis
import tritonclient.grpc as grpcclient
from test_fleet_state import members

from clients.predict import PredictClient
from sidecar.testing.configs import config_dict
from sidecar.testing.control_cli import ok, sidecarctl, status_json
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess
from sidecar.testing.redis import RedisServer

pytestmark = pytest.mark.integration
LEASE_KEY = "sidecar:{{{fleet}}}:lease"


def fleet_config(mlserver: str, redis_url: str, fleet: str) -> dict[str, Any]:
    redis = {"url": redis_url, "fleet": fleet, "heartbeat_interval": 0.5, "member_ttl": 3.0}
    timing = {"resync_interval": 1.0, "lease_ttl": 1.5, "stats_interval": 0.3}
    # Same model server behind both variants: the latency guards are widened so the
    # health judge passes a healthy canary; this test is about who drives the plan.
    analysis = {
        "interval": 0.3,
        "lookback": 3.0,
        "bucket": 0.5,
        "horizon": 60.0,
        "min_requests": 20,
        "min_latency_samples": 20,
        "max_p50_ratio": 5.0,
        "max_p95_ratio": 5.0,
    }
    return config_dict(
        {"stable": (mlserver, "v1"), "canary": (mlserver, "v2")},
        weights={"stable": 10_000, "canary": 0},
        state={"backend": "redis", "redis": {**redis, **timing}},
        analysis=analysis,
        experiment={"metrics": [{"name": "click", "kind": "bool", "minimum_effect": 0.05}]},
        server={"log_level": "info"},
    )


def ctl(
    sc: SidecarProcess, *args: str, token: str | None = OPERATOR_TOKEN
) -> subprocess.CompletedProcess[str]:
    return sidecarctl(sc.control_address, *args, token=token)


def state(sc: SidecarProcess) -> dict[str, Any]:
    return status_json(sc.control_address, VIEWER_TOKEN)


def report(sc: SidecarProcess) -> dict[str, Any]:
    out = ok(ctl(sc, "report", "-o", "json", "--no-history", token=VIEWER_TOKEN))
    data: dict[str, Any] = json.loads(out)
    return data


def poll(check: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def leaders(m: list[SidecarProcess]) -> list[int]:
    """Members that logged taking the lease and did not log losing it since."""
    out = []
    for i, sc in enumerate(m):
        taken = lost = 0
        for event in list(sc.events):
            taken += event.get("event") == "fleet.leader_acquired"
            lost += event.get("event") == "fleet.leader_lost"
        if taken > lost and sc.returncode is None:
            out.append(i)
    return out


def _load(
    targets: list[SidecarProcess], rows: npt.NDArray[np.float64], stop: threading.Event,
    tally: dict[str, int],
) -> None:  # fmt: skip
    """Round-robin requests over the members still running (a killed one is skipped)."""
    clients = {
        sc.predict_address: grpcclient.InferenceServerClient(sc.predict_address) for sc in targets
    }
    i = 0
    while not stop.is_set():
        sc = targets[i % len(targets)]
        i += 1
        if sc.returncode is not None:
            continue
        tensor = grpcclient.InferInput("input-0", [1, 4], "FP64")
        tensor.set_data_from_numpy(rows[i % 150 : i % 150 + 1])
        try:
            clients[sc.predict_address].infer(
                "classifier", [tensor], headers={"x-user-id": f"u{i}"}, client_timeout=5
            )
            tally["ok"] = tally.get("ok", 0) + 1
        except Exception:
            tally["failed"] = tally.get("failed", 0) + 1
    for client in clients.values():
        client.close()


PLAN = """\
- {name: c5, kind: canary, canary_percent: 5, min_samples: 20}
- {name: c25, kind: canary, canary_percent: 25, min_samples: 40}
- {name: c50, kind: canary, canary_percent: 50, min_samples: 1000000000}
- {name: promote, kind: promote}
"""


def _stage(sc: SidecarProcess) -> str:
    """The name of the rollout's current stage, as `sidecarctl rollout status` reads it."""
    out = ok(ctl(sc, "rollout", "status", "-o", "json", token=VIEWER_TOKEN))
    return str(json.loads(out).get("stage_name") or "")


def test_one_leader_and_a_killed_leader_is_replaced_mid_plan(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Exactly one of three members leads; it drives the plan to its second stage judging
    traffic that only the other members serve (so on the fleet's merged windows); it is
    SIGKILLed; another member takes the lease (a higher fencing token) and advances the
    plan to the third stage, audited as rollout-controller; the old leader's lease is
    gone from Redis."""
    with RedisServer() as redis_server:
        config = fleet_config(mlserver.grpc_address, redis_server.url, "lead")
        r = redis.Redis.from_url(redis_server.url)
        with members(config, tmp_path) as m:
            poll(lambda: len(leaders(m)) == 1, what="a leader")
            assert len(leaders(m)) == 1
            first = leaders(m)[0]
            token = int(r.get(LEASE_KEY.format(fleet="lead")) or 0)
            assert token >= 1
            plan = tmp_path / "plan.yaml"
            plan.write_text(PLAN)
            stop = threading.Event()
            tally: dict[str, int] = {}
            # the leader serves nothing: it can only pass the canary on the others' data
            others = [sc for i, sc in enumerate(m) if i != first]
            load = threading.Thread(target=_load, args=(others, iris_x, stop, tally))
            load.start()
            try:
                # started through a follower: operators' verbs work against any member
                follower = (first + 1) % 3
                ok(ctl(m[follower], "rollout", "start", "--plan", str(plan), "--reason", "v2"))
                poll(lambda: _stage(m[follower]) == "c25", timeout=60, what="stage c25")
                killed_at = time.time()
                m[first].kill()
                poll(lambda: len(leaders(m)) == 1, timeout=30, what="a new leader")
                second = leaders(m)[0]
                assert second != first
                new_token = int(r.get(LEASE_KEY.format(fleet="lead")) or 0)
                assert new_token > token
                survivor = next(i for i in range(3) if i not in (first, second))
                poll(lambda: _stage(m[survivor]) == "c50", timeout=60, what="stage c50")
                # entered c50 (RolloutAdvance); its weights (RolloutStage) are the next commit
                poll(
                    lambda: state(m[survivor])["weights"]["canary"] == 5000,
                    timeout=60,
                    what="c50's weights",
                )
            finally:
                stop.set()
                load.join(30)
            audit = json.loads(ok(ctl(m[survivor], "audit", "-o", "json", token=VIEWER_TOKEN)))
            steps = [e for e in audit if e["method"] in ("RolloutAdvance", "RolloutStage")]
            assert steps and all(e["principal"] == "rollout-controller" for e in steps)
            after = [e for e in steps if e["unix_time"] > killed_at]
            # (the old leader may have died between entering c25 and setting its weights:
            # then the new leader sets them first)
            assert [e["method"] for e in after][-2:] == ["RolloutAdvance", "RolloutStage"]
            # the new leader wrote them: its own log has the commits
            written = [
                e for e in m[second].events
                if e.get("event") == "control.changed" and e.get("principal") == "rollout-controller"
            ]  # fmt: skip
            assert {e["method"] for e in written} >= {"RolloutAdvance", "RolloutStage"}
            assert state(m[survivor])["weights"]["canary"] == 5000
        r.close()


def _predict(client: PredictClient, rows: npt.NDArray[np.float64], n: int, start: int) -> list[str]:
    ids = []
    for i in range(start, start + n):
        answer = client.predict({"input-0": rows[i % 150 : i % 150 + 1]}, targeting_key=f"user{i}")
        ids.append(answer.request_id)
    return ids


def _forwarded(client: PredictClient, request_id: str) -> bool:
    """True once `client`'s member forwards an outcome for `request_id` (before it has
    read the serving member's published statistics, the id is unknown: NOT_FOUND)."""
    try:
        variant, _ = client.report_outcome(request_id, "click", True)
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.NOT_FOUND, exc
        return False
    return variant == ""  # forwarded: the owner attributes it


def _totals(data: dict[str, Any]) -> tuple[int, int]:
    """(assignments, click outcomes) of the fleet's report."""
    srm = data.get("srm") or {"arms": []}
    assigned = sum(a["observed"] for a in srm["arms"])
    click = next(x for x in data["metrics"] if x["metric"] == "click")
    return assigned, click["control"]["n"] + click["treatment"]["n"]


def test_outcomes_reported_elsewhere_count_once_and_counts_survive_a_redis_outage(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Requests served by member 0, their outcomes reported to member 1 (forwarded to
    member 0's ledger) and again to member 2 (a repeat): the fleet's report from any member
    counts each once. Then Redis stops; member 0 serves more and gets their outcomes
    directly; after Redis returns the other members' reports include them."""
    with RedisServer() as redis_server:
        config = fleet_config(mlserver.grpc_address, redis_server.url, "stats")
        config["flag"]["weights"] = {"stable": 5000, "canary": 5000}
        with members(config, tmp_path) as m:
            serving = PredictClient(m[0].predict_address)
            ids = _predict(serving, iris_x, 40, 0)
            assert len(set(ids)) == 40
            # the other members know member 0 from its published statistics
            with (
                PredictClient(m[1].predict_address) as via1,
                PredictClient(m[2].predict_address) as via2,
            ):
                # (a member knows the others once it has read their statistics)
                poll(lambda: _forwarded(via1, ids[0]), what="member 0 known to member 1")
                poll(lambda: _forwarded(via2, ids[0]), what="member 0 known to member 2")
                for request_id in ids[1:]:
                    via1.report_outcome(request_id, "click", True)
                for request_id in ids:  # repeats, through another member: counted once
                    via2.report_outcome(request_id, "click", True)
                with pytest.raises(grpc.RpcError) as refused:
                    via2.report_outcome("ffffffff-" + "0" * 32, "click", True)
                assert refused.value.code() is grpc.StatusCode.NOT_FOUND  # no such member
            for sc in m:
                poll(lambda sc=sc: _totals(report(sc)) == (40, 40), what="fleet report")

            redis_server.stop()
            m[0].wait_for_event("fleet.redis_unavailable", timeout=15)
            more = _predict(serving, iris_x, 20, 40)
            for request_id in more:
                serving.report_outcome(request_id, "click", False)
            assert _totals(report(m[0])) == (60, 60)  # its own counts, at once
            redis_server.start()
            for sc in m[1:]:
                poll(lambda sc=sc: _totals(report(sc)) == (60, 60), what="after the outage")
            serving.close()

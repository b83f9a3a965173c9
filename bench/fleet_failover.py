"""Leader failover in a fleet: how long a rollout plan stands still when its driver dies.

N real `sidecar serve` processes share one real redis-server and route to a trivial
upstream (bench/upstream_server.py); a thread sends requests round-robin to the live
members so the canary judge has data. A plan of short canary stages runs (each passes
its gates as soon as the judge does). Each round:

1. wait until the plan advances (a `RolloutAdvance` audited by the leader: the stage index
   moved, its weights not yet set: the leader sets them on its next tick);
2. SIGKILL the member that holds the lease (the one whose `fleet.leader_acquired` token is
   the lease's value in Redis), at once;
3. the figure: from the SIGKILL to the commit time of the next plan step (the new stage's
   `RolloutStage`, audited as `rollout-controller`), written by a new leader.

So it covers: the dead leader's lease running out in Redis (at most `lease_ttl` after its
last renewal), a follower's next acquire attempt (every `lease_ttl / 10`), and its first
tick (a follower's controller checks the lease every 0.25 s). `leader_failover_s` is the
median over the rounds; every round is kept. The key is merged into
`bench/results/fleet.json` (created if missing; other keys are kept): run it after
`bench/fleet.py`, which writes that file anew (the Makefile's `bench` target does).

    .venv/bin/python bench/fleet_failover.py [--sidecars 5] [--rounds 3] [--lease-ttl 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upstream_server import spawn as spawn_upstream  # noqa: E402  (bench/, the script folder)

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip  # noqa: E402
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc  # noqa: E402
from sidecar._proto.sidecar.v1 import control_pb2 as cpb  # noqa: E402
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc  # noqa: E402
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer, control_section  # noqa: E402
from sidecar.testing.process import SidecarProcess  # noqa: E402
from sidecar.testing.redis import RedisServer  # noqa: E402

FLEET = "failover"
STAGES = (100, 500, 2500, 5000, 10_000)  # canary basis points: each step at most 5x
POLL_S = 0.01


def config(upstream: str, redis_url: str, lease_ttl: float, interval: float) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": upstream, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": upstream, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {
            "key": "bench",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 10_000, "canary": 0},
        },
        "control": control_section(),
        "state": {
            "backend": "redis",
            "redis": {"url": redis_url, "fleet": FLEET, "lease_ttl": lease_ttl},
        },
        "analysis": {
            "interval": interval,
            "lookback": 5.0,
            "bucket": 0.5,
            "horizon": 60.0,
            "min_requests": 10,
            "min_latency_samples": 10,
            "max_p50_ratio": 5.0,
            "max_p95_ratio": 5.0,
        },
        "server": {"log_level": "info"},
    }


def load(members: list[SidecarProcess], stop: threading.Event, tally: dict[str, int]) -> None:
    stubs = [
        oip_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(m.predict_address)) for m in members
    ]
    request = oip.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
        [5.1, 3.5, 1.4, 0.2]
    )
    i = 0
    while not stop.is_set():
        member = i % len(members)
        i += 1
        if members[member].returncode is not None:
            continue
        try:
            stubs[member].ModelInfer(request, metadata=(("x-user-id", f"u{i}"),), timeout=5)
            tally["ok"] = tally.get("ok", 0) + 1
        except grpc.RpcError:
            tally["failed"] = tally.get("failed", 0) + 1
        time.sleep(0.002)


def leader(members: list[SidecarProcess], client: redis.Redis) -> int | None:
    """The member whose acquired token is the lease's value now."""
    raw = client.get(f"sidecar:{{{FLEET}}}:lease")
    if raw is None:
        return None
    token = int(raw)
    for i, m in enumerate(members):
        if m.returncode is not None:
            continue
        for event in list(m.events):
            if event.get("event") == "fleet.leader_acquired" and event.get("token") == token:
                return i
    return None


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None and value is not False:
            return value
        time.sleep(POLL_S)
    raise RuntimeError(f"not within {timeout} s: {what}")


def audit(stub: Any) -> list[Any]:
    answer = stub.GetAuditLog(
        cpb.GetAuditLogRequest(page_size=1000), metadata=bearer(OPERATOR_TOKEN)
    )
    return list(answer.entries)


def one_round(
    members: list[SidecarProcess], stubs: list[Any], client: redis.Redis, timeout: float
) -> dict[str, Any]:
    old = wait_for(lambda: leader(members, client), timeout, "a leader")
    watcher = next(i for i, m in enumerate(members) if i != old and m.returncode is None)
    stub = stubs[watcher]
    meta = bearer(OPERATOR_TOKEN)
    index = stub.GetRollout(cpb.GetRolloutRequest(), metadata=meta).stage_index
    # 1. the leader advances the plan (stage index moves; its weights come on the next tick)
    wait_for(
        lambda: stub.GetRollout(cpb.GetRolloutRequest(), metadata=meta).stage_index > index,
        timeout, "an advance",
    )  # fmt: skip
    killed = time.time()
    members[old].kill()

    # 3. the next plan step (RolloutStage), by a new leader
    def stage_written() -> Any:
        entries = [e for e in audit(stub) if e.unix_time > killed and e.method == "RolloutStage"]
        return entries[0] if entries else None

    entry = wait_for(stage_written, timeout, "the next plan step")
    new = wait_for(lambda: leader(members, client), timeout, "the new leader")
    return {
        "failover_s": round(entry.unix_time - killed, 3),
        "killed_member": old,
        "new_leader": new,
        "step_principal": entry.principal,
        "step_reason": entry.reason,
    }


def run(n: int, rounds: int, lease_ttl: float, interval: float, run_dir: Path) -> dict[str, Any]:
    upstream_proc, upstream = spawn_upstream()
    members: list[SidecarProcess] = []
    stop = threading.Event()
    tally: dict[str, int] = {}
    try:
        with RedisServer(appendonly=True) as redis_server:
            cfg = config(upstream, redis_server.url, lease_ttl, interval)
            for i in range(n):
                env = {"SIDECAR_MEMBER_ID": f"m{i}"}
                members.append(
                    SidecarProcess(cfg, run_dir=run_dir / f"m{i}", extra_env=env).start()
                )
            stubs = [
                cpb_grpc.ControlStub(grpc.insecure_channel(m.control_address)) for m in members
            ]
            client = redis.Redis.from_url(redis_server.url)
            loader = threading.Thread(target=load, args=(members, stop, tally), daemon=True)
            loader.start()
            plan = cpb.RolloutPlan(
                stages=[
                    cpb.RolloutStage(name=f"c{bp}", kind=cpb.STAGE_KIND_CANARY, canary_bp=bp)
                    for bp in STAGES
                ]
            )
            stubs[-1].StartRollout(
                cpb.StartRolloutRequest(reason="failover bench", plan=plan, force=True),
                metadata=bearer(OPERATOR_TOKEN),
            )
            timeout = 10 * lease_ttl + 30
            results = [one_round(members, stubs, client, timeout) for _ in range(rounds)]
            stop.set()
            loader.join(10)
            client.close()
    finally:
        stop.set()
        for m in members:
            m.kill()
        upstream_proc.kill()
    figures = [r["failover_s"] for r in results]
    return {
        "leader_failover_s": round(float(np.median(figures)), 3),
        "leader_failover": {
            "rounds": results,
            "max_s": max(figures),
            "sidecars": n,
            "lease_ttl_s": lease_ttl,
            "analysis_interval_s": interval,
            "requests": tally,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sidecars", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=5.0)  # the configuration default
    parser.add_argument("--interval", type=float, default=1.0)  # analysis.interval
    args = parser.parse_args()
    if args.rounds >= args.sidecars:
        parser.error("--rounds must be below --sidecars (each round kills one member)")
    with tempfile.TemporaryDirectory(prefix="fleet-failover-") as tmp:
        result = run(args.sidecars, args.rounds, args.lease_ttl, args.interval, Path(tmp))
    out = ROOT / "bench" / "results" / "fleet.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    data.update(result)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fleet mode (state.backend: redis) on this machine: N real `sidecar serve` processes
sharing one real redis-server (AOF on, appendfsync always), all routing to a trivial
upstream (bench/upstream_server.py), driven by this process.

The load: one closed-loop client per member (one request in flight, 50 ms between
requests, distinct users), recording (member, start, end, variant, failed). On 2 cores,
twenty sidecars, the client and Redis share the CPU: a heavier background load measures
the CPU queue, not the fleet.

Figures (one function each; `bench/results/fleet.json`):
- `sidecars`: how many sidecar processes ran;
- `kill_switch_apply_ms_p50` / `_p99`: with all traffic on the canary, the kill switch is
  turned on through one member (rotating); right after the write's acknowledgement
  (stored in Redis, no wait) every member is probed with back-to-back requests until one
  is served from stable; per member, from the acknowledgement to the end of the first
  request it served from stable, i.e. under the new revision (0 when a background request
  was served from stable before the acknowledgement arrived). One request's latency is
  included in the figure;
- `canary_served_after_wait_ack`: kill switch on with the `x-fleet-wait-seconds` header
  (sidecarctl --wait): requests that started after the acknowledgement and were served by
  the canary, on any member, until the switch is turned off again (goal 0);
- `requests_failed_while_redis_down`: under the same load, Redis is stopped for a while and
  started again; every request that failed from the stop until members have re-synced;
- `leader_failover_s`: the leader lease's figure (another change fills it; null here).

    .venv/bin/python bench/fleet.py [--sidecars 20] [--flips 40] [--down-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

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

PAUSE_S = 0.05  # between one member's background requests (about 20/s per member)
SETTLE_TIMEOUT_S = 5.0
FLEET = "bench"


@dataclass
class Load:
    """One closed-loop client per member; records every request."""

    stubs: list[Any]
    records: list[tuple[int, float, float, str, bool]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, member: int) -> None:
        loop = asyncio.get_running_loop()
        request = oip.ModelInferRequest(model_name="classifier")
        request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
            [5.1, 3.5, 1.4, 0.2]
        )
        i = 0
        while not self.stop.is_set():
            started = loop.time()
            try:
                call = self.stubs[member].ModelInfer(
                    request, metadata=(("x-user-id", f"m{member}-{i}"),), timeout=5
                )
                await call
                variant = str(dict(await call.trailing_metadata())["x-variant"])
                self.records.append((member, started, loop.time(), variant, False))
            except grpc.aio.AioRpcError:
                self.records.append((member, started, loop.time(), "", True))
            i += 1
            await asyncio.sleep(PAUSE_S)

    async def probe(self, member: int, variant: str, bound: float = SETTLE_TIMEOUT_S) -> None:
        """Requests to `member` back to back until one is served by `variant` (recorded
        like the background ones)."""
        loop = asyncio.get_running_loop()
        request = oip.ModelInferRequest(model_name="classifier")
        request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
            [5.1, 3.5, 1.4, 0.2]
        )
        deadline = loop.time() + bound
        i = 0
        while loop.time() < deadline:
            started = loop.time()
            try:
                call = self.stubs[member].ModelInfer(
                    request, metadata=(("x-user-id", f"p{member}-{i}"),), timeout=5
                )
                await call
                served = str(dict(await call.trailing_metadata())["x-variant"])
                self.records.append((member, started, loop.time(), served, False))
            except grpc.aio.AioRpcError:
                self.records.append((member, started, loop.time(), "", True))
                served = ""
            if served == variant:
                return
            i += 1

    def served_since(self, t: float, variant: str) -> set[int]:
        """Members that completed a request served by `variant` after `t`."""
        return {m for m, _, end, v, _ in self.records[-4000:] if end > t and v == variant}


class Operator:
    """Control writes through the members in turn."""

    def __init__(self, addresses: list[str]) -> None:
        self.stubs = [cpb_grpc.ControlStub(grpc.aio.insecure_channel(a)) for a in addresses]
        self.turn = 0
        self.metadata = bearer(OPERATOR_TOKEN)

    async def kill(self, on: bool, wait: float | None = None) -> cpb.State:
        stub = self.stubs[self.turn % len(self.stubs)]
        self.turn += 1
        metadata = self.metadata
        if wait is not None:
            metadata = (*metadata, ("x-fleet-wait-seconds", str(wait)))
        request = cpb.SetKillSwitchRequest(reason="bench", on=on)
        answer: cpb.State = await stub.SetKillSwitch(request, metadata=metadata, timeout=30)
        return answer


async def settle(load: Load, n: int, since: float, variant: str) -> bool:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if len(load.served_since(since, variant)) == n:
            return True
        await asyncio.sleep(0.01)
    return False


async def kill_switch_apply(load: Load, operator: Operator, n: int, flips: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    unsettled = 0
    for _ in range(flips):
        t0 = loop.time()
        await operator.kill(False)
        await settle(load, n, t0, "canary")
        await asyncio.sleep(0.05)
        start = len(load.records)
        await operator.kill(True)
        ack = loop.time()
        await asyncio.gather(*(load.probe(i, "stable") for i in range(n)))
        unsettled += not await settle(load, n, ack, "stable")
        first: dict[int, float] = {}
        for member, _, end, variant, _ in load.records[start:]:
            if variant == "stable":
                first[member] = min(first.get(member, np.inf), max(0.0, end - ack))
        samples.extend(first.values())
    ms = np.array(samples) * 1e3
    return {
        "kill_switch_apply_ms_p50": float(np.percentile(ms, 50)),
        "kill_switch_apply_ms_p99": float(np.percentile(ms, 99)),
        "kill_switch_apply_ms_max": float(ms.max()),
        "kill_switch_apply_samples": len(samples),
        "kill_switch_flips": flips,
        "kill_switch_flips_not_settled_in_5s": unsettled,
    }


async def canary_after_wait_ack(
    load: Load, operator: Operator, n: int, flips: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    violations = 0
    not_applied = 0
    wait_ms: list[float] = []
    for _ in range(flips):
        await operator.kill(False, wait=10)
        await asyncio.sleep(0.05)
        t0 = loop.time()
        answer = await operator.kill(True, wait=10)
        ack = loop.time()
        wait_ms.append((ack - t0) * 1e3)
        not_applied += len(answer.fleet_not_applied)
        await asyncio.sleep(0.2)
        violations += sum(
            1 for _, started, _, variant, _ in load.records[-4000:]
            if started > ack and variant == "canary"
        )  # fmt: skip
    await operator.kill(False, wait=10)
    return {
        "canary_served_after_wait_ack": violations,
        "wait_flips": flips,
        "wait_members_not_applied": not_applied,
        "wait_write_ms_p50": float(np.percentile(wait_ms, 50)),
        "wait_write_ms_p99": float(np.percentile(wait_ms, 99)),
    }


def leader_failover() -> dict[str, Any]:
    """The leader lease engineer's figure (SIGKILL of the leader to the next plan step)."""
    return {"leader_failover_s": None}


async def redis_down(
    load: Load, operator: Operator, n: int, redis_server: RedisServer, seconds: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    await operator.kill(True, wait=10)
    start = len(load.records)
    t_stop = loop.time()
    await asyncio.to_thread(redis_server.stop)
    await asyncio.sleep(seconds)
    await asyncio.to_thread(redis_server.start)
    # Back: a write through any member reaches every member again.
    deadline = time.monotonic() + 30
    while True:
        try:
            answer = await operator.kill(True, wait=10)
            if not answer.fleet_not_applied and answer.fleet_members_live == n:
                break
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    resynced = loop.time()
    window = load.records[start:]
    return {
        "requests_failed_while_redis_down": sum(1 for r in window if r[4]),
        "requests_while_redis_down": len(window),
        "canary_served_while_redis_down": sum(1 for r in window if r[3] == "canary"),
        "redis_down_seconds": seconds,
        "redis_back_to_fleet_resynced_s": resynced - t_stop - seconds,
    }


def start_members(n: int, upstream: str, redis_url: str, run_dir: Path) -> list[SidecarProcess]:
    config = {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": upstream, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": upstream, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {"key": "fleet", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 0, "canary": 10_000}},
        "control": control_section(),
        "state": {"backend": "redis", "redis": {"url": redis_url, "fleet": FLEET}},
        "server": {"log_level": "warning"},
    }  # fmt: skip

    def one(i: int) -> SidecarProcess:
        return SidecarProcess(
            config, run_dir=run_dir / f"m{i}", startup_timeout=120,
            extra_env={"SIDECAR_MEMBER_ID": f"m{i:02d}"},
        ).start()  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


async def run(n: int, flips: int, down_seconds: float, run_dir: Path) -> dict[str, Any]:
    upstream, address = spawn_upstream()
    redis_server = RedisServer(appendonly=True, work_dir=run_dir / "redis").start()
    members: list[SidecarProcess] = []
    try:
        members = start_members(n, address, redis_server.url, run_dir)
        channels = [grpc.aio.insecure_channel(m.predict_address) for m in members]
        load = Load([oip_grpc.GRPCInferenceServiceStub(c) for c in channels])
        operator = Operator([m.control_address for m in members])
        clients = [asyncio.create_task(load.client(i)) for i in range(n)]
        result: dict[str, Any] = {"sidecars": n}
        load_before = os.getloadavg()[0]
        wall = time.perf_counter()
        await asyncio.sleep(1.0)  # warm up
        result.update(await kill_switch_apply(load, operator, n, flips))
        result.update(await canary_after_wait_ack(load, operator, n, max(5, flips // 2)))
        result.update(leader_failover())
        result.update(await redis_down(load, operator, n, redis_server, down_seconds))
        load.stop.set()
        await asyncio.gather(*clients)
        result["requests"] = len(load.records)
        result["requests_failed"] = sum(1 for r in load.records if r[4])
        result["wall_seconds"] = time.perf_counter() - wall
        result["machine"] = {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "grpc": grpc.__version__,
            "redis_appendfsync": "always",
            # Other work on the machine competes for the 2 cores: the 1-minute load average
            # before and after the run (20 sidecars + this client alone add about 2-3).
            "load_average_1m_before": load_before,
            "load_average_1m_after": os.getloadavg()[0],
        }
        return result
    finally:
        for m in members:
            m.stop()
        redis_server.kill()
        upstream.terminate()
        upstream.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sidecars", type=int, default=20)
    parser.add_argument("--flips", type=int, default=40)
    parser.add_argument("--down-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        result = asyncio.run(run(args.sidecars, args.flips, args.down_seconds, Path(tmp)))
    lines = [
        f"fleet: {result['sidecars']} sidecars, {result['requests']} requests, "
        f"{result['wall_seconds']:.1f}s",
        f"  kill switch ack -> each member serving it  p50 "
        f"{result['kill_switch_apply_ms_p50']:.1f} ms   p99 "
        f"{result['kill_switch_apply_ms_p99']:.1f} ms   (goal p99 <= 100 ms; "
        f"{result['kill_switch_apply_samples']} samples)",
        f"  canary served after a --wait ack           {result['canary_served_after_wait_ack']}"
        "   (goal 0)",
        f"  requests failed while Redis was down       "
        f"{result['requests_failed_while_redis_down']} of {result['requests_while_redis_down']}"
        "   (goal 0)",
    ]
    print("\n".join(lines))
    out = ROOT / "bench" / "results" / "fleet.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

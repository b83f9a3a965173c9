"""User overrides at scale: write latency and Predict stalls with 100,000 overrides.

Two measurements, both on a SQLite state store seeded with `--overrides` user overrides
(written straight into the database, as 100,000 Control writes would take minutes):

- `grpc`: the real `sidecar serve` (subprocess) in front of a minimal model server
  (bench/upstream_server.py). Its start-up time with the seeded store is measured (process
  start to `sidecar.started`). Then `--predict-clients` closed-loop ModelInfer clients run
  for a baseline window without writes, then during `--writes` sequential Control
  SetUserOverride / ClearUserOverride writes (operator token, one at a time). Reported:
  write latency (client side, p50 / p99 / max) and the largest ModelInfer latency during
  the writes (`predict_stall_ms_max_during_writes`) next to the baseline's.
- `service`: `ControlService` in this process over the same store, the cost of a write
  itself without the gRPC answer: `write_loop_cpu_ms`, the CPU time each write spends on
  the event-loop thread (the commit's fsync runs in a worker thread), the longest a
  Predict could wait for a write on an otherwise idle machine; then `loop_stall_ms_max`,
  how late a probe task (sleep 1 ms) woke up during the writes, next to
  `loop_stall_ms_max_idle`, the same probe on an idle loop (the machine's own noise).

Prints JSON and writes bench/results/overrides.json. `measure_override_writes(...)` is the
importable core (bench/soak.py may call it).

    .venv/bin/python bench/overrides.py [--overrides 100000] [--writes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
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
from sidecar.adapters.store.sqlite import SqliteStore  # noqa: E402
from sidecar.app.control import ControlService  # noqa: E402
from sidecar.app.ports import AuditEntry  # noqa: E402
from sidecar.app.state import StateHolder  # noqa: E402
from sidecar.config import parse_config  # noqa: E402
from sidecar.core.state import DesiredState  # noqa: E402
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer, control_section  # noqa: E402
from sidecar.testing.process import SidecarProcess  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "overrides.json"


def _config(address: str, db: Path) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": address, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": address, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {"key": "overrides", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 9000, "canary": 1000}},
        "control": control_section(),
        "server": {"log_level": "warning"},
        "state": {"backend": "sqlite", "path": str(db)},
    }  # fmt: skip


def seed(config: dict[str, Any], overrides: int) -> float:
    """Commit the configured flag plus `overrides` user overrides; returns seconds taken."""
    flag = parse_config(config, "<bench>").flag
    state = DesiredState.from_flag(flag, unix_time=time.time()).evolve(
        user_overrides={f"user-{i}": ("canary" if i % 2 else "stable") for i in range(overrides)}
    )
    started = time.perf_counter()
    store = SqliteStore(config["state"]["path"])
    store.commit(state, AuditEntry(time.time(), "bench", "Initialize", "seed", 0, 1, {}))
    store.close()
    return time.perf_counter() - started


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    a = np.array(values) * 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


async def _grpc_phase(
    sidecar: SidecarProcess, writes: int, clients: int, baseline_s: float
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    infer = oip_grpc.GRPCInferenceServiceStub(grpc.aio.insecure_channel(sidecar.predict_address))
    control = cpb_grpc.ControlStub(
        grpc.aio.insecure_channel(
            sidecar.control_address, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
    )
    request = oip.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
        [5.1, 3.5, 1.4, 0.2]
    )
    phase = "warmup"
    latencies: dict[str, list[float]] = {"warmup": [], "baseline": [], "writes": []}
    errors = 0
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal errors
        i = 0
        while not stop.is_set():
            started = loop.time()
            try:
                await infer.ModelInfer(
                    request,
                    metadata=(("x-user-id", f"user-{(n * 7919 + i) % 200_000}"),),
                    timeout=5,
                )
                latencies[phase].append(loop.time() - started)
            except grpc.aio.AioRpcError:
                errors += 1
            i += 1

    write_latency: list[float] = []
    write_errors = 0

    async def operator() -> None:
        nonlocal phase, write_errors
        md = bearer(OPERATOR_TOKEN)
        await asyncio.sleep(0.5)
        phase = "baseline"
        await asyncio.sleep(baseline_s)
        phase = "writes"
        for k in range(writes):
            key = f"bench-{k // 2}"
            started = loop.time()
            try:
                if k % 2 == 0:
                    await control.SetUserOverride(
                        cpb.SetUserOverrideRequest(
                            reason=f"bench {k}", targeting_key=key, variant="canary"
                        ),
                        metadata=md,
                        timeout=30,
                    )
                else:
                    await control.ClearUserOverride(
                        cpb.ClearUserOverrideRequest(reason=f"bench {k}", targeting_key=key),
                        metadata=md,
                        timeout=30,
                    )
                write_latency.append(loop.time() - started)
            except grpc.aio.AioRpcError as exc:
                write_errors += 1
                if write_errors == 1:
                    print(f"write failed: {exc.code().name} {exc.details()}", file=sys.stderr)
        stop.set()

    await asyncio.gather(operator(), *(client(n) for n in range(clients)))
    return {
        "write_ms": _ms(write_latency),
        "write_errors": write_errors,
        "predict_ms_baseline": _ms(latencies["baseline"]),
        "predict_ms_during_writes": _ms(latencies["writes"]),
        "predict_stall_ms_max_during_writes": _ms(latencies["writes"])["max"],
        "predict_requests": len(latencies["baseline"]) + len(latencies["writes"]),
        "predict_errors": errors,
    }


async def _service_phase(db: Path, config: dict[str, Any], writes: int) -> dict[str, Any]:
    """ControlService over the seeded store in this process; event-loop lateness probe."""
    template = parse_config(config, "<bench>").flag
    store = SqliteStore(db)
    loaded = time.perf_counter()
    state = store.load()
    assert state is not None
    flag = state.to_flag(template)
    load_s = time.perf_counter() - loaded

    async def ready(variant: str) -> bool:
        return True

    service = ControlService(
        holder=StateHolder(flag, state),
        template=template,
        store=store,
        ready=ready,
        served=lambda: {},
    )
    loop = asyncio.get_running_loop()

    async def probe(stop: asyncio.Event, lateness: list[float]) -> None:
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.001)
            lateness.append(loop.time() - started - 0.001)

    async def writes_from(first: int) -> tuple[list[float], list[float]]:
        """Wall time and event-loop-thread CPU time of each write."""
        wall: list[float] = []
        cpu: list[float] = []
        for k in range(first, first + writes):
            key = f"svc-{k // 2}"
            started, cpu_started = time.perf_counter(), time.thread_time()
            if k % 2 == 0:
                await service.set_user_override("bench", f"svc {k}", 0, key, "canary")
            else:
                await service.clear_user_override("bench", f"svc {k}", 0, key)
            wall.append(time.perf_counter() - started)
            cpu.append(time.thread_time() - cpu_started)
        return wall, cpu

    # 1. the writes alone: CPU time each spends on the event-loop thread (the commit runs
    # in a worker thread), what a Predict waits at most, whatever else runs on the machine
    wall_started = time.perf_counter()
    _, cpu_only = await writes_from(10 * writes)
    alone_s = time.perf_counter() - wall_started
    # 2. the writes with the probe: how late the loop woke up (includes the machine's noise)
    stop, during = asyncio.Event(), []
    probing = asyncio.create_task(probe(stop, during))
    latency, _ = await writes_from(0)
    stop.set()
    await probing
    # 3. the probe alone as long: the machine's noise on an idle loop
    stop, idle = asyncio.Event(), []
    probing = asyncio.create_task(probe(stop, idle))
    await asyncio.sleep(alone_s)
    stop.set()
    await probing
    store.close()
    return {
        "load_and_compile_s": round(load_s, 3),
        "write_ms": _ms(latency),
        "write_loop_cpu_ms": _ms(cpu_only),
        "loop_stall_ms_max": round(max(during, default=0.0) * 1000.0, 2),
        "loop_stall_ms_max_idle": round(max(idle, default=0.0) * 1000.0, 2),
        "loop_stall_ms_median": round(statistics.median(during or [0.0]) * 1000.0, 3),
    }


def measure_override_writes(
    *,
    overrides: int = 100_000,
    writes: int = 200,
    predict_clients: int = 2,
    baseline_s: float = 2.0,
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Seed `overrides` overrides, measure start-up, write latency through Control and the
    largest Predict latency during the writes (real sidecar), then the same writes in
    process with an event-loop probe. Returns the figures (JSON-ready)."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="bench-overrides-"))
    upstream, address = spawn_upstream()
    db = run_dir / "var" / "sidecar.db"
    config = _config(address, db)
    try:
        # Each write sets one new key and the next clears it: the table holds `overrides`
        # - 1 or `overrides` (100,000 is the Control limit, sidecar/core/limits.py).
        seed_s = seed(config, overrides - 1)
        started = time.perf_counter()
        sidecar = SidecarProcess(config, run_dir=run_dir, startup_timeout=120).start()
        startup_s = time.perf_counter() - started
        try:
            over_grpc = asyncio.run(_grpc_phase(sidecar, writes, predict_clients, baseline_s))
        finally:
            sidecar.stop()
        in_process = asyncio.run(_service_phase(db, config, writes))
    finally:
        upstream.terminate()
        upstream.wait(5)
    return {
        "overrides": overrides,
        "writes": writes,
        "seed_s": round(seed_s, 3),
        "startup_s": round(startup_s, 3),
        "grpc": over_grpc,
        "service": in_process,
        "override_write_ms_p99_at_100k": over_grpc["write_ms"]["p99"],
        "predict_stall_ms_max_during_writes_at_100k": over_grpc[
            "predict_stall_ms_max_during_writes"
        ],
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--predict-clients", type=int, default=2)
    args = parser.parse_args()
    result = measure_override_writes(
        overrides=args.overrides, writes=args.writes, predict_clients=args.predict_clients
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

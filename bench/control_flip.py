"""Kill-switch propagation under load: time from the Control acknowledgement to the first
stable-only request, over many flips.

Processes: a minimal model server (bench/upstream_server.py), the real `sidecar serve`
(file state store: every write is fsynced before it is acknowledged), and this process,
which runs 4 concurrent closed-loop clients on the front door (50/50 split, distinct
users) and an operator that flips the kill switch on and off through Control.

For each flip to ON, with t_ack = when the operator received the acknowledgement:
- violations: requests that started after t_ack and were served by the canary (must be 0);
- propagation: time from t_ack to the completion of the first request that started
  after t_ack (it is stable-only by construction if violations are 0). This is an upper
  bound that includes one request's latency.
Also reported: the acknowledgement latency of the write itself (validate, fsync state and
audit, swap). Prints a table and writes bench/results/control_flip.json.

    .venv/bin/python bench/control_flip.py [--flips 1000]
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

CLIENTS = 4


async def run(flips: int, run_dir: Path) -> dict[str, Any]:
    upstream, address = spawn_upstream()
    config = {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": address, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": address, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {"key": "flip", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 5000, "canary": 5000}},
        "control": control_section(),
        "server": {"log_level": "warning"},
    }  # fmt: skip
    sidecar = SidecarProcess(config, run_dir=run_dir).start()
    try:
        return await measure(flips, sidecar)
    finally:
        sidecar.stop()
        upstream.terminate()
        upstream.wait(5)


async def measure(flips: int, sidecar: SidecarProcess) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    infer = oip_grpc.GRPCInferenceServiceStub(grpc.aio.insecure_channel(sidecar.predict_address))
    control = cpb_grpc.ControlStub(grpc.aio.insecure_channel(sidecar.control_address))
    request = oip.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="x", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
        [5.1, 3.5, 1.4, 0.2]
    )
    records: list[tuple[float, float, str]] = []  # (start, end, variant)
    errors = 0
    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal errors
        i = 0
        while not stop.is_set():
            started = loop.time()
            try:
                call = infer.ModelInfer(request, metadata=(("x-user-id", f"c{n}-{i}"),), timeout=5)
                await call
                variant = dict(await call.trailing_metadata())["x-variant"]
                records.append((started, loop.time(), str(variant)))
            except grpc.aio.AioRpcError:
                errors += 1
            i += 1

    acks: list[float] = []
    ack_latency: list[float] = []

    async def operator() -> None:
        md = bearer(OPERATOR_TOKEN)
        await asyncio.sleep(0.5)  # warm up
        for k in range(flips):
            t0 = loop.time()
            await control.SetKillSwitch(
                cpb.SetKillSwitchRequest(reason=f"flip {k}", on=True), metadata=md
            )
            t1 = loop.time()
            acks.append(t1)
            ack_latency.append(t1 - t0)
            await asyncio.sleep(0.01)
            await control.SetKillSwitch(
                cpb.SetKillSwitchRequest(reason=f"unflip {k}", on=False), metadata=md
            )
            await asyncio.sleep(0.01)
        stop.set()

    wall = time.perf_counter()
    await asyncio.gather(operator(), *(client(n) for n in range(CLIENTS)))
    wall = time.perf_counter() - wall

    starts = np.array([r[0] for r in records])
    ends = np.array([r[1] for r in records])
    canary = np.array([r[2] == "canary" for r in records])
    order = np.argsort(starts)
    starts, ends, canary = starts[order], ends[order], canary[order]
    propagation, violations, canary_before = [], 0, 0
    for k, t_ack in enumerate(acks):
        t_next_on = acks[k + 1] if k + 1 < len(acks) else np.inf
        # requests started after this ack and before the kill switch was turned off again
        lo = np.searchsorted(starts, t_ack, side="right")
        window_end = t_ack + 0.009  # the operator turns it off 10 ms after the ack
        hi = np.searchsorted(starts, min(window_end, t_next_on), side="left")
        if hi > lo:
            violations += int(canary[lo:hi].sum())
            propagation.append(float(ends[lo:hi].min() - t_ack))
        before = np.searchsorted(starts, t_ack - 0.009, side="left")
        canary_before += int(canary[before:lo].sum())
    prop = np.array(propagation) * 1e3
    ack = np.array(ack_latency) * 1e3
    return {
        "flips": flips,
        "clients": CLIENTS,
        "requests": len(records),
        "request_errors": errors,
        "wall_seconds": wall,
        "canary_requests_shortly_before_acks": canary_before,
        "violations_canary_after_ack": violations,
        "flips_with_a_request_after_ack": len(propagation),
        "ack_to_first_stable_only_ms": {
            "p50": float(np.percentile(prop, 50)),
            "p99": float(np.percentile(prop, 99)),
            "max": float(prop.max()),
        },
        "write_ack_latency_ms": {
            "p50": float(np.percentile(ack, 50)),
            "p99": float(np.percentile(ack, 99)),
        },
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "grpc": grpc.__version__,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--flips", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="control-flip-") as tmp:
        result = asyncio.run(run(args.flips, Path(tmp)))
    prop, ack = result["ack_to_first_stable_only_ms"], result["write_ack_latency_ms"]
    lines = [
        f"kill switch flips under load ({result['clients']} clients, "
        f"{result['requests']} requests, {result['wall_seconds']:.1f}s)",
        f"  flips                                  {result['flips']}",
        f"  canary requests started after an ack   {result['violations_canary_after_ack']}"
        "  (must be 0)",
        f"  ack -> first stable-only request       p50 {prop['p50']:.2f} ms   "
        f"p99 {prop['p99']:.2f} ms   max {prop['max']:.2f} ms",
        f"  SetKillSwitch round trip (fsync incl.) p50 {ack['p50']:.2f} ms   "
        f"p99 {ack['p99']:.2f} ms",
    ]
    print("\n".join(lines))
    print(f"  request errors                         {result['request_errors']}")
    out = ROOT / "bench" / "results" / "control_flip.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if result["violations_canary_after_ack"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

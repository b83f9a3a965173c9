"""A canary's model server dies under load: how soon the fast path rolls it back, and how
many requests fail meanwhile.

Processes: two real MLServer servers (stable: classifier v1; canary: classifier v2, a
fresh one per run), the real `sidecar serve` (SQLite state: the rollback is fsynced
before it is in force; default `analysis`, so the judge looks every 60 s and the fast path
is the default >= 50% of >= 20 requests within 5 s) and this process, an open-loop client
(one request every 1/rate s, each its own task and user, so a slow answer never delays
the schedule) on the front door, 50/50 split. After a warm-up the canary's MLServer is
SIGKILLed (its whole process group); the client goes on until the rollback is in force
and a little after.

Per run:
- canary_death_to_rollback_s: from the first failed canary request (the client's clock
  when its failure came back) to the rollback's commit (its audit entry's time; one
  machine, one wall clock);
- kill_to_rollback_s: from the SIGKILL to the commit;
- failed_requests_after_canary_death: every failed request after the SIGKILL (by status
  and by the variant the sidecar names in `x-variant`);
- rate_rps: the request rate achieved over the run; the rollback's audit reason.

Prints a table and writes bench/results/canary_death.json.

    .venv/bin/python bench/canary_death.py [--runs 3] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip  # noqa: E402
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc  # noqa: E402
from sidecar._proto.sidecar.v1 import control_pb2 as cpb  # noqa: E402
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc  # noqa: E402
from sidecar.testing.credentials import VIEWER_TOKEN, bearer, control_section  # noqa: E402
from sidecar.testing.mlserver import (  # noqa: E402
    MLServerProcess,
    ModelSpec,
    write_model_repository,
)
from sidecar.testing.process import SidecarProcess  # noqa: E402

WARM_UP_S = 3.0  # healthy traffic before the kill
AFTER_S = 1.0  # traffic after the rollback is seen
GIVE_UP_S = 90.0  # no rollback by then: the run is reported as failed
FAST_ROLLBACK = {"enabled": True, "min_requests": 20, "failure_ratio": 0.5, "window": 5.0}


def sidecar_config(stable: str, canary: str) -> dict[str, Any]:
    def variant(address: str, version: str) -> dict[str, str]:
        return {"address": address, "model_name": "classifier", "model_version": version}

    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {"stable": variant(stable, "v1"), "canary": variant(canary, "v2")},
        "flag": {"key": "death", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 5000, "canary": 5000}},
        "control": control_section(),
        "server": {"log_level": "warning"},
        "analysis": {"fast_rollback": FAST_ROLLBACK},
    }  # fmt: skip


class Client:
    """Open loop at `rate` requests a second; `records` holds (start, end, outcome,
    variant) on the wall clock, outcome "OK" or the status name."""

    def __init__(self, address: str, rate: float) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = oip_grpc.GRPCInferenceServiceStub(self.channel)
        self.rate = rate
        self.records: list[tuple[float, float, str, str]] = []
        self.request = oip.ModelInferRequest(model_name="classifier")
        tensor = self.request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
        tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
        self._tasks: set[asyncio.Task[None]] = set()

    async def one(self, i: int) -> None:
        started = time.time()
        call = self.stub.ModelInfer(self.request, metadata=(("x-user-id", f"u{i}"),), timeout=5)
        try:
            await call
            outcome = "OK"
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
        trailers = dict(await call.trailing_metadata() or ())
        self.records.append((started, time.time(), outcome, str(trailers.get("x-variant", ""))))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        began, i = loop.time(), 0
        while not stop.is_set():
            task = asyncio.create_task(self.one(i))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1
            await asyncio.sleep(max(0.0, began + i / self.rate - loop.time()))
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close()


async def rollback_entry(control: cpb_grpc.ControlStub) -> cpb.AuditEntry | None:
    log = await control.GetAuditLog(
        cpb.GetAuditLogRequest(page_size=1000), metadata=bearer(VIEWER_TOKEN)
    )
    return next((e for e in log.entries if e.method == "Rollback"), None)


async def one_run(
    stable: MLServerProcess, repo: Path, rate: float, run_dir: Path
) -> dict[str, Any]:
    with MLServerProcess(repo, run_dir=run_dir / "canary") as canary:
        config = sidecar_config(stable.grpc_address, canary.grpc_address)
        with SidecarProcess(config, run_dir=run_dir / "sidecar") as sidecar:
            client = Client(sidecar.predict_address, rate)
            control = cpb_grpc.ControlStub(grpc.aio.insecure_channel(sidecar.control_address))
            stop = asyncio.Event()
            traffic = asyncio.create_task(client.run(stop))
            await asyncio.sleep(WARM_UP_S)
            killed = time.time()
            canary.kill()
            entry = None
            while entry is None and time.time() - killed < GIVE_UP_S:
                await asyncio.sleep(0.02)
                entry = await rollback_entry(control)
            await asyncio.sleep(AFTER_S)
            stop.set()
            await traffic
    return summarise(client.records, killed, entry, rate)


def summarise(
    records: list[tuple[float, float, str, str]],
    killed: float,
    entry: cpb.AuditEntry | None,
    rate: float,
) -> dict[str, Any]:
    first, last = min(r[0] for r in records), max(r[1] for r in records)
    before = [r for r in records if r[1] <= killed]
    after = [r for r in records if r[1] > killed]
    failed = [r for r in after if r[2] != "OK"]
    canary_failures = sorted(r[1] for r in failed if r[3] == "canary")
    out: dict[str, Any] = {
        "offered_rate_rps": rate,
        "rate_rps": len(records) / (last - first),
        "requests": len(records),
        "failed_before_canary_death": sum(r[2] != "OK" for r in before),
        "failed_requests_after_canary_death": len(failed),
        "failed_by_status": dict(Counter(r[2] for r in failed)),
        "failed_by_variant": dict(Counter(r[3] for r in failed)),
        "rolled_back": entry is not None,
    }
    if entry is None:
        return out
    out |= {
        "rollback_principal": entry.principal,
        "rollback_reason": entry.reason,
        "kill_to_rollback_s": entry.unix_time - killed,
        "canary_death_to_rollback_s": (
            entry.unix_time - canary_failures[0] if canary_failures else None
        ),
        "kill_to_first_canary_failure_s": canary_failures[0] - killed if canary_failures else None,
        "failed_after_rollback_commit": sum(r[1] > entry.unix_time for r in failed),
    }
    return out


async def run(runs: int, rate: float, tmp: Path) -> dict[str, Any]:
    repo = write_model_repository(
        tmp / "models",
        [ModelSpec("classifier", "v1", "logreg"), ModelSpec("classifier", "v2", "tree")],
    )
    results = []
    with MLServerProcess(repo, run_dir=tmp / "stable") as stable:
        for k in range(runs):
            results.append(await one_run(stable, repo, rate, tmp / f"run-{k}"))
            print(f"run {k + 1}/{runs}: {json.dumps(results[-1])}", flush=True)
    done = [r for r in results if r.get("canary_death_to_rollback_s") is not None]
    seconds = [r["canary_death_to_rollback_s"] for r in done]
    failed = [r["failed_requests_after_canary_death"] for r in results]
    return {
        "runs": results,
        "rolled_back_runs": len(done),
        "canary_death_to_rollback_s": {
            "median": statistics.median(seconds) if seconds else None,
            "max": max(seconds) if seconds else None,
        },
        "failed_requests_after_canary_death": {
            "median": statistics.median(failed),
            "max": max(failed),
        },
        "rate_rps": statistics.median(r["rate_rps"] for r in results),
        "settings": {
            "runs": runs,
            "offered_rate_rps": rate,
            "weights": {"stable": 5000, "canary": 5000},
            "warm_up_s": WARM_UP_S,
            "analysis.fast_rollback": FAST_ROLLBACK,
            "analysis.interval_s": 60.0,
            "state": "sqlite",
            "client": "one grpc.aio process, open loop, 5 s deadline",
        },
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    if not 1 <= args.runs <= 20 or not 1 <= args.rate <= 2000:
        parser.error("--runs must be 1..20 and --rate 1..2000")
    with tempfile.TemporaryDirectory(prefix="canary-death-") as tmp:
        result = asyncio.run(run(args.runs, args.rate, Path(tmp)))
    s, f = result["canary_death_to_rollback_s"], result["failed_requests_after_canary_death"]
    print(
        f"canary SIGKILLed under load ({result['rate_rps']:.0f} rps achieved, 50/50, "
        f"{result['rolled_back_runs']}/{len(result['runs'])} runs rolled back)\n"
        f"  first canary failure -> rollback commit   median {s['median']:.3f} s   "
        f"max {s['max']:.3f} s\n"
        f"  failed requests after the kill           median {f['median']}   max {f['max']}"
        if s["median"] is not None
        else "no run rolled back"
    )
    out = ROOT / "bench" / "results" / "canary_death.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if result["rolled_back_runs"] == len(result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())

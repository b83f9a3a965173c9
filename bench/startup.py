"""Start-up: how long `sidecar serve` takes from spawn to answering SERVING, and how much of
that is importing the server's modules.

Processes: a minimal model server (bench/upstream_server.py, started once), then `--runs`
times the real `sidecar serve` (subprocess, ports 0, memory state store, stable and canary
on that upstream). For each run, from the moment the process is spawned:
- bound: the `sidecar.started` log event (servers listening, ports known);
- serving: the first grpc.health.v1 Check of `inference.GRPCInferenceService` on the
  predict port that answers SERVING (what a Kubernetes readiness probe asks; it follows the
  stable variant's readiness), polled every 5 ms.
Then, in fresh interpreters: the time to import the server's modules (`sidecar.cli` and
`sidecar.wiring`, everything `serve` loads before it reads the configuration), against an
empty interpreter start, and the slowest imports by `python -X importtime`.

Prints a table and writes bench/results/startup.json. The goal is under 2 s to SERVING on
an idle machine; the figure is printed, never asserted.

    .venv/bin/python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _procstat import process_cpu_s  # noqa: E402
from upstream_server import spawn as spawn_upstream  # noqa: E402  (bench/, the script folder)

from sidecar.testing.credentials import control_section  # noqa: E402
from sidecar.testing.process import SidecarProcess  # noqa: E402

SERVICE = "inference.GRPCInferenceService"
GOAL_SECONDS = 2.0
SERVER_MODULES = "import sidecar.cli, sidecar.wiring"


def sidecar_config(upstream: str) -> dict[str, Any]:
    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "classifier",
        "variants": {
            "stable": {"address": upstream, "model_name": "classifier", "model_version": "v1"},
            "canary": {"address": upstream, "model_name": "classifier", "model_version": "v2"},
        },
        "flag": {"key": "startup", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 9000, "canary": 1000}},
        "control": control_section(),
        "state": {"backend": "memory"},
        "server": {"log_level": "warning"},
    }  # fmt: skip


def wait_serving(address: str, timeout: float) -> float:
    """Poll the health service every 5 ms until SERVING; the moment it answered so."""
    deadline = time.perf_counter() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.perf_counter() < deadline:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter()
            except grpc.RpcError:
                pass  # not listening yet, or the service is not registered yet
            time.sleep(0.005)
    raise TimeoutError(f"{address}: not SERVING within {timeout}s")


def one_start(config: dict[str, Any], run_dir: Path) -> dict[str, float]:
    sidecar = SidecarProcess(config, run_dir=run_dir)
    spawned = time.perf_counter()
    sidecar.start()  # returns at the `sidecar.started` event
    bound = time.perf_counter()
    try:
        serving = wait_serving(sidecar.predict_address, timeout=30)
        assert sidecar.pid is not None
        cpu = process_cpu_s(sidecar.pid)
    finally:
        sidecar.stop()
    return {
        "bound_seconds": bound - spawned,
        "serving_seconds": serving - spawned,
        # What the sidecar itself computed until SERVING: about the wall time on an idle
        # machine, whatever else shares the CPUs now.
        "cpu_seconds": cpu if cpu is not None else math.nan,
    }


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def timed_python(code: str) -> float:
    """Wall time of `python -c code` in a fresh interpreter (spawn to exit)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=clean_env())
    return time.perf_counter() - started


def slowest_imports(count: int = 8) -> list[tuple[str, float]]:
    """Packages by cumulative import time (`-X importtime`, seconds): each time a package is
    entered from outside itself, its cumulative time counts (it includes what that package
    imports in turn). The sidecar's own modules are left out (they hold everything)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", SERVER_MODULES],
        check=True, cwd=ROOT, env=clean_env(), capture_output=True, text=True,
    )  # fmt: skip
    entries: list[tuple[int, str, float]] = []  # (depth, module, cumulative seconds)
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        entries.append((depth, name.strip(), int(parts[1]) / 1e6))
    per_package: dict[str, float] = {}
    for i, (depth, module, cumulative) in enumerate(entries):
        top = module.split(".")[0]
        # -X importtime prints children before their parent: the parent is the next
        # entry with a smaller depth.
        parent = next((m for d, m, _ in entries[i + 1 :] if d < depth), None)
        if top not in ("sidecar", "clients") and (parent is None or parent.split(".")[0] != top):
            per_package[top] = per_package.get(top, 0.0) + cumulative
    return sorted(per_package.items(), key=lambda item: item[1], reverse=True)[:count]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values), "min": min(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="sidecar starts (default 7)")
    args = parser.parse_args()

    upstream, address = spawn_upstream()
    starts = []
    try:
        config = sidecar_config(address)
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as folder:
            for i in range(args.runs):
                starts.append(one_start(config, Path(folder) / f"run{i}"))
    finally:
        upstream.terminate()
        upstream.wait(5)

    empty = [timed_python("pass") for _ in range(5)]
    imports = [timed_python(SERVER_MODULES) for _ in range(5)]
    serving = summary([s["serving_seconds"] for s in starts])
    bound = summary([s["bound_seconds"] for s in starts])
    cpu = summary([s["cpu_seconds"] for s in starts])
    result = {
        "runs": args.runs,
        "spawn_to_serving_seconds": serving,
        "spawn_to_bound_seconds": bound,
        "sidecar_cpu_to_serving_seconds": cpu,
        "interpreter_start_seconds": summary(empty),
        "import_server_modules_seconds": summary(imports),
        "import_server_modules_net_seconds": statistics.median(imports) - statistics.median(empty),
        "slowest_imports_seconds": dict(slowest_imports()),
        "goal_seconds": GOAL_SECONDS,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    }

    print(f"sidecar start-up over {args.runs} runs (spawn -> ...), seconds")
    print(f"  {'':<34}{'median':>8}{'max':>8}")
    print(f"  {'listening (sidecar.started)':<34}{bound['median']:>8.3f}{bound['max']:>8.3f}")
    print(f"  {'grpc.health.v1 SERVING':<34}{serving['median']:>8.3f}{serving['max']:>8.3f}")
    print(f"  {'  sidecar CPU time by then':<34}{cpu['median']:>8.3f}{cpu['max']:>8.3f}")
    print(
        f"  {'import sidecar.cli + wiring':<34}{statistics.median(imports):>8.3f}"
        f"{max(imports):>8.3f}   (empty interpreter {statistics.median(empty):.3f})"
    )
    print("  slowest imports (cumulative):")
    for name, seconds in result["slowest_imports_seconds"].items():
        print(f"    {name:<30}{seconds:>8.3f}")
    verdict = "under" if serving["median"] < GOAL_SECONDS else "OVER"
    print(
        f"median spawn -> SERVING {serving['median']:.3f} s: {verdict} the {GOAL_SECONDS:g} s "
        f"goal (sidecar CPU by then {cpu['median']:.3f} s)"
    )
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs: the goal is for an "
        "idle machine; on a busy one the CPU time is the closer figure"
    )

    out = ROOT / "bench" / "results" / "startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

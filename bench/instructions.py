"""User-space instructions per request of a hop, counted by valgrind's callgrind.

The data-plane benchmark's CPU figures (bench/dataplane.py) move by 10-15% between runs of
the same code on this shared 2-core machine. Instruction counts do not: callgrind counts
every instruction the hop's process executes in user space (all threads: Python, gRPC,
the event loop; not the kernel's share, which is about the same for both hops), the same
for the same code and load whatever else the machine is doing. They are what this file
compares, side by side in one run: the bare pass-through (bench/passthrough.py) and the
sidecar with (c)'s configuration of bench/dataplane.py (stable/canary 9000/1000, drift on,
no shadow, nothing exported), each under callgrind, each sent the same requests.

For each hop: start it under `valgrind --tool=callgrind --instr-atstart=no`, wait until it
answers, send `--warmup` requests (16 in flight), switch instrumentation on
(`callgrind_control -i on`), send `--requests` requests (16 in flight, one load process on
its own CPU, the upstream bench/upstream_server.py uninstrumented), switch it off, dump,
and divide the instructions counted by the requests answered.

    .venv/bin/python bench/instructions.py [--requests 1500] [--warmup 500]

Prints the figures and writes bench/results/instructions.json. Takes 3-5 minutes (the
hops start slowly under valgrind). Needs valgrind (Debian's package); without it the run
is skipped and says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _load import LoadPool  # noqa: E402
from dataplane import (  # noqa: E402
    Proc,
    Procs,
    free_ports,
    request_bytes,
    sidecar_config,
    wait_ready,
)

PY = sys.executable
CONCURRENCY = 16


def _totals(files: list[str]) -> int:
    """Instructions counted in callgrind's dumps (the `totals:` line of each)."""
    total = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
    return total


def _callgrind(out: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]


def measure(
    proc: Proc, target: str, pool: LoadPool, out_prefix: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Instructions per request of one hop running under callgrind at `target`."""
    request = request_bytes()
    failure = wait_ready(pool, {proc.name: proc}, {proc.name: target}, request, args.start_timeout)
    if failure:
        return {"error": failure[proc.name]}
    pid = str(proc.popen.pid)
    pool.closed(
        target, request, CONCURRENCY, warmup_s=0.0, duration_s=600.0,
        max_requests=args.warmup, timeout=30.0,
    )  # fmt: skip
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True)
    run = pool.closed(
        target, request, CONCURRENCY, warmup_s=0.0, duration_s=600.0,
        max_requests=args.requests, timeout=30.0,
    )  # fmt: skip
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True)
    subprocess.run(["callgrind_control", "-d", pid], capture_output=True)
    instructions = _totals(sorted(glob.glob(f"{out_prefix}.*")))
    return {
        "requests": run.completed,
        "errors": run.errors,
        "instructions": instructions,
        "instructions_per_request": instructions / run.completed if run.completed else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(HERE / "results" / "instructions.json"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: valgrind is not installed (Debian: apt-get install valgrind); skipped")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    procs = Procs(tmp)
    cpus = os.sched_getaffinity(0)
    pool = LoadPool(1, cpus=[max(cpus)] if len(cpus) > 1 else None)
    results: dict[str, Any] = {}
    try:
        upstream = procs.start(
            "upstream",
            [PY, str(HERE / "upstream_server.py"), "--port", "0", "--delay-ms", "1"],
            cpus,
        )
        up = f"127.0.0.1:{procs.wait_port(upstream)}"
        predict, control = free_ports(2)
        config = tmp / "sidecar.yaml"
        config.write_text(yaml.safe_dump(sidecar_config(up, None, [predict, control])))
        passthrough = [str(HERE / "passthrough.py"), "--port", "0", "--upstream", up]
        hops = {
            "passthrough": [PY, *passthrough],
            "sidecar": [PY, "-m", "sidecar.cli", "serve", "--config", str(config)],
        }
        for name, argv in hops.items():
            prefix = str(tmp / f"{name}.callgrind")
            proc = procs.start(name, [*_callgrind(f"{prefix}.%p"), *argv], cpus)
            if name == "passthrough":
                port = procs.wait_port(proc, timeout=args.start_timeout)
            else:
                port = predict
            results[name] = measure(proc, f"127.0.0.1:{port}", pool, prefix, args)
            print(f"{name:12s} {json.dumps(results[name])}", flush=True)
    finally:
        pool.close()
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    per = {name: r.get("instructions_per_request") for name, r in results.items()}
    sidecar, bare = per.get("sidecar"), per.get("passthrough")
    ratio = sidecar / bare if sidecar and bare else None
    out = {
        "benchmark": "instructions",
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "instructions_per_request": per,
        "ratios": {"instructions_per_request_sidecar_over_passthrough": ratio},
        "runs": results,
        "parameters": {"requests": args.requests, "warmup": args.warmup, "in_flight": 16},
        "runtime_s": round(time.monotonic() - started, 1),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    shown = f"{ratio:.3f}" if ratio is not None else "n/a"
    print(f"instructions per request, sidecar over passthrough: {shown}")
    return 0 if ratio is not None else 1


if __name__ == "__main__":
    sys.exit(main())

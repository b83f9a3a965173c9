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
import contextlib
import glob
import json
import os
import shutil
import signal
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
from dataplane import free_ports, request_bytes, sidecar_config  # noqa: E402

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


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure(
    name: str, command: str, pool: LoadPool, port: int, out_dir: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Instructions per request of one hop started by `command` (listening on `port`)."""
    prefix = f"{out_dir}/{name}"
    valgrind = f"valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file={prefix}.%p.out"
    proc = subprocess.Popen(
        command.format(valgrind=valgrind),
        shell=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    target = f"127.0.0.1:{port}"
    request = request_bytes()
    try:
        deadline = time.monotonic() + args.start_timeout
        error = "not started"
        while time.monotonic() < deadline:
            error = pool.probe(target, request, timeout=5.0)
            if not error:
                break
            time.sleep(0.5)
        else:
            return {"error": f"{name} did not answer within {args.start_timeout} s: {error}"}
        pool.closed(
            target, request, CONCURRENCY, warmup_s=0.0, duration_s=600.0,
            max_requests=args.warmup, timeout=30.0,
        )  # fmt: skip
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True)
        run = pool.closed(
            target, request, CONCURRENCY, warmup_s=0.0, duration_s=600.0,
            max_requests=args.requests, timeout=30.0,
        )  # fmt: skip
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
    finally:
        _stop(proc)
    instructions = _totals(sorted(glob.glob(f"{prefix}.*.out*")))
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
    tmp = tempfile.mkdtemp(prefix="bench-instructions-")
    up_port, pass_port, predict_port, control_port = free_ports(4)
    upstream = subprocess.Popen(
        [PY, str(HERE / "upstream_server.py"), "--port", str(up_port), "--delay-ms", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    config = sidecar_config(f"127.0.0.1:{up_port}", None, [predict_port, control_port])
    config_path = Path(tmp) / "sidecar.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = "env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_TRACES_EXPORTER"
    hops = {
        "passthrough": (
            f"exec {{valgrind}} {PY} {HERE / 'passthrough.py'} --port {pass_port} "
            f"--upstream 127.0.0.1:{up_port}",
            pass_port,
        ),
        "sidecar": (
            f"cd {tmp} && exec {env} {{valgrind}} {PY} -m sidecar.cli serve --config {config_path}",
            predict_port,
        ),
    }
    pool = LoadPool(1, cpus=[1] if (os.cpu_count() or 1) > 1 else None)
    results: dict[str, Any] = {}
    try:
        for name, (command, port) in hops.items():
            results[name] = measure(name, command, pool, port, tmp, args)
            print(f"{name:12s} {json.dumps(results[name])}", flush=True)
    finally:
        pool.close()
        _stop(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    per = {name: r.get("instructions_per_request") for name, r in results.items()}
    ratio = per["sidecar"] / per["passthrough"] if per["sidecar"] and per["passthrough"] else None
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

"""Soak: memory stays flat once every cap is full.

A real `sidecar serve` (experiment with a bool metric and two declared segments, shadow
mirroring, drift monitoring; every cap small, so that each fills early) in front of the
bench upstream (`bench/upstream_server.py`). Several spawned client processes send
`Predict` with a new targeting key per request (segments a, b and none in turn; 64
different input rows) and a `ReportOutcome` for each answer. The parent samples the
sidecar's RSS (/proc/<pid>/status VmRSS) once a second together with the number of
requests answered so far.

Caps and when they are full (the sidecar's configuration below):
- outcome ledger: `experiment.max_requests` ids (LEDGER_CAP), full after that many requests;
- per-key counts of the experiment cap: `predict.max_tracked_keys` keys (LEDGER_CAP: one
  new key a request, so full after that many requests);
- drift: reference and window of DRIFT_WINDOW sampled requests (`sample_every` 10);
- shadow: KEEP_EXAMPLES examples and the latency outliers, full within seconds;
- sketches and variant windows: bounded by construction (buckets, the analysis horizon).
`rss_mib_at_caps_filled` is the RSS once twice the ledger's cap of requests were answered
(at least 20,000: four drift windows), `rss_mib_end` the RSS at the end (both: median of
the samples around that point), `rss_growth_after_caps_mib` their difference (goal <= 5).

Bounded in count (``--requests``, default 300,000) and time (``--max-seconds``, default
300 s of load): a slow or busy machine answers fewer requests, and `requests` says how
many (`load_average` gives the machine's 1-minute load at the start and the end).

The two override figures come from `bench/overrides.py` (`measure_override_writes`), when
it exists; otherwise they are null and `override_figures_note` says why.

``--tracemalloc`` (a debug run, slower): the sidecar runs under tracemalloc and dumps a
snapshot when the caps are full and at the end; the largest growths between the two
(by line) are printed and stored as `tracemalloc_top_growth`.

Usage::

    .venv/bin/python bench/soak.py                      # writes bench/results/soak.json
    .venv/bin/python bench/soak.py --requests 60000 --tracemalloc --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from upstream_server import spawn as spawn_upstream

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "soak.json"
LEDGER_CAP = 10_000
DRIFT_WINDOW = 500
KEEP_EXAMPLES = 5
# Requests answered when every cap is full: twice the ledger's, and enough for several
# drift windows (DRIFT_WINDOW sampled requests, one in 10 sampled).
CAPS_FILLED_AT_LEAST = 4 * 10 * DRIFT_WINDOW
SEGMENTS = ("a", "b", "")
PREDICT = "/sidecar.v1.Predict/Predict"
REPORT = "/sidecar.v1.Predict/ReportOutcome"
RSS_GOAL_MIB = 5.0
TOKEN_SHA256 = "ca5a8c47549ab82ffc5ec4a1c6ccbc49aa442a359d2a37a5e58c55ba04a0e2e0"
TRACE_SIGNAL = signal.SIGUSR1


def sidecar_config(upstream: str, ledger_cap: int = LEDGER_CAP) -> dict[str, Any]:
    def variant(version: str) -> dict[str, str]:
        return {"address": upstream, "model_name": "soak", "model_version": version}

    return {
        "listen": {"predict": "127.0.0.1:0", "control": "127.0.0.1:0"},
        "model": "soak",
        "variants": {"stable": variant("v1"), "canary": variant("v2"), "shadow": variant("v3")},
        "flag": {
            "key": "soak",
            "stable": "stable",
            "canary": "canary",
            "weights": {"stable": 5000, "canary": 5000},
            "segments": ["a", "b"],
        },
        "shadow": {"variant": "shadow", "sample_bp": 1000, "keep_examples": KEEP_EXAMPLES},
        "server": {"log_level": "info"},
        "control": {"auth": {"tokens": [
            {"name": "soak", "role": "operator", "token_sha256": TOKEN_SHA256},
        ]}},
        "state": {"backend": "memory"},
        "predict": {"max_tracked_keys": ledger_cap},
        "analysis": {"interval": 5},
        "experiment": {
            "metrics": [
                {"name": "converted", "kind": "bool", "minimum_effect": 0.01, "baseline": 0.1},
            ],
            "segments": ["a", "b"],
            "look_interval": 2,
            "max_requests": ledger_cap,
            "ttl_seconds": 3600,
        },
        "drift": {
            "enabled": True,
            "sample_every": 10,
            "reference_size": DRIFT_WINDOW,
            "window_size": DRIFT_WINDOW,
            "reservoir_size": 200,
            "min_current": 100,
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- clients


def _client(
    worker: int, target: str, count: int, concurrency: int, deadline: float, done: Any
) -> None:
    """Send `count` Predict + ReportOutcome pairs (unique targeting keys) until `deadline`
    (time.monotonic); add the answered requests to `done` every 200."""
    import asyncio
    import random

    import grpc
    import uvloop

    from sidecar._proto.sidecar.v1 import predict_pb2 as pb

    rows = [
        pb.PredictRequest(
            inference=pb.InferRequest(
                inputs=[
                    pb.InferRequest.InputTensor(
                        name="input-0",
                        datatype="FP64",
                        shape=[1, 4],
                        contents=pb.InferTensorContents(
                            fp64_contents=[random.gauss(i % 4, 1.0) for i in range(4)]
                        ),
                    )
                ]
            )
        ).SerializeToString()
        for _ in range(64)
    ]

    def identity(data: bytes) -> bytes:
        return data

    async def run() -> tuple[int, dict[str, int]]:
        channel = grpc.aio.insecure_channel(target)
        predict = channel.unary_unary(
            PREDICT, request_serializer=identity, response_deserializer=identity
        )
        report = channel.unary_unary(
            REPORT, request_serializer=identity, response_deserializer=identity
        )
        errors: dict[str, int] = {}
        answered = [0, 0]  # total, not yet added to `done`
        next_n = [0]

        async def loop() -> None:
            while time.monotonic() < deadline:
                n = next_n[0]
                if n >= count:
                    return
                next_n[0] += 1
                context = pb.RoutingContext(
                    targeting_key=f"w{worker}-u{n}", segment=SEGMENTS[n % len(SEGMENTS)]
                )
                request = pb.PredictRequest(context=context).SerializeToString() + rows[n % 64]
                try:
                    raw = await predict(request, timeout=10.0)
                    rid = pb.PredictResponse.FromString(raw).request_id
                    outcome = pb.ReportOutcomeRequest(
                        request_id=rid, metric="converted", bool_value=random.random() < 0.1
                    )
                    await report(outcome.SerializeToString(), timeout=10.0)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    continue
                answered[0] += 1
                answered[1] += 1
                if answered[1] >= 200:
                    with done.get_lock():
                        done.value += answered[1]
                    answered[1] = 0

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        with done.get_lock():
            done.value += answered[1]
        await channel.close()
        return answered[0], errors

    answered, errors = uvloop.run(run())
    print(json.dumps({"worker": worker, "answered": answered, "errors": errors}), flush=True)


# --------------------------------------------------------------------------- processes


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_sidecar(run_dir: Path, traced: bool) -> tuple[subprocess.Popen[str], str]:
    """`sidecar serve` (under tracemalloc when `traced`); the predict address."""
    command = [sys.executable, "-m", "sidecar.cli", "serve", "--config", "sidecar.yaml"]
    if traced:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-traced", str(run_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(SIDECAR_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        command, cwd=run_dir, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + (180 if traced else 60)
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "sidecar.started":
            _drain(proc)
            return proc, str(event["predict"])
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"sidecar did not start (exit {proc.poll()})")


def _drain(proc: subprocess.Popen[str]) -> None:
    """Read the sidecar's log in the background so that it never blocks on a full pipe."""
    import threading

    def read() -> None:
        assert proc.stdout is not None
        for _ in proc.stdout:
            pass

    threading.Thread(target=read, daemon=True).start()


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve_traced(run_dir: Path) -> int:
    """The sidecar under tracemalloc; SIGUSR1 dumps a snapshot to run_dir/trace-<n>.bin."""
    import tracemalloc

    tracemalloc.start(8)
    dumps = [0]

    def dump(signum: int, frame: Any) -> None:
        dumps[0] += 1
        tracemalloc.take_snapshot().dump(str(run_dir / f"trace-{dumps[0]}.bin"))
        (run_dir / f"trace-{dumps[0]}.done").touch()

    signal.signal(TRACE_SIGNAL, dump)
    from sidecar.cli import main

    return main(["serve", "--config", str(run_dir / "sidecar.yaml")])


def take_trace(proc: subprocess.Popen[str], run_dir: Path, n: int) -> Path:
    os.kill(proc.pid, TRACE_SIGNAL)
    deadline = time.monotonic() + 120
    while not (run_dir / f"trace-{n}.done").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("no tracemalloc snapshot within 120 s")
        time.sleep(0.2)
    return run_dir / f"trace-{n}.bin"


def top_growth(first: Path, second: Path, limit: int = 12) -> list[dict[str, Any]]:
    import tracemalloc

    before = tracemalloc.Snapshot.load(str(first))
    after = tracemalloc.Snapshot.load(str(second))
    stats = after.compare_to(before, "traceback")
    out = []
    for stat in stats[:limit]:
        frames = [f"{f.filename.replace(str(ROOT) + '/', '')}:{f.lineno}" for f in stat.traceback]
        out.append(
            {
                "growth_kib": round(stat.size_diff / 1024, 1),
                "size_kib": round(stat.size / 1024, 1),
                "count_diff": stat.count_diff,
                "where": frames[-4:],
            }
        )
    return out


# --------------------------------------------------------------------------- the run


def median_rss_near(samples: list[tuple[float, int, float]], requests: int) -> float:
    """Median RSS of the three samples closest to `requests` answered."""
    nearest = sorted(samples, key=lambda s: abs(s[1] - requests))[:3]
    return statistics.median(s[2] for s in nearest)


def override_figures() -> tuple[dict[str, Any], str]:
    keys = ("override_write_ms_p99_at_100k", "predict_stall_ms_max_during_writes_at_100k")
    try:
        sys.path.insert(0, str(BENCH_DIR))
        from overrides import measure_override_writes  # type: ignore[import-not-found]
    except ImportError as exc:
        return dict.fromkeys(keys), f"bench/overrides.py not available ({exc}); not measured"
    try:
        figures = measure_override_writes()
    except Exception as exc:  # a benchmark error is reported, not raised
        return dict.fromkeys(keys), f"measure_override_writes failed: {exc!r}"
    return {k: figures.get(k) for k in keys}, "from bench/overrides.py measure_override_writes()"


def run(args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
    upstream, upstream_address = spawn_upstream()
    sidecar = None
    try:
        config = sidecar_config(upstream_address, args.ledger_cap)
        (run_dir / "sidecar.yaml").write_text(yaml.safe_dump(config))
        sidecar, target = start_sidecar(run_dir, args.tracemalloc)
        load_start = os.getloadavg()[0]
        caps_filled_at = max(2 * args.ledger_cap, CAPS_FILLED_AT_LEAST)
        ctx = mp.get_context("spawn")
        done = ctx.Value("q", 0)
        t0 = time.monotonic()
        deadline = t0 + args.max_seconds
        per_worker = -(-args.requests // args.clients)
        workers = [
            ctx.Process(
                target=_client, args=(w, target, per_worker, args.concurrency, deadline, done)
            )
            for w in range(args.clients)
        ]
        for w in workers:
            w.start()
        samples: list[tuple[float, int, float]] = []  # (seconds, requests, rss MiB)
        traces: list[Path] = []
        while any(w.is_alive() for w in workers):
            samples.append((time.monotonic() - t0, done.value, rss_mib(sidecar.pid)))
            if args.tracemalloc and not traces and done.value >= caps_filled_at:
                traces.append(take_trace(sidecar, run_dir, 1))
            time.sleep(1.0)
        for w in workers:
            w.join()
        if any(w.exitcode != 0 for w in workers):
            raise RuntimeError(f"a client failed: exit codes {[w.exitcode for w in workers]}")
        elapsed = time.monotonic() - t0
        samples.append((elapsed, done.value, rss_mib(sidecar.pid)))
        if args.tracemalloc and traces:
            traces.append(take_trace(sidecar, run_dir, 2))
        requests = int(done.value)
        result: dict[str, Any] = {
            "requests": requests,
            "outcomes_reported": requests,
            "seconds": round(elapsed, 1),
            "requests_per_second": round(requests / elapsed, 1),
            "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "clients": args.clients,
            "concurrency_per_client": args.concurrency,
            "caps": {
                "ledger_ids": args.ledger_cap,
                "drift_reference_and_window": DRIFT_WINDOW,
                "shadow_examples": KEEP_EXAMPLES,
                "caps_filled_at_requests": caps_filled_at,
            },
            "rss_mib_start": round(samples[0][2], 1),
            "rss_mib_at_caps_filled": None,
            "rss_mib_end": round(statistics.median(s[2] for s in samples[-3:]), 1),
            "rss_growth_after_caps_mib": None,
            "rss_goal_mib": RSS_GOAL_MIB,
            "rss_samples": [
                {"s": round(s[0], 1), "requests": s[1], "rss_mib": round(s[2], 1)}
                for s in samples[:: max(1, len(samples) // 40)]
            ],
        }
        if requests >= 2 * caps_filled_at:
            at_caps = median_rss_near(samples, caps_filled_at)
            result["rss_mib_at_caps_filled"] = round(at_caps, 1)
            result["rss_growth_after_caps_mib"] = round(result["rss_mib_end"] - at_caps, 1)
        else:
            result["note"] = f"fewer than {2 * caps_filled_at} requests: no growth figure"
        if len(traces) == 2:
            result["tracemalloc_top_growth"] = top_growth(*traces)
        return result
    finally:
        if sidecar is not None:
            stop(sidecar)
        stop(upstream)
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ledger-cap", type=int, default=LEDGER_CAP)
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve-traced", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_traced:
        return serve_traced(args.serve_traced)
    result = run(args)
    figures, note = override_figures()
    result.update(figures)
    result["override_figures_note"] = note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    growth = result["rss_growth_after_caps_mib"]
    print(
        f"soak: {result['requests']} requests + outcomes in {result['seconds']} s "
        f"({result['requests_per_second']}/s); RSS {result['rss_mib_start']} MiB at start, "
        f"{result['rss_mib_at_caps_filled']} MiB when the caps were full, "
        f"{result['rss_mib_end']} MiB at the end: growth after the caps {growth} MiB "
        f"(goal <= {RSS_GOAL_MIB}) -> {args.out}"
    )
    for row in result.get("tracemalloc_top_growth", []):
        where = " < ".join(row["where"][::-1])
        print(f"  {row['growth_kib']:>10} KiB  {row['count_diff']:>8}  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

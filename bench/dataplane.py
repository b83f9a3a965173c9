"""Data-plane benchmark: what the sidecar's hop costs, against the floor for any Python hop.

Scenarios, each served by its own process(es), measured side by side in one run:

  (a) direct         the load generator calls the bench upstream directly
  (b) passthrough    a bare bytes-passthrough grpc.aio hop (bench/passthrough.py)
  (c) sidecar        ``sidecar serve`` routing between two variants (stable 9000 / canary 1000)
  (d) shadow-slow    (c) + every request mirrored to a shadow 10x slower than the primary
  (e) shadow-dead    (c) + every request mirrored to a shadow that never answers
  (f) shadow-fast    (c) + every request mirrored to a shadow as fast as the primary
  (g) shadow-10pct   (c) + one request in ten mirrored to that fast shadow

Closed loop at 1 and 16 requests in flight (rps, p50, p99), then open loop at a fixed
offered rate of half of (c)'s measured closed-loop capacity, latency from each request's
scheduled start (p50, p99); (f) and (g) run open loop only. (d)/(f) is the cost of the
shadow's slowness alone (same sampling, same mirroring work), (g)/(c) the cost of mirroring
a 10% sample. Then the start-up: `sidecar serve` spawned alone, to grpc.health.v1 SERVING.
Scenarios are interleaved and repeated; throughput is the median over repetitions, latency
percentiles are computed over the pooled samples. Prints a table and writes
bench/results/dataplane.json.

Run: ``.venv/bin/python bench/dataplane.py`` (``make bench``); ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from _load import LoadPool, RunResult  # noqa: E402
from _procstat import CpuDelta, CpuMeter, PeakSampler  # noqa: E402

from sidecar._proto.inference import grpc_predict_v2_pb2 as pb  # noqa: E402  (protobuf only)

DIRECT, PASSTHROUGH, SIDECAR, SHADOW_SLOW, SHADOW_DEAD = "a", "b", "c", "d", "e"
SHADOW_FAST, SHADOW_10PCT = "f", "g"
SCENARIOS: dict[str, str] = {
    DIRECT: "(a) direct",
    PASSTHROUGH: "(b) passthrough",
    SIDECAR: "(c) sidecar",
    SHADOW_SLOW: "(d) shadow 10x slow",
    SHADOW_DEAD: "(e) shadow dead",
    SHADOW_FAST: "(f) shadow fast",
    SHADOW_10PCT: "(g) shadow 10% fast",
}
SIDECAR_SCENARIOS = (SIDECAR, SHADOW_SLOW, SHADOW_DEAD, SHADOW_FAST, SHADOW_10PCT)
CLOSED_SIDECAR_SCENARIOS = (SIDECAR, SHADOW_SLOW, SHADOW_DEAD)  # closed loop as before
OPEN_SCENARIOS = (PASSTHROUGH, SIDECAR, SHADOW_SLOW, SHADOW_DEAD, SHADOW_FAST, SHADOW_10PCT)
# basis points of requests mirrored, per scenario with a shadow
SHADOW_SAMPLE_BP = {
    SHADOW_SLOW: 10_000,
    SHADOW_DEAD: 10_000,
    SHADOW_FAST: 10_000,
    SHADOW_10PCT: 1000,
}
STARTUP_RUNS = 3
# Servers run without OTEL_* variables: no trace export to a collector that is not there.
CHILD_ENV = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
FOREIGN_WARN_CORES = 0.15  # other processes' CPU during a run above which we say so
RETRY_FOREIGN_CORES = 0.10  # ... above which the run is repeated (within the budget)
RETRY_PEAK_CORES = 0.50  # ... or in any 0.25 s of the run
DISTURBED_OK_SHARE = 0.10  # above this share of disturbed runs kept, the run is flagged
QUIET_FOREIGN_CORES = 0.10  # "quiet" when waiting before a repeated run
QUIET_WAIT_S = 10.0  # longest wait for a quiet moment before one repeated run
RUN_OVERHEAD_S = 0.4  # per run, beyond warm-up and window: start, pipes, call counts

TARGETS: dict[str, tuple[str, float, str]] = {
    # ratio name -> (comparison, limit, meaning); the goals of issue #12
    "throughput_sidecar_over_passthrough_16": (">=", 0.90, "(c)/(b) rps at 16 in flight"),
    "hop_cpu_per_request_sidecar_over_passthrough_16": (
        "<=",
        1.15,
        "(c)/(b) hop CPU per request at 16 in flight",
    ),
    "added_p50_sidecar_over_passthrough_1": (
        "<=",
        1.10,
        "(c)-(a) p50 over (b)-(a) p50 at 1 in flight",
    ),
    "open_loop_p99_shadow_slow_over_shadow_fast": (
        "<=",
        1.10,
        "open-loop p99 (d)/(f): the shadow's slowness alone",
    ),
    "open_loop_p99_shadow_10pct_over_sidecar": (
        "<=",
        1.15,
        "open-loop p99 (g)/(c): mirroring 10%",
    ),
    "open_loop_p99_shadow_dead_over_sidecar": ("<=", 1.15, "open-loop p99 (e)/(c)"),
}


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Procs:
    """Server processes, each in its own session (process group), always stopped at exit."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], cpus: set[int]) -> Proc:
        log = self._workdir / f"{name}.log"
        own = os.sched_getaffinity(0)
        # The child inherits the affinity of the thread that forks it (and so do all of its
        # threads and children), so set it on ourselves around the fork.
        os.sched_setaffinity(0, cpus)
        try:
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    argv,
                    env=CHILD_ENV,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    start_new_session=True,
                )
        finally:
            os.sched_setaffinity(0, own)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def wait_port(self, proc: Proc, timeout: float = 30.0) -> int:
        """The port a bench server prints as its first line (``PORT n``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = proc.log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("PORT "):
                    return int(line.split()[1])
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"{proc.name} printed no port in {timeout:.0f} s")

    def stop_all(self) -> None:
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Kill whatever is left in the group, the leader included.
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=2.0)


def _signal_group(proc: Proc, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.popen.pid, sig)


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports on 127.0.0.1 (all held open until all are chosen, so that the
    kernel cannot hand out the same one twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def sidecar_config(
    upstream: str, shadow: str | None, ports: list[int], sample_bp: int = 10_000
) -> dict[str, Any]:
    """The sidecar's configuration; `ports` = [predict, control]."""
    variants: dict[str, Any] = {
        "stable": {"address": upstream, "model_name": "classifier", "model_version": "v1"},
        "canary": {"address": upstream, "model_name": "classifier", "model_version": "v2"},
    }
    config: dict[str, Any] = {
        "listen": {
            "predict": f"127.0.0.1:{ports[0]}",
            "control": f"127.0.0.1:{ports[1]}",
        },
        "model": "classifier",
        "variants": variants,
        "flag": {
            "key": "classifier-rollout",
            "stable": "stable",
            "canary": "canary",
            "default": "stable",
            "weights": {"stable": 9000, "canary": 1000},
            "kill_switch": False,
        },
        # Control needs a credential; the bench never calls it, so a random one's hash.
        "control": {
            "auth": {
                "tokens": [
                    {
                        "name": "bench",
                        "role": "viewer",
                        "token_sha256": hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
                    }
                ]
            }
        },
        "state": {"backend": "memory"},
        "upstream": {"default_deadline": 5.0, "max_deadline": 30.0, "connect_timeout": 10.0},
        "server": {"log_level": "warning", "log_requests": False, "shutdown_grace": 1.0},
    }
    if shadow is not None:
        variants["shadow"] = {
            "address": shadow,
            "model_name": "classifier",
            "model_version": "shadow",
        }
        config["shadow"] = {
            "variant": "shadow",
            "sample_bp": sample_bp,
            "max_in_flight": 64,
            "deadline": 1.0,
            "comparator": "auto",
        }
    return config


def request_bytes() -> bytes:
    request = pb.ModelInferRequest(
        model_name="classifier",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input-0",
                datatype="FP64",
                shape=[1, 4],
                contents=pb.InferTensorContents(fp64_contents=[5.1, 3.5, 1.4, 0.2]),
            )
        ],
    )
    return bytes(request.SerializeToString())


# --------------------------------------------------------------------------- statistics


def pct_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q) * 1000.0) if values else None


def median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    lat = [x for r in runs for x in r.latencies]
    lags = [x for r in runs for x in r.send_lags]
    errors: dict[str, int] = {}
    versions: dict[str, int] = {}
    for r in runs:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
        for k, v in r.versions.items():
            versions[k] = versions.get(k, 0) + v
    cpu: dict[str, float | None] = {
        key: median([x for r in runs if (x := r.cpu.get(key)) is not None])
        for key in (
            "hop_ms_per_req",
            "upstream_ms_per_req",
            "shadow_upstream_ms_per_req",
            "load_ms_per_req",
            "foreign_cores",
            "steal_cores",
        )
    }
    cpu["foreign_cores_max"] = max((r.cpu.get("foreign_cores") or 0.0 for r in runs), default=0.0)
    out: dict[str, Any] = {
        "rps": median([r.rps for r in runs]),
        "p50_ms": pct_ms(lat, 50),
        "p99_ms": pct_ms(lat, 99),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "requests": sum(r.completed for r in runs),
        "reps": len(runs),
        "rps_reps": [round(r.rps, 1) for r in runs],
        "p50_ms_reps": [pct_ms(r.latencies, 50) for r in runs],
        "p99_ms_reps": [pct_ms(r.latencies, 99) for r in runs],
        "sampled_model_versions": versions,
        "cpu": cpu,
        "foreign_cores_reps": [round(r.cpu.get("foreign_cores") or 0.0, 2) for r in runs],
        "foreign_peak_cores_reps": [round(r.cpu.get("foreign_peak_cores") or 0.0, 2) for r in runs],
        "disturbed_reps": sum(1 for r in runs if disturbed(r)),
    }
    if runs and runs[0].mode == "open":
        out["offered_rps"] = runs[0].rate
        out["achieved_send_rps"] = median([r.send_rate for r in runs])
        out["send_lag_p50_ms"] = pct_ms(lags, 50)
        out["send_lag_p99_ms"] = pct_ms(lags, 99)
    return out


def print_cpu(closed: dict[str, Any]) -> None:
    print("\nCPU per request at 16 in flight (ms, median of reps):")
    print(f"  {'scenario':<22}{'hop':>8}{'upstream':>10}{'shadow up':>11}{'load gen':>10}")
    for key, s in closed.items():
        scen, conc = key.split("@")
        if conc != "16":
            continue
        c = s["cpu"]
        print(
            f"  {SCENARIOS[scen]:<22}{fmt(c['hop_ms_per_req'], '.3f'):>8}"
            f"{fmt(c['upstream_ms_per_req'], '.3f'):>10}"
            f"{fmt(c['shadow_upstream_ms_per_req'], '.3f'):>11}"
            f"{fmt(c['load_ms_per_req'], '.3f'):>10}"
        )


def disturbed(r: RunResult) -> bool:
    """Whether other processes used enough CPU during a run to make it worth repeating."""
    return (r.cpu.get("foreign_cores") or 0.0) > RETRY_FOREIGN_CORES or (
        r.cpu.get("foreign_peak_cores") or 0.0
    ) > RETRY_PEAK_CORES


def safe_div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def hop_cpu(table: dict[str, Any], key: str) -> float | None:
    entry = table.get(key)
    return None if entry is None else entry["cpu"].get("hop_ms_per_req")


def compute_ratios(closed: dict[str, Any], open_: dict[str, Any]) -> dict[str, float | None]:
    def get(table: dict[str, Any], key: str, field: str) -> float | None:
        entry = table.get(key)
        return None if entry is None else entry.get(field)

    a1, b1, c1 = (get(closed, f"{s}@1", "p50_ms") for s in (DIRECT, PASSTHROUGH, SIDECAR))
    added_b = None if a1 is None or b1 is None else b1 - a1
    added_c = None if a1 is None or c1 is None else c1 - a1
    return {
        "throughput_sidecar_over_passthrough_16": safe_div(
            get(closed, f"{SIDECAR}@16", "rps"), get(closed, f"{PASSTHROUGH}@16", "rps")
        ),
        "added_p50_sidecar_over_passthrough_1": safe_div(added_c, added_b),
        "open_loop_p99_shadow_slow_over_shadow_fast": safe_div(
            get(open_, SHADOW_SLOW, "p99_ms"), get(open_, SHADOW_FAST, "p99_ms")
        ),
        "open_loop_p99_shadow_10pct_over_sidecar": safe_div(
            get(open_, SHADOW_10PCT, "p99_ms"), get(open_, SIDECAR, "p99_ms")
        ),
        "open_loop_p99_shadow_dead_over_sidecar": safe_div(
            get(open_, SHADOW_DEAD, "p99_ms"), get(open_, SIDECAR, "p99_ms")
        ),
        # informative: slowness and mirroring together, as reported before issue #12
        "open_loop_p99_shadow_slow_over_sidecar": safe_div(
            get(open_, SHADOW_SLOW, "p99_ms"), get(open_, SIDECAR, "p99_ms")
        ),
        "added_p50_ms_passthrough_1": added_b,
        "added_p50_ms_sidecar_1": added_c,
        # Informative, not a target: hop CPU per request, (c) over (b), at 16 in flight. Its
        # inverse is the throughput ratio a deployment bound by the hop's own CPU would see.
        "hop_cpu_per_request_sidecar_over_passthrough_16": safe_div(
            hop_cpu(closed, f"{SIDECAR}@16"), hop_cpu(closed, f"{PASSTHROUGH}@16")
        ),
    }


def judge(ratios: dict[str, float | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (op, limit, meaning) in TARGETS.items():
        value = ratios.get(name)
        met = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out[name] = {"target": f"{op} {limit}", "value": value, "met": met, "meaning": meaning}
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(closed: dict[str, Any], open_: dict[str, Any], verdicts: dict[str, Any]) -> None:
    head = (
        f"{'scenario':<22}{'loop':<7}{'load':>10}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for key, s in closed.items():
        scen, c = key.split("@")
        flag = " !" if s["errors"] else ""
        print(
            f"{SCENARIOS[scen]:<22}{'closed':<7}{c + ' infl':>10}{fmt(s['rps'], '.0f'):>9}"
            f"{fmt(s['p50_ms']):>9}{fmt(s['p99_ms']):>9}{s['errors']:>8}{flag}"
        )
    for scen, s in open_.items():
        flag = " !" if s["errors"] else ""
        print(
            f"{SCENARIOS[scen]:<22}{'open':<7}{fmt(s['offered_rps'], '.0f') + '/s':>10}"
            f"{fmt(s['rps'], '.0f'):>9}{fmt(s['p50_ms']):>9}{fmt(s['p99_ms']):>9}"
            f"{s['errors']:>8}{flag}"
        )
    if open_:
        print("open loop: rps = completed/s; latency from scheduled start; generator send lag:")
        for scen, s in open_.items():
            print(
                f"  {SCENARIOS[scen]:<20} sent {fmt(s['achieved_send_rps'], '.0f')}/s of "
                f"{fmt(s['offered_rps'], '.0f')}/s, send lag p50 {fmt(s['send_lag_p50_ms'])} ms,"
                f" p99 {fmt(s['send_lag_p99_ms'])} ms"
            )
    print("\nratios (this run)                            value   target   verdict")
    for name, v in verdicts.items():
        verdict = "skipped" if v["met"] is None else ("met" if v["met"] else "NOT MET")
        print(f"  {name:<42}{fmt(v['value'], '.3f'):>7}  {v['target']:>7}   {verdict}")


# --------------------------------------------------------------------------- the run

# Where each role runs: the first CPU we may use, the others, or all (see --layout).
# Roles: hop = the hop under test (passthrough or sidecar); upstream = the primary model
# server (stable and canary); shadow = the shadow model servers; load = the load generator.
LAYOUTS: dict[str, dict[str, str]] = {
    "split": {"hop": "first", "upstream": "first", "shadow": "rest", "load": "rest"},
    "servers": {"hop": "first", "upstream": "first", "shadow": "first", "load": "rest"},
    "hop-alone": {"hop": "first", "upstream": "rest", "shadow": "rest", "load": "rest"},
    "none": {"hop": "all", "upstream": "all", "shadow": "all", "load": "all"},
}
LAYOUT_HELP = (
    "CPU pinning. split (default): the hop under test and the primary upstream on the first "
    "CPU, the load generator and the shadow upstreams on the others, so that the hop's CPU "
    "carries what every scenario needs and the shadow model server, a service of its own, "
    "does not compete with the sidecar; servers: the hop and every upstream on the first CPU, "
    "load generator on the others; hop-alone: the hop alone on the first CPU; none: no pinning"
)


def layout_cpus(layout: str) -> dict[str, set[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        layout = "none"
    pick = {"first": set(cpus[:1]), "rest": set(cpus[1:]), "all": set(cpus)}
    return {role: pick[where] for role, where in LAYOUTS[layout].items()}


@dataclass
class Settings:
    reps: int
    open_reps: int
    duration_s: float
    open_duration_s: float
    warmup_s: float
    delay_ms: float
    shadow_delay_ms: float
    workers: int
    timeout_s: float
    max_requests: int
    max_retries: int
    budget_s: float
    layout: str
    sidecar_cmd: str
    drift: bool = True


def wait_ready(
    pool: LoadPool, procs: dict[str, Proc], targets: dict[str, str], req: bytes, timeout: float
) -> dict[str, str]:
    """Probe every target with ModelInfer until it answers; returns name -> failure reason."""
    pending = dict(targets)
    failures: dict[str, str] = {}
    last: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, target in list(pending.items()):
            proc = procs[name]
            if not proc.alive():
                failures[name] = f"exited with {proc.popen.returncode}:\n{proc.log_tail()}"
                del pending[name]
                continue
            err = pool.probe(target, req, timeout=0.5)
            if not err:
                del pending[name]
            else:
                last[name] = err
        if pending:
            time.sleep(0.1)
    for name in pending:
        failures[name] = (
            f"not answering after {timeout:.0f} s (last: {last.get(name)}):\n"
            f"{procs[name].log_tail()}"
        )
    return failures


class Bench:
    """Starts every server, measures, and always stops what it started."""

    def __init__(self, cfg: Settings, workdir: Path) -> None:
        self.cfg = cfg
        self.cpus = layout_cpus(cfg.layout)
        os.sched_setaffinity(0, self.cpus["load"])  # this process only waits on pipes
        self.procs = Procs(workdir)
        self.workdir = workdir
        self.req = request_bytes()
        self.pool: LoadPool | None = None
        self.targets: dict[str, str] = {}
        self.by_scenario: dict[str, Proc] = {}
        self.shadow_addr: dict[str, str] = {}
        self.upstream_addr = ""
        self.meter = CpuMeter({})
        self.retries = 0
        self.t_begin = time.monotonic()
        self.planned_s = 0.0  # wall time of the runs still planned
        # Calls the upstreams received during each sidecar scenario's runs, per request.
        self.upstream_calls = {
            s: {"requests": 0, "primary": 0, "shadow": 0} for s in SIDECAR_SCENARIOS
        }

    def start(self) -> dict[str, str]:
        """Start everything; returns scenario -> reason for those that did not start."""
        cfg, py = self.cfg, sys.executable
        hop, up, sh = self.cpus["hop"], self.cpus["upstream"], self.cpus["shadow"]
        # Spawned first, so that they import grpc while the servers start.
        self.pool = LoadPool(cfg.workers, sorted(self.cpus["load"]))
        server = [py, str(BENCH_DIR / "upstream_server.py"), "--port", "0"]
        primary = self.procs.start("upstream", [*server, "--delay-ms", str(cfg.delay_ms)], up)
        slow = self.procs.start(
            "shadow-slow", [*server, "--delay-ms", str(cfg.shadow_delay_ms)], sh
        )
        dead = self.procs.start("shadow-dead", [*server, "--mode", "hang"], sh)
        fast = self.procs.start("shadow-fast", [*server, "--delay-ms", str(cfg.delay_ms)], sh)
        self.upstream_addr = up_addr = f"127.0.0.1:{self.procs.wait_port(primary)}"
        self.shadow_addr = {
            SHADOW_SLOW: f"127.0.0.1:{self.procs.wait_port(slow)}",
            SHADOW_DEAD: f"127.0.0.1:{self.procs.wait_port(dead)}",
        }
        self.shadow_addr[SHADOW_FAST] = self.shadow_addr[SHADOW_10PCT] = (
            f"127.0.0.1:{self.procs.wait_port(fast)}"
        )
        passthrough = self.procs.start(
            "passthrough",
            [py, str(BENCH_DIR / "passthrough.py"), "--port", "0", "--upstream", up_addr],
            hop,
        )
        self.targets = {
            DIRECT: up_addr,
            PASSTHROUGH: f"127.0.0.1:{self.procs.wait_port(passthrough)}",
        }
        self.by_scenario = {DIRECT: primary, PASSTHROUGH: passthrough}
        ports = free_ports(2 * len(SIDECAR_SCENARIOS))
        not_started: dict[str, str] = {}
        for i, scen in enumerate(SIDECAR_SCENARIOS):
            config = sidecar_config(
                up_addr,
                self.shadow_addr.get(scen),
                ports[2 * i : 2 * i + 2],
                SHADOW_SAMPLE_BP.get(scen, 10_000),
            )
            config["drift"] = {"enabled": self.cfg.drift}
            path = self.workdir / f"sidecar-{scen}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            try:
                self.by_scenario[scen] = self.procs.start(
                    f"sidecar-{scen}", [cfg.sidecar_cmd, "serve", "--config", str(path)], hop
                )
            except OSError as exc:  # no such executable, not executable, ...
                not_started[scen] = f"could not be started: {exc}"
                continue
            self.targets[scen] = config["listen"]["predict"]
        failures = wait_ready(self.pool, self.by_scenario, self.targets, self.req, timeout=30.0)
        failures.update(not_started)
        pids = {p.name: p.popen.pid for p in self.procs.procs}
        pids.update({f"load-{i}": pid for i, pid in enumerate(self.pool.pids)})
        pids["parent"] = os.getpid()
        self.meter = CpuMeter(pids)
        return failures

    def startup_runs(self, runs: int) -> dict[str, Any] | None:
        """`sidecar serve` with (c)'s configuration spawned alone on the hop's CPU, `runs`
        times: seconds from spawn to the first grpc.health.v1 Check answered SERVING
        (polled every 5 ms), with the other processes' CPU meanwhile."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        times, foreign = [], []
        for i in range(runs):
            ports = free_ports(2)
            config = sidecar_config(self.upstream_addr, None, ports)
            config["drift"] = {"enabled": self.cfg.drift}
            path = self.workdir / f"sidecar-startup-{i}.yaml"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            before = self.meter.sample()
            spawned = time.perf_counter()
            proc = self.procs.start(
                f"sidecar-startup-{i}",
                [self.cfg.sidecar_cmd, "serve", "--config", str(path)],
                self.cpus["hop"],
            )
            serving = None
            with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while time.perf_counter() - spawned < 30.0 and proc.alive():
                    with contextlib.suppress(grpc.RpcError):
                        answer = stub.Check(
                            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"),
                            timeout=1.0,
                        )
                        if answer.status == health_pb2.HealthCheckResponse.SERVING:
                            serving = time.perf_counter() - spawned
                            break
                    time.sleep(0.005)
            cpu = CpuMeter.delta(before, self.meter.sample())
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5.0)
            _signal_group(proc, signal.SIGKILL)
            if serving is None:
                print(f"  start-up run {i + 1}: not SERVING within 30 s:\n{proc.log_tail()}")
                continue
            times.append(serving)
            foreign.append(cpu.foreign_s / max(cpu.wall_s, 1e-3))
            print(f"  start-up run {i + 1}: SERVING after {serving:.3f} s", flush=True)
        if not times:
            return None
        return {
            "runs_s": [round(t, 4) for t in times],
            "median_s": float(np.median(times)),
            "foreign_cores": [round(f, 3) for f in foreign],
            "rule": "spawn of `sidecar serve` (configuration of (c)) to the first health "
            "Check of inference.GRPCInferenceService answered SERVING, polled every 5 ms",
        }

    def run_cost_s(self, mode: str) -> float:
        """Wall time one run takes, about."""
        window = self.cfg.duration_s if mode == "closed" else self.cfg.open_duration_s
        return self.cfg.warmup_s + window + RUN_OVERHEAD_S

    def measure(self, scen: str, mode: str, load: float) -> RunResult:
        """`run_once`; when other processes used the CPU meanwhile, wait for a quiet moment
        and run again, as long as the time budget allows."""
        self.planned_s -= self.run_cost_s(mode)
        result = self.run_once(scen, mode, load)
        while disturbed(result):
            spare = self.cfg.budget_s - (time.monotonic() - self.t_begin) - self.planned_s
            if self.retries >= self.cfg.max_retries or spare < 2 * self.run_cost_s(mode):
                break
            self.retries += 1
            waited = self.wait_quiet(min(QUIET_WAIT_S, spare - self.run_cost_s(mode)))
            print(
                f"  (run disturbed: other processes used {result.cpu['foreign_cores']:.2f} "
                f"cores, peak {result.cpu['foreign_peak_cores']:.2f}; waited {waited:.1f} s, "
                f"running {SCENARIOS[scen]} {mode} again)",
                flush=True,
            )
            result = self.run_once(scen, mode, load)
        return result

    def wait_quiet(self, max_wait_s: float) -> float:
        """Wait until other processes leave the CPU alone for a moment (or `max_wait_s`)."""
        start = time.monotonic()
        before = self.meter.sample()
        while time.monotonic() - start < max_wait_s:
            time.sleep(0.5)
            after = self.meter.sample()
            cpu = CpuMeter.delta(before, after)
            if cpu.foreign_s / max(cpu.wall_s, 1e-3) < QUIET_FOREIGN_CORES:
                break
            before = after
        return time.monotonic() - start

    def run_once(self, scen: str, mode: str, load: float) -> RunResult:
        """One run: closed loop with `load` in flight, or open loop at `load` per second."""
        pool = self.pool
        assert pool is not None
        target = self.targets[scen]
        shadow = self.shadow_addr.get(scen)
        counted = scen in SIDECAR_SCENARIOS
        if counted:
            p0 = pool.server_calls(self.upstream_addr)
            s0 = pool.server_calls(shadow) if shadow else 0
        before = self.meter.sample()
        with PeakSampler(self.meter) as peaks:
            result = self._load(pool, target, mode, load)
        cpu = CpuMeter.delta(before, self.meter.sample())
        if counted:
            time.sleep(0.05)  # mirrored calls start after the primary answer
            calls = self.upstream_calls[scen]
            calls["requests"] += result.total
            calls["primary"] += pool.server_calls(self.upstream_addr) - p0
            if shadow:
                calls["shadow"] += pool.server_calls(shadow) - s0
        result.cpu = cpu_per_request(scen, cpu, result.total)
        result.cpu["foreign_peak_cores"] = peaks.peak_foreign_cores
        return result

    def _load(self, pool: LoadPool, target: str, mode: str, load: float) -> RunResult:
        cfg = self.cfg
        if mode == "closed":
            return pool.closed(
                target,
                self.req,
                int(load),
                warmup_s=cfg.warmup_s,
                duration_s=cfg.duration_s,
                max_requests=cfg.max_requests,
                timeout=cfg.timeout_s,
            )
        return pool.open(
            target,
            self.req,
            load,
            warmup_s=cfg.warmup_s,
            duration_s=cfg.open_duration_s,
            max_requests=cfg.max_requests,
            timeout=cfg.timeout_s,
        )


def cpu_per_request(scen: str, cpu: CpuDelta, requests: int) -> dict[str, float | None]:
    """CPU milliseconds per request of each role, and the machine's foreign load."""

    def per_req(seconds: float | None) -> float | None:
        return None if seconds is None or not requests else seconds * 1000.0 / requests

    hop = {PASSTHROUGH: "passthrough"}.get(scen, f"sidecar-{scen}")
    shadow = {
        SHADOW_SLOW: "shadow-slow",
        SHADOW_DEAD: "shadow-dead",
        SHADOW_FAST: "shadow-fast",
        SHADOW_10PCT: "shadow-fast",
    }.get(scen)
    load = sum(v for k, v in cpu.procs.items() if k.startswith("load-"))
    wall = cpu.wall_s or 1.0
    return {
        "hop_ms_per_req": None if scen == DIRECT else per_req(cpu.procs.get(hop)),
        "upstream_ms_per_req": per_req(cpu.procs.get("upstream")),
        "shadow_upstream_ms_per_req": per_req(cpu.procs.get(shadow)) if shadow else None,
        "load_ms_per_req": per_req(load),
        "foreign_cores": cpu.foreign_s / wall,
        "steal_cores": cpu.steal_s / wall,
    }


def run(cfg: Settings, out_path: Path) -> int:
    t_begin = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    bench = Bench(cfg, workdir)
    bench.t_begin = t_begin
    try:
        failures = bench.start()
        for name in (DIRECT, PASSTHROUGH):
            if name in failures:
                raise RuntimeError(f"{SCENARIOS[name]} did not start: {failures[name]}")
        skipped_reason = None
        if any(s in failures for s in SIDECAR_SCENARIOS):
            first = next(s for s in SIDECAR_SCENARIOS if s in failures)
            skipped_reason = (
                f"`{cfg.sidecar_cmd} serve` failed for {SCENARIOS[first]}: " + (failures[first])
            )
            print(f"\nSKIPPING (c)-(e): {skipped_reason}\n", file=sys.stderr)
        scenarios = [DIRECT, PASSTHROUGH] + (
            [] if skipped_reason else list(CLOSED_SIDECAR_SCENARIOS)
        )
        placement = ", ".join(f"{r} on CPU {sorted(c)}" for r, c in bench.cpus.items())
        print(f"ready in {time.monotonic() - t_begin:.1f} s; layout {cfg.layout}: {placement}")

        n_open = 0 if skipped_reason else cfg.open_reps * len(OPEN_SCENARIOS)
        bench.planned_s = cfg.reps * len(scenarios) * 2 * bench.run_cost_s("closed")
        bench.planned_s += n_open * bench.run_cost_s("open")
        closed_runs: dict[str, list[RunResult]] = {}
        for rep in range(cfg.reps):
            # Interleaved, and alternately reversed, so that drift hits every scenario alike.
            order = scenarios if rep % 2 == 0 else scenarios[::-1]
            for scen in order:
                for conc in (1, 16) if rep % 2 == 0 else (16, 1):
                    result = bench.measure(scen, "closed", conc)
                    closed_runs.setdefault(f"{scen}@{conc}", []).append(result)
                    log_run(rep, scen, f"{conc:>2} in flight", result)
        closed = {
            f"{s}@{c}": summarize(closed_runs[f"{s}@{c}"]) for s in scenarios for c in (1, 16)
        }

        open_: dict[str, Any] = {}
        rate = None
        if not skipped_reason:
            rate = 0.5 * (closed[f"{SIDECAR}@16"]["rps"] or 0.0)
            open_scen = list(OPEN_SCENARIOS)
            open_runs: dict[str, list[RunResult]] = {}
            for rep in range(cfg.open_reps):
                order = open_scen if rep % 2 == 0 else open_scen[::-1]
                for scen in order:
                    result = bench.measure(scen, "open", rate)
                    open_runs.setdefault(scen, []).append(result)
                    log_run(rep, scen, f"{rate:5.0f}/s", result)
            open_ = {s: summarize(open_runs[s]) for s in open_scen}

        startup = None if skipped_reason else bench.startup_runs(STARTUP_RUNS)
        ratios = compute_ratios(closed, open_)
        ratios["startup_to_serving_s"] = startup["median_s"] if startup else None
        verdicts = judge(ratios)
        every = [*closed.values(), *open_.values()]
        total_errors = sum(s["errors"] for s in every)
        foreign = max((s["cpu"]["foreign_cores_max"] or 0.0 for s in every), default=0.0)
        n_disturbed = sum(s["disturbed_reps"] for s in every)
        print_table(closed, open_, verdicts)
        print_cpu(closed)
        cpu_ratio = ratios["hop_cpu_per_request_sidecar_over_passthrough_16"]
        if cpu_ratio:
            print(
                f"  hop CPU per request (c)/(b): {cpu_ratio:.2f} (a deployment bound by the "
                f"hop's own CPU would see (c)/(b) throughput of about {1 / cpu_ratio:.2f})"
            )
        if bench.retries:
            print(f"  {bench.retries} run(s) repeated because other processes used the CPU")
        for scen, calls in bench.upstream_calls.items():
            if calls["requests"]:
                line = f"{calls['primary'] / calls['requests']:.3f} upstream calls per request"
                if scen in bench.shadow_addr:
                    line += f", {calls['shadow'] / calls['requests']:.1%} mirrored to the shadow"
                print(f"  {SCENARIOS[scen]:<20} {line}")
        n_runs = sum(s["reps"] for s in every)
        quiet = n_disturbed <= DISTURBED_OK_SHARE * n_runs
        if not quiet:
            print(
                f"\nWARNING: {n_disturbed} of {n_runs} kept runs were disturbed by other "
                "processes (the time budget ran out for repeating them): the ratios of this run "
                "are not trustworthy; run again on a quieter machine."
            )
        elif foreign > FOREIGN_WARN_CORES:
            print(
                f"\nNOTE: other processes used up to {foreign:.2f} cores during a kept run "
                f"({n_disturbed} kept run(s) disturbed): the machine was shared, figures are "
                "noisier than usual."
            )
        if total_errors:
            print(f"\nWARNING: {total_errors} failed calls: this run is flagged invalid.")
        if skipped_reason:
            print(f"\n(c)-(e) SKIPPED: {skipped_reason.splitlines()[0]}")
        runtime = time.monotonic() - t_begin
        print(f"\ntotal bench runtime {runtime:.0f} s")

        doc = {
            "benchmark": "dataplane",
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "valid": total_errors == 0 and skipped_reason is None,
            "errors_total": total_errors,
            "skipped": skipped_reason,
            "ratios": ratios,
            "targets": verdicts,
            "closed_loop": closed,
            "open_loop": open_,
            "upstream_calls": bench.upstream_calls,
            "startup": startup,
            "max_foreign_cpu_cores": foreign,
            "retried_runs": bench.retries,
            "disturbed_runs_kept": n_disturbed,
            "quiet_enough": quiet,
            "parameters": {
                "reps": cfg.reps,
                "open_reps": cfg.open_reps,
                "closed_duration_s": cfg.duration_s,
                "open_duration_s": cfg.open_duration_s,
                "warmup_s": cfg.warmup_s,
                "concurrency": [1, 16],
                "open_loop_rate_rps": rate,
                "open_loop_rate_rule": "0.5 x median closed-loop rps of (c) at 16 in flight",
                "primary_delay_ms": cfg.delay_ms,
                "shadow_slow_delay_ms": cfg.shadow_delay_ms,
                "shadow_dead": "never answers; the sidecar's shadow deadline is 1.0 s",
                "weights": {"stable": 9000, "canary": 1000},
                "shadow": {"sample_bp": 10000, "max_in_flight": 64, "deadline_s": 1.0},
                "load_workers": cfg.workers,
                "call_timeout_s": cfg.timeout_s,
                "max_requests_per_worker": cfg.max_requests,
                "budget_s": cfg.budget_s,
                "repeat_run_when_foreign_cpu_cores_above": {
                    "run_average": RETRY_FOREIGN_CORES,
                    "any_250ms": RETRY_PEAK_CORES,
                },
                "layout": cfg.layout,
                "drift_monitor": cfg.drift,
                "cpus": {role: sorted(c) for role, c in bench.cpus.items()},
                "statistics": "rps and CPU: median over reps; p50/p99: pooled samples of all reps",
                "request": "ModelInfer 'classifier', one FP64 input [1,4], typed contents",
                "sidecar_environment": "OTEL_* variables removed: spans recorded, not exported",
            },
            "machine": machine_info(),
            "runtime_s": round(runtime, 1),
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {out_path}")
        return 1 if total_errors else 0
    finally:
        if bench.pool is not None:
            bench.pool.close()
        bench.procs.stop_all()
        for p in workdir.iterdir():
            p.unlink()
        workdir.rmdir()


def log_run(rep: int, scen: str, load: str, r: RunResult) -> None:
    hop = r.cpu.get("hop_ms_per_req")
    print(
        f"  rep {rep + 1} {r.mode:<6} {SCENARIOS[scen]:<20} {load}: {r.rps:6.0f} rps"
        f"  p50 {pct_ms(r.latencies, 50) or 0:6.2f}  p99 {pct_ms(r.latencies, 99) or 0:6.2f} ms"
        f"  hop cpu {fmt(hop)} ms/req  errors {r.n_errors}"
        f"  foreign {r.cpu.get('foreign_cores') or 0:.2f} cores",
        flush=True,
    )


def machine_info() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "uvloop": version("uvloop"),
        "platform": platform.platform(),
        "loadavg_at_end": os.getloadavg(),
    }


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process we started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Data-plane benchmark: direct vs passthrough vs sidecar (routing, shadow).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every measurement")
    parser.add_argument("--duration", type=float, default=2.5, help="closed-loop window, s")
    parser.add_argument(
        "--open-reps", type=int, default=4, help="repetitions of every open-loop measurement"
    )
    parser.add_argument("--open-duration", type=float, default=3.0, help="open-loop window, s")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up before a window, s")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="primary upstream delay")
    parser.add_argument(
        "--shadow-delay-ms",
        type=float,
        default=None,
        help="slow shadow's delay (default 10x primary, or 10 ms if the primary's is 0)",
    )
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--timeout", type=float, default=2.0, help="per-call timeout, s")
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap per worker per run")
    parser.add_argument(
        "--max-retries",
        type=int,
        default=20,
        help="runs repeated in all because other processes used the CPU meanwhile",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=330.0,
        help="seconds the whole bench may take: repeated runs only while it allows",
    )
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default="split",
        help=LAYOUT_HELP,
    )
    parser.add_argument(
        "--sidecar", default=str(ROOT / ".venv" / "bin" / "sidecar"), help="sidecar executable"
    )
    parser.add_argument(
        "--no-drift",
        action="store_true",
        help="turn the drift monitor off (on by default, as in the sidecar's defaults)",
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "results" / "dataplane.json", help="result file"
    )
    args = parser.parse_args(argv)
    shadow_delay = args.shadow_delay_ms
    if shadow_delay is None:
        shadow_delay = 10.0 * args.delay_ms if args.delay_ms > 0 else 10.0
    cfg = Settings(
        reps=args.reps,
        open_reps=args.open_reps,
        duration_s=args.duration,
        open_duration_s=args.open_duration,
        warmup_s=args.warmup,
        delay_ms=args.delay_ms,
        shadow_delay_ms=shadow_delay,
        workers=args.workers,
        timeout_s=args.timeout,
        max_requests=args.max_requests,
        max_retries=args.max_retries,
        budget_s=args.budget,
        layout=args.layout,
        sidecar_cmd=args.sidecar,
        drift=not args.no_drift,
    )
    with _sigterm_as_exit():
        try:
            return run(cfg, args.out)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())

"""Load generator for the data-plane benchmark: a pool of spawned worker processes.

grpc is not fork-safe once a channel exists, so workers are started with the multiprocessing
``spawn`` method before anything in the parent touches grpc (the parent never does). Each
worker runs uvloop with one long-lived grpc.aio channel per target and sends pre-serialised
request bytes through a generic unary call with identity serializers, with ``x-user-id``
varying per request and a timeout on every call.

Measurements are bounded in time (warm-up + window) and in count (``max_requests`` per
worker). All workers share one start instant on ``time.monotonic()`` (CLOCK_MONOTONIC is
system-wide on Linux), so a run split over several workers is one run.

Closed loop: ``concurrency`` coroutines, each sending its next request when the previous one
ends. Open loop: a fixed schedule of start times at ``rate`` requests/s; latency is measured
from each request's *scheduled* start, so a slow answer or a late generator shows up as
latency instead of silently lowering the offered load (no coordinated omission).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVER_METADATA = "/inference.GRPCInferenceService/ServerMetadata"
N_USERS = 4096  # distinct x-user-id values cycled through
PARSE_EVERY = 16  # parse one response in this many to tally the serving model version


@dataclass
class WorkerResult:
    """What one worker measured in one run (times in seconds)."""

    latencies: list[float] = field(default_factory=list)  # successful calls in the window
    send_lags: list[float] = field(default_factory=list)  # open loop: send - scheduled
    errors: dict[str, int] = field(default_factory=dict)  # status code name -> count
    completed: int = 0  # successful calls in the window
    sent: int = 0  # calls started in the window
    total: int = 0  # calls started, warm-up included
    window_s: float = 0.0  # length of the measurement window actually covered
    versions: dict[str, int] = field(default_factory=dict)  # sampled response model_version


@dataclass
class RunResult:
    """One measurement, all workers merged."""

    mode: str
    target: str
    concurrency: int
    rate: float
    latencies: list[float]
    send_lags: list[float]
    errors: dict[str, int]
    completed: int
    sent: int
    total: int
    window_s: float
    versions: dict[str, int]
    cpu: dict[str, float | None] = field(default_factory=dict)  # filled in by the caller

    @property
    def rps(self) -> float:
        return self.completed / self.window_s if self.window_s > 0 else 0.0

    @property
    def send_rate(self) -> float:
        return self.sent / self.window_s if self.window_s > 0 else 0.0

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


# --------------------------------------------------------------------------- worker side


def _worker_main(conn: mpc.Connection, worker_id: int, cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))
    # Imported here, after the affinity is set, so that grpc's threads inherit it.
    import asyncio

    import grpc
    import uvloop

    from sidecar._proto.inference import grpc_predict_v2_pb2 as pb

    def identity(data: bytes) -> bytes:
        return data

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    channels: dict[str, grpc.aio.Channel] = {}
    metadata = [(("x-user-id", f"u{worker_id * N_USERS + i}"),) for i in range(N_USERS)]

    def stub(target: str, method: str = MODEL_INFER) -> Any:
        channel = channels.get(target)
        if channel is None:
            channel = grpc.aio.insecure_channel(target)
            channels[target] = channel
        return channel.unary_unary(
            method, request_serializer=identity, response_deserializer=identity
        )

    def tally(res: WorkerResult, response: bytes) -> None:
        version = pb.ModelInferResponse.FromString(response).model_version or "-"
        res.versions[version] = res.versions.get(version, 0) + 1

    async def sleep_until(t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def probe(target: str, request: bytes, call_timeout: float) -> str:
        try:
            await stub(target)(request, timeout=call_timeout, metadata=metadata[0])
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return ""

    async def server_calls(target: str, call_timeout: float) -> int:
        raw = await stub(target, SERVER_METADATA)(b"", timeout=call_timeout)
        for ext in pb.ServerMetadataResponse.FromString(raw).extensions:
            if ext.startswith("calls="):
                return int(ext.removeprefix("calls="))
        return -1

    async def closed(
        target: str,
        request: bytes,
        concurrency: int,
        start_at: float,
        warmup_s: float,
        duration_s: float,
        max_requests: int,
        call_timeout: float,
    ) -> WorkerResult:
        call = stub(target)
        res = WorkerResult()
        errors: Counter[str] = Counter()
        t_meas = start_at + warmup_s
        t_end = t_meas + duration_s
        counter = [0]
        last_done = [t_meas]

        async def one_loop(k: int) -> None:
            n = k
            while True:
                t0 = time.monotonic()
                if t0 >= t_end or res.sent >= max_requests:
                    return
                in_window = t0 >= t_meas
                res.total += 1
                if in_window:
                    res.sent += 1
                try:
                    response = await call(
                        request, timeout=call_timeout, metadata=metadata[n % N_USERS]
                    )
                except grpc.aio.AioRpcError as exc:
                    if in_window:
                        errors[exc.code().name] += 1
                else:
                    t1 = time.monotonic()
                    if in_window:
                        res.latencies.append(t1 - t0)
                        if t1 <= t_end:
                            res.completed += 1
                            last_done[0] = t1
                        counter[0] += 1
                        if counter[0] % PARSE_EVERY == 0:
                            tally(res, response)
                n += concurrency

        await sleep_until(start_at)
        await asyncio.gather(*(one_loop(k) for k in range(concurrency)))
        # Normally the whole window; shorter when max_requests ended the run early.
        res.window_s = duration_s if res.sent < max_requests else last_done[0] - t_meas
        res.errors = dict(errors)
        return res

    async def open_loop(
        target: str,
        request: bytes,
        rate: float,
        phase: float,
        start_at: float,
        warmup_s: float,
        duration_s: float,
        max_requests: int,
        call_timeout: float,
    ) -> WorkerResult:
        call = stub(target)
        res = WorkerResult()
        errors: Counter[str] = Counter()
        interval = 1.0 / rate
        first = start_at + phase * interval
        t_meas = start_at + warmup_s
        t_end = t_meas + duration_s
        pending: set[asyncio.Task[None]] = set()
        counter = [0]

        async def one(t_sched: float, n: int) -> None:
            in_window = t_sched >= t_meas
            res.total += 1
            t_send = time.monotonic()
            try:
                response = await call(request, timeout=call_timeout, metadata=metadata[n % N_USERS])
            except grpc.aio.AioRpcError as exc:
                if in_window:
                    errors[exc.code().name] += 1
                return
            t_done = time.monotonic()
            if in_window:
                res.latencies.append(t_done - t_sched)
                res.send_lags.append(t_send - t_sched)
                res.completed += 1
                counter[0] += 1
                if counter[0] % PARSE_EVERY == 0:
                    tally(res, response)

        k = 0
        while True:
            t_sched = first + k * interval
            if t_sched >= t_end or res.sent >= max_requests:
                break
            now = time.monotonic()
            if t_sched > now:
                await asyncio.sleep(t_sched - now)
            if t_sched >= t_meas:
                res.sent += 1
            task = asyncio.create_task(one(t_sched, k))
            pending.add(task)
            task.add_done_callback(pending.discard)
            k += 1
        if pending:
            await asyncio.wait(pending, timeout=call_timeout + 1.0)
        # Scheduled start times cover the window, or up to the last one sent.
        res.window_s = duration_s if res.sent < max_requests else (t_sched - t_meas)
        res.errors = dict(errors)
        return res

    handlers: dict[str, Any] = {
        "probe": probe,
        "server_calls": server_calls,
        "closed": closed,
        "open": open_loop,
    }
    try:
        while True:
            cmd, kwargs = conn.recv()
            if cmd == "stop":
                break
            try:
                conn.send(("ok", loop.run_until_complete(handlers[cmd](**kwargs))))
            except Exception as exc:  # reported to the parent, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for channel in channels.values():
            loop.run_until_complete(channel.close(None))
        loop.close()
        conn.close()


# --------------------------------------------------------------------------- parent side


class LoadPool:
    """Spawned load-generator processes, driven by commands over pipes."""

    def __init__(self, n_workers: int, cpus: list[int] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conns: list[mpc.Connection] = []
        self._procs: list[Any] = []
        for i in range(n_workers):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main, args=(child_end, i, cpus), name=f"load-{i}", daemon=True
            )
            proc.start()
            child_end.close()
            self._conns.append(parent_end)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def n_workers(self) -> int:
        return len(self._conns)

    def _call(self, workers: list[int], cmd: str, kwargs_list: list[dict[str, Any]]) -> list[Any]:
        for w, kwargs in zip(workers, kwargs_list, strict=True):
            self._conns[w].send((cmd, kwargs))
        out = []
        for w in workers:
            status, value = self._conns[w].recv()
            if status != "ok":
                raise RuntimeError(f"load worker {w}: {value}")
            out.append(value)
        return out

    def probe(self, target: str, request: bytes, timeout: float = 0.5) -> str:
        """One ModelInfer; '' on success, else the error."""
        kwargs = {"target": target, "request": request, "call_timeout": timeout}
        return str(self._call([0], "probe", [kwargs])[0])

    def server_calls(self, target: str) -> int:
        """ModelInfer calls a bench upstream has received so far (from ServerMetadata)."""
        return int(self._call([0], "server_calls", [{"target": target, "call_timeout": 2.0}])[0])

    def closed(
        self,
        target: str,
        request: bytes,
        concurrency: int,
        *,
        warmup_s: float,
        duration_s: float,
        max_requests: int,
        timeout: float,
    ) -> RunResult:
        n = min(self.n_workers, concurrency)
        shares = [concurrency // n + (1 if i < concurrency % n else 0) for i in range(n)]
        start_at = time.monotonic() + 0.05
        kwargs = [
            {
                "target": target,
                "request": request,
                "concurrency": shares[i],
                "start_at": start_at,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "max_requests": max_requests,
                "call_timeout": timeout,
            }
            for i in range(n)
        ]
        parts = self._call(list(range(n)), "closed", kwargs)
        return _merge("closed", target, concurrency, 0.0, parts)

    def open(
        self,
        target: str,
        request: bytes,
        rate: float,
        *,
        warmup_s: float,
        duration_s: float,
        max_requests: int,
        timeout: float,
    ) -> RunResult:
        n = self.n_workers
        start_at = time.monotonic() + 0.05
        kwargs = [
            {
                "target": target,
                "request": request,
                "rate": rate / n,
                "phase": i / n,  # interleave the workers' schedules into one at `rate`
                "start_at": start_at,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "max_requests": max_requests,
                "call_timeout": timeout,
            }
            for i in range(n)
        ]
        parts = self._call(list(range(n)), "open", kwargs)
        return _merge("open", target, 0, rate, parts)

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("stop", {}))
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)
        for conn in self._conns:
            conn.close()


def _merge(mode: str, target: str, concurrency: int, rate: float, parts: list[Any]) -> RunResult:
    errors: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    latencies: list[float] = []
    lags: list[float] = []
    for p in parts:
        errors.update(p.errors)
        versions.update(p.versions)
        latencies.extend(p.latencies)
        lags.extend(p.send_lags)
    return RunResult(
        mode=mode,
        target=target,
        concurrency=concurrency,
        rate=rate,
        latencies=latencies,
        send_lags=lags,
        errors=dict(errors),
        completed=sum(p.completed for p in parts),
        sent=sum(p.sent for p in parts),
        total=sum(p.total for p in parts),
        window_s=min(p.window_s for p in parts),
        versions=dict(versions),
    )

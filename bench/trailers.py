"""What passing the upstream's trailers on costs per request, in microseconds.

The front door reads a finished upstream call's trailing metadata, filters it
(`sidecar.adapters.upstream.trailers.passed_trailers`) and puts it before its own
`x-variant` / `x-request-id`. Timed here in isolation (`timeit`, best of `--repeat` rounds
of `--number` calls, thread CPU time) on real finished `grpc.aio` calls to an in-process
server: with no upstream trailers (the usual case: no copy, the shared empty tuple) and
with two, next to the public `await call.trailing_metadata()` the adapter avoids.

    .venv/bin/python bench/trailers.py [--number 20000] [--repeat 5]

Prints a table and writes bench/results/trailers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.adapters.upstream.oip import _finished_trailers  # noqa: E402
from sidecar.adapters.upstream.trailers import passed_trailers  # noqa: E402

TWO = (("x-model-latency-ms", "3"), ("x-cache", "miss"))


async def finished_calls() -> tuple[Any, Any, grpc.aio.Server, grpc.aio.Channel]:
    """Two finished calls: one answered without trailers, one with `TWO`."""

    async def handle(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if request == b"t":
            context.set_trailing_metadata(TWO)
        return b"ok"

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(handle)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("b", {"m": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    method = channel.unary_unary("/b/m")
    none, two = method(b"n"), method(b"t")
    await none
    await two
    return none, two, server, channel


def best(step: Any, number: int, repeat: int) -> float:
    timer = timeit.Timer(step, timer=time.thread_time)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def own_trailers(passed: tuple[Any, ...]) -> tuple[Any, ...]:
    own = (("x-variant", "stable"), ("x-request-id", "0" * 32))
    return passed + own if passed else own


async def measure(number: int, repeat: int) -> dict[str, float]:
    none, two, server, channel = await finished_calls()
    try:
        steps = {
            "no trailers: read (finished call) + filter + own trailers": lambda: own_trailers(
                passed_trailers(_finished_trailers(none))
            ),
            "2 trailers: read (finished call) + filter + own trailers": lambda: own_trailers(
                passed_trailers(_finished_trailers(two))
            ),
            "own trailers only (before: no pass-through)": lambda: own_trailers(()),
        }
        return {name: best(step, number, repeat) for name, step in steps.items()}
    finally:
        await channel.close()
        await server.stop(None)


def public_api(number: int, repeat: int) -> float:
    async def run() -> float:
        none, _, server, channel = await finished_calls()
        try:
            rounds = []
            for _ in range(repeat):
                started = time.thread_time()
                for _ in range(number):
                    await none.trailing_metadata()
                rounds.append((time.thread_time() - started) / number * 1e6)
            return min(rounds)
        finally:
            await channel.close()
            await server.stop(None)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.number, args.repeat))
    public = "(public API: await call.trailing_metadata(), no trailers, in a loop)"
    figures[public] = public_api(args.number, args.repeat)
    for name, micros in figures.items():
        print(f"  {name:<72} {micros:6.2f} µs")
    out = ROOT / "bench" / "results" / "trailers.json"
    out.write_text(
        json.dumps(
            {
                "unit": "microseconds per request (thread CPU, best round)",
                "number": args.number,
                "repeat": args.repeat,
                "steps": {k: round(v, 3) for k, v in figures.items()},
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

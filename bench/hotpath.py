"""The sidecar's per-request work beyond the passthrough, step by step, in microseconds.

The passthrough (bench/passthrough.py) receives bytes, forwards them over one channel and
returns the answer's bytes. The sidecar's front door does the same gRPC work plus the steps
below; each is timed here in isolation (`timeit`, best of `--repeat` rounds of `--number`
calls, in thread CPU time so a busy machine inflates it less), on the objects
`sidecar.wiring.build` makes from a bench-like configuration (stable/canary 9000/1000, drift
on, no shadow, no OTEL export), with the iris-shaped request of bench/dataplane.py.

    .venv/bin/python bench/hotpath.py [--number 20000] [--repeat 5]

Prints a table and writes bench/results/hotpath.json. Figures move with the machine's
load; they say where the time goes, not what a quiet machine would show end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.trace import Tracer  # noqa: E402

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip  # noqa: E402
from sidecar.adapters.grpc.converters import check_infer_request  # noqa: E402
from sidecar.adapters.grpc.servicers import (  # noqa: E402
    OIP_SERVICE,
    InferenceServicer,
    _routing_headers,
)
from sidecar.adapters.telemetry import spans  # noqa: E402
from sidecar.adapters.telemetry.spans import StatsTracer  # noqa: E402
from sidecar.adapters.upstream.wire import InferBytes, InferReply  # noqa: E402
from sidecar.app.dataplane import check_key  # noqa: E402
from sidecar.config import parse_config  # noqa: E402
from sidecar.core.routing import RoutingContext, evaluate  # noqa: E402
from sidecar.testing.inprocess import config_dict  # noqa: E402
from sidecar.wiring import build  # noqa: E402

EXPORT_ROW = "(export on: the same with the SDK's span instead)"
WHOLE_ROW = "whole front door, upstream answered in-process (not summed)"
BEFORE = "before #12: "


def request_bytes() -> bytes:
    req = oip.ModelInferRequest(model_name="classifier")
    tensor = req.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend([5.1, 3.5, 1.4, 0.2])
    return req.SerializeToString()


def reply_bytes() -> bytes:
    resp = oip.ModelInferResponse(model_name="classifier", model_version="v1")
    out = resp.outputs.add(name="predict", datatype="INT64", shape=[1])
    out.contents.int64_contents.append(0)
    return resp.SerializeToString()


class _Context:
    """The few ServicerContext methods the OIP front door calls on success."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float:
        return 1.5

    def set_trailing_metadata(self, trailers: Any) -> None:
        pass


class _NoTrailers:
    """A finished call's status as grpc.aio holds it: no trailing metadata (the usual)."""

    @staticmethod
    def trailing_metadata() -> tuple[()]:
        return ()


class _FinishedCall:
    """Stands in for a grpc.aio call that answers at once: awaitable for the answer's
    bytes, its trailing metadata read as `OipUpstream` reads a finished call's."""

    class _cython_call:  # grpc.aio's attribute name
        _status = _NoTrailers()

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def __await__(self) -> Any:
        return self.answer
        yield  # a generator: awaiting it returns at once


def _whole_path(sidecar: Any, tracer: Tracer, data: bytes, answer: bytes) -> Any:
    """`InferenceServicer.ModelInfer` as a request runs it (span, scan, route, experiment
    admission, upstream latency metrics, outcome ledger, drift, trailers), with every
    upstream's gRPC call replaced by an in-process coroutine answering `answer` at once
    (so no gRPC work is timed: that part is the passthrough's too). Users vary over 4096
    keys, as in bench/dataplane.py."""
    dp = sidecar.dataplane

    def grpc_call(request: bytes, *, timeout: float, metadata: Any) -> _FinishedCall:
        return _FinishedCall(answer)

    for upstream in dp.upstreams.values():
        upstream._infer = grpc_call  # in-process stand-in for the upstream's gRPC call
    servicer = InferenceServicer(
        {sidecar.config.model: dp}, tracer, sidecar.config.upstream.default_deadline
    )
    contexts = [
        _Context((("x-user-id", f"u{n}"), ("user-agent", "grpc-python/1.0"))) for n in range(4096)
    ]
    counter = iter(range(10**12))

    def whole() -> None:
        coro = servicer.ModelInfer(data, contexts[next(counter) % 4096])  # type: ignore[arg-type]
        try:
            coro.send(None)
        except StopIteration:
            return
        raise RuntimeError("the in-process front door suspended")

    return whole


def measure(number: int, repeat: int) -> dict[str, float]:
    raw = config_dict(
        {"stable": "127.0.0.1:1", "canary": "127.0.0.1:1"},
        weights={"stable": 9000, "canary": 1000},
    )
    raw["drift"] = {"enabled": True}
    sidecar = build(parse_config(raw, "<bench>"))
    dp = sidecar.dataplane
    sdk_tracer = sidecar.tracer_provider.get_tracer("bench")  # spans exported (OTLP)
    tracer = StatsTracer(sidecar.stats.record_span)  # the default: nothing exported
    data, answer = request_bytes(), reply_bytes()
    metadata = (("x-user-id", "u12345"), ("user-agent", "grpc-python/1.0"))
    payload = InferBytes.scanned(data)
    reply = InferReply(answer)
    flag = dp.state.current.flag
    steps: dict[str, Any] = {}
    counter = iter(range(10**9))

    def server_span(tracer: Tracer = tracer) -> None:
        """What a request does with its SERVER span: open it (continuing the caller's
        trace), the decision and model attributes, the trace context for the upstream
        call, the status, and its end feeding the windows and the Prometheus metrics."""
        outgoing: list[tuple[str, str]] = []
        with spans.server_span(tracer, OIP_SERVICE, "ModelInfer", metadata) as span:
            span.set_attributes(
                {
                    spans.FLAG_KEY: flag.key,
                    spans.FLAG_VARIANT: "stable",
                    spans.FLAG_REASON: "SPLIT",
                    spans.FLAG_PROVIDER: spans.PROVIDER,
                    spans.REQUEST_ID: "0" * 32,
                }
            )
            spans.inject(outgoing)
            span.set_attributes(
                {spans.MODEL_NAME: "classifier", spans.MODEL_VERSION: "v1", spans.SEGMENT: ""}
            )
            spans.set_status(span, "OK")

    def ledger() -> None:
        n = next(counter)
        dp.outcomes.remember(f"{n:032x}", "stable", "", 1.0, -1, f"u{n % 5000}")

    steps["scan request (model name/version)"] = lambda: InferBytes.scanned(data)
    steps["append variant model fields"] = lambda: payload.to("classifier", "v2")
    steps["scan answer + rename for the caller"] = lambda: InferReply(answer).named("classifier")
    steps["routing headers from metadata"] = lambda: _routing_headers(metadata)
    steps["bound key and segment (2 checks)"] = lambda: (
        check_key("k", "u12345", 256),
        check_key("s", "", 256),
    )
    steps["request id"] = dp._request_ids
    steps["route (evaluate, murmur3)"] = lambda: evaluate(flag, RoutingContext("u12345", "", "r"))
    steps["server span: attributes, trace context, stats"] = server_span
    steps["outcome ledger remember"] = ledger
    if dp.drift is not None:
        steps["drift offer (1 in 10 queued)"] = lambda: dp.drift.offer(payload, reply, "stable")  # type: ignore[union-attr]
    steps["timeout for the upstream call"] = lambda: dp.timeout_for(1.5)
    steps[WHOLE_ROW] = _whole_path(sidecar, tracer, data, answer)
    # with an OTLP exporter configured the SDK's spans are used instead (not on by default)
    steps[EXPORT_ROW] = lambda: server_span(sdk_tracer)
    # what the byte path replaced (the path before issue #12), for comparison
    message = oip.ModelInferRequest.FromString(data)
    answer_message = oip.ModelInferResponse.FromString(answer)
    before = {
        "parse the request (generated servicer)": lambda: oip.ModelInferRequest.FromString(data),
        "check_infer_request": lambda: check_infer_request(message),
        "serialise the request (upstream stub)": message.SerializeToString,
        "parse the answer (upstream stub)": lambda: oip.ModelInferResponse.FromString(answer),
        "serialise the answer (generated servicer)": answer_message.SerializeToString,
        "request id as uuid4().hex": lambda: uuid.uuid4().hex,
        "SDK server span (as without export before)": lambda: server_span(sdk_tracer),
    }
    for name, fn in before.items():
        steps[BEFORE + name] = fn
    results: dict[str, float] = {}
    for name, fn in steps.items():
        best = min(timeit.repeat(fn, number=number, repeat=repeat, timer=time.thread_time))
        results[name] = best / number * 1e6
    asyncio.run(sidecar.pool.close())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hotpath.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = measure(args.number, args.repeat)
    width = max(map(len, results))
    for name, us in results.items():
        print(f"  {name:<{width}}  {us:7.2f} µs")
    total = sum(
        us
        for name, us in results.items()
        if name not in (EXPORT_ROW, WHOLE_ROW) and not name.startswith(BEFORE)
    )
    print(f"  {'sum (default: no export)':<{width}}  {total:7.2f} µs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "hotpath",
                "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "microseconds_per_call": results,
                "sum_us_default": total,
                "parameters": {
                    "number": args.number,
                    "repeat": args.repeat,
                    "statistic": "best of repeat",
                },
                "runtime_s": round(time.monotonic() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

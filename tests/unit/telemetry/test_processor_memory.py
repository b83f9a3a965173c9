"""The span processor behind the health checker stays in bounded memory and never
raises: 1,000,000 spans through the real processor, windows and metrics."""

from __future__ import annotations

import gc
import tracemalloc

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from sidecar.adapters.telemetry.metrics import SidecarMetrics
from sidecar.adapters.telemetry.processor import VariantStatsProcessor
from sidecar.core.canary.window import RollingWindows

CTX = SpanContext(1, 2, False, TraceFlags(1))
RESOURCE = Resource.get_empty()
STATUSES = (0, 0, 0, 0, 0, 0, 0, 0, 14, 4)  # OK mostly, some UNAVAILABLE, DEADLINE_EXCEEDED


def feed(processor: VariantStatsProcessor, start: int, count: int) -> None:
    for i in range(start, start + count):
        begin = i * 10_000_000  # a span every 10 ms of virtual time
        processor.on_end(
            ReadableSpan(
                name="inference.GRPCInferenceService/ModelInfer",
                context=CTX,
                kind=SpanKind.SERVER,
                attributes={
                    "feature_flag.result.variant": "canary" if i % 20 == 0 else "stable",
                    "rpc.grpc.status_code": STATUSES[i % 10],
                },
                start_time=begin,
                end_time=begin + 1_000_000 + (i % 997) * 37_000,
                resource=RESOURCE,
            )
        )


def test_one_million_spans_keep_memory_flat() -> None:
    """1,000,000 spans through the real processor, windows and metrics: once the
    10-minute ring has filled (after 60,000 spans of 10 ms virtual time), traced memory
    stays flat at every 100,000-span checkpoint; every span was recorded."""
    windows = RollingWindows(10.0, 600.0)
    metrics = SidecarMetrics()
    processor = VariantStatsProcessor([windows.record, metrics.record])
    tracemalloc.start()
    checkpoints = []
    try:
        for k in range(10):
            feed(processor, k * 100_000, 100_000)
            gc.collect()
            checkpoints.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert processor.recorded == 1_000_000 and processor.failures == 0
    first = checkpoints[0]
    assert max(checkpoints) - first < 64 * 1024, checkpoints
    now = 999_999 * 0.01
    recent = windows.window("stable", now, 300.0)
    assert recent.requests > 25_000 and recent.errors > 0


def test_processor_never_raises_on_bad_spans() -> None:
    """Spans without a variant, of other kinds, or with a failing sink are ignored or
    counted, never raised."""

    def broken_sink(variant: str, end: float, duration: float, status: str) -> None:
        raise RuntimeError("sink bug")

    processor = VariantStatsProcessor([broken_sink])
    client = ReadableSpan(name="c", context=CTX, kind=SpanKind.CLIENT, resource=RESOURCE)
    unrouted = ReadableSpan(
        name="s", context=CTX, kind=SpanKind.SERVER, start_time=1, end_time=2, resource=RESOURCE
    )
    routed = ReadableSpan(
        name="s", context=CTX, kind=SpanKind.SERVER, start_time=1, end_time=2,
        attributes={"feature_flag.result.variant": "stable"}, resource=RESOURCE,
    )  # fmt: skip
    for span in (client, unrouted, routed):
        processor.on_end(span)
    assert processor.failures == 1 and processor.recorded == 0

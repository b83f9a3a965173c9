"""Prometheus /metrics: per-variant requests, errors and latency histograms, shadow
agreement and drops, state gauges."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


REQUESTS = "sidecar_requests_total"
COMPARISONS = "sidecar_shadow_comparisons_total"


async def settled(
    port: int, *, answered: int, timeout: float = 10.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape until `answered` OK requests and as many shadow comparisons are counted
    (comparisons finish after the answers), within `timeout` seconds; the last scrape
    either way."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    while True:
        m = await asyncio.to_thread(scrape, port)
        ok = sum(v for (n, lb), v in m.items() if n == REQUESTS and ("status", "OK") in lb)
        compared = sum(v for (n, _), v in m.items() if n == COMPARISONS)
        if min(ok, compared) >= answered or loop.time() > deadline:
            return m
        await asyncio.sleep(0.02)


async def test_metrics_endpoint_reports_variants_and_shadow() -> None:
    """After traffic, /metrics has requests and latency per variant, errors by status,
    shadow comparisons, and the kill switch / weights gauges."""
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1, "canary": 2})) as up:
        raw = config_dict(
            {"stable": up.address, "canary": up.address, "shadow": (up.address, "stable")},
            weights={"stable": 5000, "canary": 5000},
            shadow={"variant": "shadow"},
            listen={"metrics": "127.0.0.1:0"},
        )
        async with running_sidecar(raw) as sc:
            stub = oip_grpc.GRPCInferenceServiceStub(
                grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
            )
            req = oip.ModelInferRequest(model_name="classifier")
            req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
            for i in range(40):
                await stub.ModelInfer(req, metadata=(("x-user-id", f"u{i}"),))
            bad = oip.ModelInferRequest(model_name="not-routed-here")  # refused: NOT_FOUND
            for _ in range(3):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.ModelInfer(bad)
            m = await settled(sc.metrics.port, answered=40)
    stable = m[
        (
            REQUESTS,
            (
                ("model", "classifier"),
                ("model_version", "stable"),
                ("status", "OK"),
                ("variant", "stable"),
            ),
        )
    ]
    canary = m[
        (
            REQUESTS,
            (
                ("model", "classifier"),
                ("model_version", "canary"),
                ("status", "OK"),
                ("variant", "canary"),
            ),
        )
    ]
    assert stable + canary == 40 and stable > 0 and canary > 0
    stable_labels = (("model", "classifier"), ("model_version", "stable"), ("variant", "stable"))
    assert m[("sidecar_request_duration_seconds_count", stable_labels)] == stable
    # The served upstream calls and the mirrored ones have their own histograms.
    upstream = "sidecar_upstream_duration_seconds_count"
    assert m[(upstream, (*stable_labels[:2], ("status", "OK"), stable_labels[2]))] == stable
    shadow_calls = "sidecar_shadow_duration_seconds_count"
    assert (
        m[
            (
                shadow_calls,
                (
                    ("model", "classifier"),
                    ("model_version", "stable"),
                    ("status", "OK"),
                    ("variant", "shadow"),
                ),
            )
        ]
        == 40
    )
    agree = m[("sidecar_shadow_comparisons_total", (("model", "classifier"), ("result", "agree")))]
    disagree = m[
        ("sidecar_shadow_comparisons_total", (("model", "classifier"), ("result", "disagree")))
    ]
    assert agree == stable and disagree == canary
    assert m[("sidecar_kill_switch", (("model", "classifier"),))] == 0
    assert (
        m[("sidecar_variant_weight_ratio", (("model", "classifier"), ("variant", "canary")))] == 0.5
    )

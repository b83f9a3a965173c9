"""Issue #10 failures 3 and 4 on the predict port: the configured ledger is used, only
configured metrics and declared segments are kept, every key and name has a length
bound checked before anything is counted, nothing a client sends pins memory, the
reason's detail is off by default and ReportOutcome takes app credentials."""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from typing import Any

import grpc
import pytest
from conftest import counted, infer_request, stub

from clients.predict import PredictClient
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar._proto.sidecar.v1 import predict_pb2_grpc as pb_grpc
from sidecar.core.experiment import OTHER_SEGMENT, OutcomeLedger
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer, sha256_hex
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar
from sidecar.wiring import Sidecar

MIB = 1 << 20
APP_TOKEN = "test-app-token-0123456789abcdef"
METRICS = [
    {"name": "converted", "kind": "bool", "minimum_effect": 0.05},
    {"name": "revenue", "kind": "number", "minimum_effect": 1.0},
]


def config(up: FaultInjectingUpstream, **extra: Any) -> dict[str, Any]:
    raw = config_dict(
        {"stable": up.address, "canary": up.address},
        weights={"stable": 5000, "canary": 5000},
        experiment={"metrics": METRICS, "segments": ["ios", "web"], "max_requests": 5000},
        drift={"sample_every": 1},
    )
    raw.update(extra)
    return raw


def predict_stub(sc: Sidecar) -> pb_grpc.PredictStub:
    return pb_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))


def request(key: str = "u1", segment: str = "", name: str = "x") -> pb.PredictRequest:
    req = pb.PredictRequest(context=pb.RoutingContext(targeting_key=key, segment=segment))
    tensor = req.inference.inputs.add(name=name, datatype="FP64", shape=[1, 2])
    tensor.contents.fp64_contents.extend([1.0, 2.0])
    return req


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_the_configured_ledger_and_metric_kinds_are_used(
    model_server: FaultInjectingUpstream,
) -> None:
    """The ledger has the configured size, TTL, metrics and segments; a wrongly typed
    first report does not fix a metric's kind; 100 junk metric names are refused with
    INVALID_ARGUMENT naming the configured metrics and lock nothing out."""
    raw = config(model_server)
    raw["experiment"]["ttl_seconds"] = 120.0
    async with running_sidecar(raw) as sc:
        ledger = sc.dataplane.outcomes
        assert (ledger.max_requests, ledger.ttl) == (5000, 120.0)
        assert dict(ledger.kinds) == {"converted": "bool", "revenue": "number"}
        client = predict_stub(sc)
        reply = await client.Predict(request())
        wrong = pb.ReportOutcomeRequest(
            request_id=reply.request_id, metric="converted", number_value=1.0
        )
        error = await refused(client.ReportOutcome(wrong))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bool" in (error.details() or "")
        before = counted(sc)
        for i in range(100):
            junk = pb.ReportOutcomeRequest(
                request_id=reply.request_id, metric=f"junk-{i}", bool_value=True
            )
            error = await refused(client.ReportOutcome(junk))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'junk-99' is not configured" in (error.details() or "")
        assert "converted, revenue" in (error.details() or "")
        assert counted(sc) == before
        for metric, value in (
            ("converted", {"bool_value": True}),
            ("revenue", {"number_value": 2.0}),
        ):
            answer = await client.ReportOutcome(
                pb.ReportOutcomeRequest(request_id=reply.request_id, metric=metric, **value)
            )
            assert answer.counted
        assert dict(ledger.kinds) == {"converted": "bool", "revenue": "number"}


async def test_keys_and_names_over_their_bound_are_refused_and_count_nothing(
    model_server: FaultInjectingUpstream,
) -> None:
    """Targeting keys, segments, request ids and metric names over 256 bytes (UTF-8), and
    tensor names over 256 bytes, get INVALID_ARGUMENT with a short message naming the
    field and the bound; nothing is counted. 256 bytes exactly is served."""
    async with running_sidecar(config(model_server)) as sc:
        client = predict_stub(sc)
        ok = await client.Predict(request(key="k" * 256, segment="s" * 256, name="n" * 256))
        before = counted(sc)
        cases = [
            (client.Predict(request(key="k" * 257)), "targeting key"),
            (client.Predict(request(key="é" * 129)), "targeting key"),  # 258 bytes
            (client.Predict(request(segment="s" * MIB)), "segment"),
            (client.Predict(request(name="n" * MIB)), "name is 1048576 bytes"),
            (
                stub(sc.predict_port).ModelInfer(
                    infer_request(), metadata=(("x-user-id", "k" * 300),)
                ),
                "x-user-id",
            ),
            (
                client.ReportOutcome(
                    pb.ReportOutcomeRequest(
                        request_id="r" * MIB, metric="converted", bool_value=True
                    )
                ),
                "request_id",
            ),
            (
                client.ReportOutcome(
                    pb.ReportOutcomeRequest(
                        request_id=ok.request_id, metric="m" * MIB, bool_value=True
                    )
                ),
                "metric",
            ),
        ]
        for call, field in cases:
            error = await refused(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            details = error.details() or ""
            assert field in details and len(details) < 200, details
        assert counted(sc) == before


def ledger_bytes(ledger: OutcomeLedger) -> int:
    """Bytes the ledger holds per entry and counter (sys.getsizeof sums)."""
    total = sys.getsizeof(ledger._served) + sys.getsizeof(ledger._tally)
    for rid, served in ledger._served.items():
        total += sys.getsizeof(rid) + sys.getsizeof(served) + sys.getsizeof(served.segment)
        total += sys.getsizeof(served.unit)
    for key, tally in ledger._tally.items():
        total += sys.getsizeof(key) + sys.getsizeof(tally)
    return total


async def test_unique_huge_segments_tensor_names_and_metrics_pin_no_memory(
    model_server: FaultInjectingUpstream,
) -> None:
    """The issue's memory attack: unique 1 MiB segments, tensor names and metric names
    (40 of each: 120 MiB sent) are refused and leave nothing behind (tracemalloc); then
    1,200 unique tensor names and 120 unique segments and keys of the largest size
    allowed (256 bytes) are served: the ledger keeps "other" and key hashes (its bytes
    match ordinary traffic's), drift keeps at most 1,024 hashes of skipped names."""
    async with running_sidecar(config(model_server)) as sc:
        client = predict_stub(sc)
        ordinary = await client.Predict(request())
        drift = sc.insights.drift
        assert drift is not None
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            for call in (
                client.Predict(request(segment=f"{i:08d}".ljust(MIB, "s"))),
                client.Predict(request(name=f"{i:08d}".ljust(MIB, "n"))),
                client.ReportOutcome(
                    pb.ReportOutcomeRequest(
                        request_id=ordinary.request_id,
                        metric=f"{i:08d}".ljust(MIB, "m"),
                        bool_value=True,
                    )
                ),
            ):
                assert (await refused(call)).code() == grpc.StatusCode.INVALID_ARGUMENT
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.stop()
        assert grown < 4 * MIB, grown  # 120 MiB were sent

        baseline = OutcomeLedger(kinds={"converted": "bool"}, segments=["ios"], max_per_key=20)
        for i in range(120):
            req = request(key=f"{i:08d}".ljust(256, "k"), segment=f"{i:08d}".ljust(256, "s"))
            for j in range(10):  # BYTES inputs: not monitored, their names skipped
                extra = req.inference.inputs.add(
                    name=f"{i:05d}-{j}".ljust(256, "t"), datatype="BYTES", shape=[1]
                )
                extra.contents.bytes_contents.append(b"x")
            reply = await client.Predict(req)
            await client.ReportOutcome(
                pb.ReportOutcomeRequest(
                    request_id=reply.request_id, metric="converted", bool_value=True
                )
            )
            baseline.admit(f"u{i}", 1)  # the same work on short, ordinary keys
            baseline.remember(reply.request_id, reply.variant, "tablet", 0.0, 1, f"u{i}")
            baseline.report(reply.request_id, "converted", True, 0.0)
        ledger = sc.dataplane.outcomes
        served = [s for rid, s in ledger._served.items() if rid != ordinary.request_id]
        assert {s.segment for s in served} == {OTHER_SEGMENT}
        assert ledger_bytes(ledger) <= ledger_bytes(baseline) + 2048
        report = await asyncio.to_thread(drift.report)
        tracker = drift.tracker
        assert report.drift.skipped_features == 1024  # 1,200 names: the count saturates
        assert all(isinstance(h, int) for h in tracker._skipped_names)
        held = sys.getsizeof(tracker._skipped_names) + sum(
            sys.getsizeof(h) for h in tracker._skipped_names
        )
        assert held < 100 * 1024, held  # not 1,024 names: 1,024 hashes
        assert [f.name for f in report.drift.features if f.kind == "input"] == ["x[0]", "x[1]"]


async def test_reason_detail_is_off_by_default(model_server: FaultInjectingUpstream) -> None:
    """Predict answers variant and reason but not the bucket and split, unless
    `predict.expose_reason_detail` is on (for debugging)."""
    async with running_sidecar(config(model_server)) as sc:
        plain = await predict_stub(sc).Predict(request())
    assert plain.reason == pb.REASON_SPLIT and plain.variant and plain.reason_detail == ""
    raw = config(model_server, predict={"expose_reason_detail": True})
    async with running_sidecar(raw) as sc:
        detailed = await predict_stub(sc).Predict(request())
    assert "bucket" in detailed.reason_detail and detailed.variant == plain.variant


async def test_report_outcome_needs_an_app_token_when_configured(
    model_server: FaultInjectingUpstream,
) -> None:
    """With `predict.auth.tokens`: Predict and ModelInfer stay open; ReportOutcome without
    a token, with an unknown one or with a Control token is UNAUTHENTICATED and counts
    nothing; with the app token (also through `PredictClient(token=...)`) it counts. The
    app token opens nothing on Control."""
    tokens = [{"name": "shop", "token_sha256": sha256_hex(APP_TOKEN)}]
    async with running_sidecar(config(model_server, predict={"auth": {"tokens": tokens}})) as sc:
        client = predict_stub(sc)
        reply = await client.Predict(request())
        await stub(sc.predict_port).ModelInfer(infer_request())
        report = pb.ReportOutcomeRequest(
            request_id=reply.request_id, metric="converted", bool_value=True
        )
        before = counted(sc)
        for metadata in ((), bearer("not-a-known-token-at-all"), bearer(OPERATOR_TOKEN)):
            error = await refused(client.ReportOutcome(report, metadata=metadata))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert counted(sc) == before
        answer = await client.ReportOutcome(report, metadata=bearer(APP_TOKEN))
        assert answer.counted and answer.variant == reply.variant
        control = cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))
        error = await refused(control.GetState(cpb.GetStateRequest(), metadata=bearer(APP_TOKEN)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

        def with_client() -> tuple[str, str]:
            with PredictClient(f"127.0.0.1:{sc.predict_port}", token=APP_TOKEN) as app:
                p = app.predict({"x": [[1.0, 2.0]]}, targeting_key="u2", segment="ios")
                return app.report_outcome(p.request_id, "revenue", 3.0)

        assert (await asyncio.to_thread(with_client))[1] == "ios"

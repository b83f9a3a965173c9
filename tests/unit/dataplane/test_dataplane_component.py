"""The request path in one process: routing, metadata, deadlines, errors, shadow bounds.

Upstreams here are fault-injecting scripted servers (real gRPC on 127.0.0.1:0); the
integration tests run the same paths against MLServer. Time-dependent behaviour (the
shadow breaker, latency, the outcome TTL) is driven directly on a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from conftest import infer_request, stub

from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc, predict_pb2, predict_pb2_grpc
from sidecar.app.dataplane import DataPlane, Served
from sidecar.app.mirror import ShadowMirror
from sidecar.app.state import StateHolder
from sidecar.config import ShadowConfig, UpstreamConfig, VariantSpec, parse_config
from sidecar.core.experiment import OutcomeLedger
from sidecar.core.shadow import Comparison
from sidecar.errors import NotFound, UpstreamError
from sidecar.testing.clock import FakeClock
from sidecar.testing.credentials import VIEWER_TOKEN, bearer
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar


def two_variants(upstream: FaultInjectingUpstream, /, **extra: object) -> dict[str, object]:
    return config_dict(
        {"stable": upstream.address, "canary": upstream.address},
        weights={"stable": 5000, "canary": 5000},
        **extra,
    )


async def test_front_door_returns_variant_and_request_id_metadata(
    model_server: FaultInjectingUpstream,
) -> None:
    """ModelInfer answers with the chosen variant's output and x-variant / x-request-id."""
    async with running_sidecar(two_variants(model_server)) as sc:
        client = stub(sc.predict_port)
        seen = set()
        for i in range(40):
            call = client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
            reply = await call
            md = dict(await call.trailing_metadata())
            label = reply.outputs[0].contents.int64_contents[0]
            assert label == {"stable": 1, "canary": 2}[md["x-variant"]]
            assert reply.model_name == "classifier"
            assert len(md["x-request-id"]) == 32
            seen.add(md["x-variant"])
        assert seen == {"stable", "canary"}


async def test_same_user_always_gets_the_same_variant(model_server: FaultInjectingUpstream) -> None:
    """Assignment is sticky per targeting key across requests."""
    async with running_sidecar(two_variants(model_server)) as sc:
        client = stub(sc.predict_port)
        for user in ("alice", "bob", "carol"):
            variants = set()
            for _ in range(5):
                call = client.ModelInfer(infer_request(), metadata=(("x-user-id", user),))
                await call
                variants.add(dict(await call.trailing_metadata())["x-variant"])
            assert len(variants) == 1


OUTCOME_METRICS = {
    "metrics": [
        {"name": "click", "kind": "bool", "minimum_effect": 0.05},
        {"name": "revenue", "kind": "number", "minimum_effect": 1.0},
    ]
}


async def test_predict_returns_routing_decision(model_server: FaultInjectingUpstream) -> None:
    """Predict answers with outputs, variant, model version, request id and reason (and
    the reason's detail when `predict.expose_reason_detail` is on)."""
    raw = two_variants(
        model_server, experiment=OUTCOME_METRICS, predict={"expose_reason_detail": True}
    )
    raw["flag"]["user_overrides"] = {"vip": "canary"}  # type: ignore[index]
    async with running_sidecar(raw) as sc:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        client = predict_pb2_grpc.PredictStub(channel)
        request = predict_pb2.PredictRequest(
            context=predict_pb2.RoutingContext(targeting_key="vip"),
            inference=predict_pb2.InferRequest.FromString(infer_request().SerializeToString()),
        )
        reply = await client.Predict(request)
        assert reply.variant == "canary"
        assert reply.reason == predict_pb2.REASON_USER_OVERRIDE
        assert reply.model_version == "canary"
        assert reply.inference.outputs[0].contents.int64_contents[0] == 2
        assert "override" in reply.reason_detail
        assert reply.request_id
        outcome = await client.ReportOutcome(
            predict_pb2.ReportOutcomeRequest(
                request_id=reply.request_id, metric="click", bool_value=True
            )
        )
        assert outcome.variant == "canary"
        again = await client.ReportOutcome(
            predict_pb2.ReportOutcomeRequest(
                request_id=reply.request_id, metric="click", bool_value=True
            )
        )
        assert again.variant == "canary"  # idempotent: counted once
        counters = sc.dataplane.outcomes.counters[("click", "canary", "")]
        assert (counters.n, counters.successes) == (1, 1)
        bad = [
            (predict_pb2.ReportOutcomeRequest(request_id="nope", metric="click", bool_value=True), grpc.StatusCode.NOT_FOUND),
            (predict_pb2.ReportOutcomeRequest(request_id=reply.request_id, metric="click", number_value=2.0), grpc.StatusCode.INVALID_ARGUMENT),
            (predict_pb2.ReportOutcomeRequest(request_id=reply.request_id, metric="click"), grpc.StatusCode.INVALID_ARGUMENT),
        ]  # fmt: skip
        for req, code in bad:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ReportOutcome(req)
            assert info.value.code() == code
        assert sc.dataplane.outcomes.counters[("click", "canary", "")].n == 1


async def test_caller_deadline_is_honoured_and_capped(model_server: FaultInjectingUpstream) -> None:
    """The upstream sees the caller's deadline, capped by upstream.max_deadline."""
    raw = two_variants(model_server, upstream={"max_deadline": 2.0, "default_deadline": 1.0})
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)

        def last_infer_deadline() -> float | None:
            return [r for r in model_server.seen if r.method == "ModelInfer"][-1].time_remaining

        await client.ModelInfer(infer_request(), timeout=60)
        capped = last_infer_deadline()
        await client.ModelInfer(infer_request(), timeout=0.5)
        honoured = last_infer_deadline()
        await client.ModelInfer(infer_request())
        default = last_infer_deadline()
    # grpc-timeout travels rounded up to its unit, hence the small allowance.
    assert capped is not None and 1.0 < capped <= 2.05
    assert honoured is not None and honoured <= 0.55
    assert default is not None and 0.55 < default <= 1.05


async def test_slow_upstream_gives_deadline_exceeded(model_server: FaultInjectingUpstream) -> None:
    """An upstream slower than the caller's deadline ends in DEADLINE_EXCEEDED."""
    async with running_sidecar(two_variants(model_server)) as sc:
        model_server.inject(Fault(delay=1.0))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(sc.predict_port).ModelInfer(infer_request(), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_trace_continues_to_the_upstream(model_server: FaultInjectingUpstream) -> None:
    """An incoming W3C traceparent continues. Without an exporter (here) the sidecar's
    spans are never exported, so the upstream gets the caller's context as it came (same
    trace, the caller's span as parent: no parent that no backend ever sees); with an
    exporter the sidecar's CLIENT span is the parent (tests/integration/test_tracing_mlserver)."""
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with running_sidecar(two_variants(model_server)) as sc:
        await stub(sc.predict_port).ModelInfer(infer_request(), metadata=(("traceparent", tp),))
    infers = [r for r in model_server.seen if r.method == "ModelInfer"]
    sent = infers[-1].metadata.get("traceparent", "")
    assert sent == tp


async def test_upstream_status_passes_through(model_server: FaultInjectingUpstream) -> None:
    """A model's NOT_FOUND stays NOT_FOUND, with the variant named in the message."""
    async with running_sidecar(two_variants(model_server)) as sc:
        model_server.inject(Fault(status=grpc.StatusCode.NOT_FOUND, message="no such model"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(sc.predict_port).ModelInfer(infer_request(), metadata=(("x-user-id", "a"),))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no such model" in (info.value.details() or "")
        assert "variant" in (info.value.details() or "")


async def test_unreachable_upstream_is_unavailable_naming_the_variant(
    model_server: FaultInjectingUpstream,
) -> None:
    """A stopped upstream gives UNAVAILABLE and the message names the variant."""
    raw = config_dict(
        {"stable": model_server.address, "canary": "127.0.0.1:1"},
        weights={"stable": 0, "canary": 10_000},
    )
    async with running_sidecar(raw) as sc:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(sc.predict_port).ModelInfer(infer_request(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "variant 'canary'" in (info.value.details() or "")


BAD_REQUESTS = [
    ("unknown model", {"model": "nope"}, grpc.StatusCode.NOT_FOUND, "not served here"),
    ("missing inputs", {"inputs": 0}, grpc.StatusCode.INVALID_ARGUMENT, "missing inputs"),
    ("wrong datatype", {"datatype": "FLOAT"}, grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
    ("shape mismatch", {"shape": [2, 4]}, grpc.StatusCode.INVALID_ARGUMENT, "needs 8 elements"),
    ("contents field", {"datatype": "INT64"}, grpc.StatusCode.INVALID_ARGUMENT, "int64_contents"),
]


@pytest.mark.parametrize(("name", "change", "code", "text"), BAD_REQUESTS)
async def test_malformed_predict_requests_get_clear_status(
    model_server: FaultInjectingUpstream,
    name: str,
    change: dict[str, object],
    code: grpc.StatusCode,
    text: str,
) -> None:
    """The Predict API checks tensors itself: refused before any upstream call, with a
    clear message. (The front door forwards bytes: tensors are the upstream's to check.)"""
    req = infer_request(model=str(change.get("model", "classifier")))
    if change.get("inputs") == 0:
        del req.inputs[:]
    if "datatype" in change:
        req.inputs[0].datatype = str(change["datatype"])
    if "shape" in change:
        req.inputs[0].shape[:] = change["shape"]  # type: ignore[index]
    async with running_sidecar(two_variants(model_server)) as sc:
        before = model_server.calls.get("ModelInfer", 0)
        client = predict_pb2_grpc.PredictStub(
            grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        )
        request = predict_pb2.PredictRequest(
            inference=predict_pb2.InferRequest.FromString(req.SerializeToString())
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.Predict(request)
        assert info.value.code() == code, name
        assert text in (info.value.details() or ""), info.value.details()
        assert model_server.calls.get("ModelInfer", 0) == before
        assert sum(sc.dataplane.served.values()) == 0


FRONT_DOOR_REFUSED = [
    ("unknown model", infer_request(model="nope").SerializeToString(), grpc.StatusCode.NOT_FOUND, "not served here"),
    ("truncated", infer_request().SerializeToString()[:-3], grpc.StatusCode.INVALID_ARGUMENT, "past the end"),
    ("bad varint", b"\x0a" + b"\xff" * 11, grpc.StatusCode.INVALID_ARGUMENT, "varint"),
    ("unterminated group", b"\x0b", grpc.StatusCode.INVALID_ARGUMENT, "wire type 3"),
    ("name not utf-8", b"\x0a\x02\xff\xfe", grpc.StatusCode.INVALID_ARGUMENT, "UTF-8"),
    # field 1 as a varint is an unknown field to protobuf (and to the upstream): no name
    ("name as varint", b"\x08\x01", grpc.StatusCode.NOT_FOUND, "model '' is not served"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "body", "code", "text"), FRONT_DOOR_REFUSED)
async def test_front_door_refuses_what_the_scan_cannot_read(
    model_server: FaultInjectingUpstream, name: str, body: bytes, code: grpc.StatusCode, text: str
) -> None:
    """A body whose top level is malformed, or that names another model, is refused by
    the sidecar (raw bytes through a generic call): no upstream call, nothing counted."""
    async with running_sidecar(two_variants(model_server)) as sc:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        raw = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(body, metadata=(("x-user-id", "a"),))
        assert info.value.code() == code, name
        assert text in (info.value.details() or ""), info.value.details()
        assert model_server.calls.get("ModelInfer", 0) == 0
        assert sum(sc.dataplane.served.values()) == 0
        assert len(sc.dataplane.outcomes) == 0


async def test_front_door_passes_the_upstreams_invalid_argument_through(
    model_server: FaultInjectingUpstream,
) -> None:
    """Tensor validation on the front door is the upstream's: its INVALID_ARGUMENT comes
    back unchanged with the variant named, and nothing is counted as served."""
    async with running_sidecar(two_variants(model_server)) as sc:
        model_server.inject(
            Fault(status=grpc.StatusCode.INVALID_ARGUMENT, message="shape [2, 4] needs 8")
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(sc.predict_port).ModelInfer(infer_request(), metadata=(("x-user-id", "a"),))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "shape [2, 4] needs 8" in (info.value.details() or "")
        assert "variant" in (info.value.details() or "")
        assert model_server.calls.get("ModelInfer", 0) == 1
        assert sum(sc.dataplane.served.values()) == 0
        assert len(sc.dataplane.outcomes) == 0


async def test_oversized_message_is_resource_exhausted(
    model_server: FaultInjectingUpstream,
) -> None:
    """A request above server.max_message_bytes gets RESOURCE_EXHAUSTED."""
    raw = two_variants(model_server, server={"max_message_bytes": 64 * 1024})
    async with running_sidecar(raw) as sc:
        big = infer_request(rows=4096)  # 4096 * 4 doubles = 128 KiB
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub(sc.predict_port).ModelInfer(big)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def shadow_report(port: int) -> control_pb2.ShadowReport:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    report: control_pb2.ShadowReport = await control_pb2_grpc.ControlStub(channel).GetShadowReport(
        control_pb2.GetShadowReportRequest(), metadata=bearer(VIEWER_TOKEN)
    )
    return report


async def wait_shadow_settled(port: int, sent: int) -> control_pb2.ShadowReport:
    for _ in range(100):
        report = await shadow_report(port)
        if report.compared + sum(report.errors_by_status.values()) >= sent:
            return report
        await asyncio.sleep(0.05)
    return await shadow_report(port)


async def test_shadow_agreement_recorded(
    model_server: FaultInjectingUpstream, shadow_server: FaultInjectingUpstream
) -> None:
    """Shadow answers are compared with the primary's: stable agrees, canary disagrees."""
    raw = two_variants(
        model_server, shadow={"variant": "shadow", "sample_bp": 10_000, "keep_examples": 5}
    )
    raw["variants"]["shadow"] = {  # type: ignore[index]
        "address": shadow_server.address, "model_name": "classifier", "model_version": "shadow",
    }  # fmt: skip
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)
        variants = []
        for i in range(60):
            call = client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
            await call
            variants.append(dict(await call.trailing_metadata())["x-variant"])
        report = await wait_shadow_settled(sc.control_port, 60)
    assert report.sampled == report.sent == report.compared == 60
    assert report.agreed == variants.count("stable")
    assert 0 < report.agreement_rate < 1
    assert len(report.examples) == 5
    assert all(e.primary_variant == "canary" for e in report.examples)
    assert "predict" in report.examples[-1].detail


async def test_hanging_shadow_is_bounded_and_never_delays_primary(
    model_server: FaultInjectingUpstream, shadow_server: FaultInjectingUpstream
) -> None:
    """A shadow that never answers: copies beyond max_in_flight are dropped and counted,
    every primary answer is correct, and nothing waits for the shadow."""
    raw = two_variants(
        model_server,
        shadow={"variant": "shadow", "max_in_flight": 4, "deadline": 0.5},
    )
    raw["variants"]["shadow"] = {  # type: ignore[index]
        "address": shadow_server.address, "model_name": "classifier", "model_version": "shadow",
    }  # fmt: skip
    shadow_server.inject(Fault(hang=True))
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)
        replies = await asyncio.gather(
            *(client.ModelInfer(infer_request(), timeout=0.4) for _ in range(20))
        )
        assert all(r.outputs[0].contents.int64_contents[0] in (1, 2) for r in replies)
        report = await shadow_report(sc.control_port)
        assert report.sampled == 20
        assert report.sent == 4 and report.dropped == 16
        assert report.in_flight == 4
        settled = await wait_shadow_settled(sc.control_port, 4)
        assert settled.errors_by_status.get("DEADLINE_EXCEEDED") == 4


async def test_dead_and_failing_shadow_change_nothing(
    model_server: FaultInjectingUpstream, shadow_server: FaultInjectingUpstream
) -> None:
    """A failing, then stopped, shadow: primary answers stay correct; errors are counted."""
    raw = two_variants(model_server, shadow={"variant": "shadow"})
    raw["variants"]["shadow"] = {  # type: ignore[index]
        "address": shadow_server.address, "model_name": "classifier", "model_version": "shadow",
    }  # fmt: skip
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)
        shadow_server.inject(Fault(status=grpc.StatusCode.INTERNAL, message="boom"))
        for i in range(10):
            reply = await client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
            assert reply.outputs[0].contents.int64_contents[0] in (1, 2)
        await wait_shadow_settled(sc.control_port, 10)  # no copy still in flight at stop
        await shadow_server.stop()
        for i in range(10):
            reply = await client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
            assert reply.outputs[0].contents.int64_contents[0] in (1, 2)
        report = await wait_shadow_settled(sc.control_port, 20)
    assert report.errors_by_status.get("INTERNAL") == 10
    assert report.errors_by_status.get("UNAVAILABLE") == 10
    assert report.compared == 0


async def test_shadow_sample_rate_is_respected(
    model_server: FaultInjectingUpstream, shadow_server: FaultInjectingUpstream
) -> None:
    """sample_bp=2000 mirrors about 20% of keyed requests, deterministically per key."""
    raw = two_variants(model_server, shadow={"variant": "shadow", "sample_bp": 2000})
    raw["variants"]["shadow"] = {  # type: ignore[index]
        "address": shadow_server.address, "model_name": "classifier", "model_version": "shadow",
    }  # fmt: skip
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)
        for i in range(500):
            await client.ModelInfer(infer_request(), metadata=(("x-user-id", f"user-{i}"),))
        first = (await shadow_report(sc.control_port)).sampled
        for i in range(500):
            await client.ModelInfer(infer_request(), metadata=(("x-user-id", f"user-{i}"),))
        second = (await shadow_report(sc.control_port)).sampled
    assert abs(first - 100) <= 3 * (500 * 0.2 * 0.8) ** 0.5
    assert second == 2 * first  # the same keys are sampled again


async def test_graceful_stop_drains_in_flight_requests(
    model_server: FaultInjectingUpstream,
) -> None:
    """Stopping with a grace period lets a request already in flight finish."""
    async with running_sidecar(two_variants(model_server)) as sc:
        model_server.inject(Fault(delay=0.5))
        pending = asyncio.ensure_future(
            stub(sc.predict_port).ModelInfer(infer_request(), timeout=5)
        )
        await wait_for(lambda: model_server.calls.get("ModelInfer", 0) >= 1)  # in flight
        await sc.stop(grace=3.0)
        reply = await pending
        assert reply.outputs[0].contents.int64_contents[0] in (1, 2)


class ScriptedShadow:
    """An `Upstream` for the mirror: answers `{}` or fails with `status` while `down`."""

    name = "shadow"

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def infer(self, request: object, *, timeout: float, metadata: object) -> object:
        self.calls += 1
        if self.down:
            raise UpstreamError("down", status="UNAVAILABLE", variant=self.name)
        return object()


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` (yielding to the event loop) until it holds, within `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_dead_shadow_trips_the_breaker() -> None:
    """After breaker_failures consecutive shadow failures, copies are dropped (counted)
    instead of sent, until a probe after the cool-down succeeds (fake clock)."""
    clock = FakeClock(start=0.0)
    shadow = ScriptedShadow()
    mirror: ShadowMirror[object, object] = ShadowMirror(
        ShadowConfig(variant="shadow", breaker_failures=3, breaker_cooldown=0.3),
        shadow,
        lambda _: {},
        salt="s",
        comparator=lambda primary, candidate: Comparison(True, ""),
        clock=clock,
        wall_clock=clock,
    )

    async def offer(key: str) -> None:
        mirror.offer(
            object(), object(), primary_latency=0.01, primary_variant="stable",
            bucketing_key=key, targeting_key=key, request_id=key,
        )  # fmt: skip
        await wait_for(lambda: mirror.in_flight == 0)  # the shadow call has finished

    shadow.down = True
    for i in range(20):
        clock.advance(0.01)
        await offer(f"u{i}")
    tripped = mirror.recorder.summary()
    shadow.down = False
    clock.advance(0.3)  # cool-down over: the next copy is a probe
    for i in range(5):
        await offer(f"v{i}")
    healed = mirror.recorder.summary()
    assert tripped.errors_by_status.get("UNAVAILABLE") == 3
    assert tripped.dropped >= 15 and tripped.sent == 3
    assert healed.compared >= 4  # the probe succeeded and mirroring resumed


async def test_front_door_request_id_takes_outcomes(model_server: FaultInjectingUpstream) -> None:
    """The x-request-id trailer of a ModelInfer answer is the key for ReportOutcome."""
    raw = two_variants(model_server, experiment={**OUTCOME_METRICS, "segments": ["beta"]})
    async with running_sidecar(raw) as sc:
        call = stub(sc.predict_port).ModelInfer(
            infer_request(), metadata=(("x-user-id", "u7"), ("x-segment", "beta"))
        )
        await call
        trailers = dict(await call.trailing_metadata())
        predict = predict_pb2_grpc.PredictStub(
            grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
        )
        outcome = await predict.ReportOutcome(
            predict_pb2.ReportOutcomeRequest(
                request_id=str(trailers["x-request-id"]), metric="revenue", number_value=3.5
            )
        )
    assert outcome.variant == trailers["x-variant"] and outcome.segment == "beta"


class ClockedUpstream:
    """An `Upstream` whose answer takes `latency` seconds of the fake clock."""

    def __init__(self, name: str, clock: FakeClock, latency: float) -> None:
        self.name = name
        self._clock = clock
        self._latency = latency

    async def infer(self, request: object, *, timeout: float, metadata: object) -> str:
        self._clock.advance(self._latency)
        return self.name


async def test_latency_and_outcome_ttl_follow_the_data_plane_clock() -> None:
    """DataPlane driven directly on a fake clock: the latency is the upstream call's time
    on the clock, and an outcome is attributed within the ledger's TTL but NOT_FOUND
    after it."""
    clock = FakeClock(start=0.0)
    flag = parse_config(
        config_dict({"stable": "127.0.0.1:1"}, weights={"stable": 10_000}), "<test>"
    ).flag
    plane: DataPlane[object, str] = DataPlane(
        model="classifier",
        state=StateHolder(flag),
        variants={
            "stable": VariantSpec(name="stable", address="127.0.0.1:1", model_name="classifier")
        },
        upstreams={"stable": ClockedUpstream("stable", clock, 0.25)},
        upstream_config=UpstreamConfig(),
        outcomes=OutcomeLedger(ttl_seconds=60.0, kinds={"revenue": "number"}),
        clock=clock,
    )

    async def serve(key: str) -> Served[str]:
        return await plane.infer(
            object(), targeting_key=key, segment="", time_remaining=None, metadata=()
        )

    first = await serve("u1")
    assert first.response == "stable" and first.latency == 0.25
    clock.advance(59.0)
    assert plane.report_outcome(first.request_id, "revenue", 1.0).variant == "stable"
    second = await serve("u2")
    clock.advance(60.5)
    with pytest.raises(NotFound):
        plane.report_outcome(second.request_id, "revenue", 1.0)
    assert plane.served == {"stable": 2}

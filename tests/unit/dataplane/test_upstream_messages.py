"""What an upstream failure tells the app (the variant, never the address) and the log (the
address, rate-limited); which upstream trailers reach the app. Pure parts directly, the
front door through an in-process sidecar with fault-injecting upstreams."""

from __future__ import annotations

import grpc
import pytest
from conftest import infer_request, stub
from structlog.testing import capture_logs

from sidecar._proto.sidecar.v1 import predict_pb2, predict_pb2_grpc
from sidecar.adapters.upstream.failures import FailureLog, app_message, scrub
from sidecar.adapters.upstream.oip import _finished_trailers
from sidecar.adapters.upstream.trailers import (
    MAX_TRAILER_BYTES,
    MAX_TRAILERS,
    NO_TRAILERS,
    passed_trailers,
)
from sidecar.testing.clock import FakeClock
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar

REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.1.2.3:9501: "
    "Failed to connect to remote host: Connection refused"
)

MESSAGES = [
    # status, upstream details, configured address, expected app message
    ("UNAVAILABLE", REFUSED, "10.1.2.3:9501", "variant 'canary' is unavailable"),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", "models:9501", "variant 'canary' did not answer in time"),
    ("CANCELLED", "Cancelled", "models:9501", "variant 'canary' call was cancelled"),
    ("NOT_FOUND", "Model iris with version v9 not found", "models:9501", "variant 'canary' failed: Model iris with version v9 not found"),
    ("INTERNAL", "peer models:9501 said ipv6:[::1]:9501 broke", "models:9501", "variant 'canary' failed: peer <upstream> said <upstream> broke"),
    ("UNKNOWN", "at 10.0.0.7:80 and [fe80::1]:9000 and dns:models.svc:9000", "x:1", "variant 'canary' failed: at <upstream> and <upstream> and <upstream>"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "details", "address", "expected"), MESSAGES)
def test_app_messages_name_the_variant_never_the_address(
    status: str, details: str, address: str, expected: str
) -> None:
    """Transport failures get a fixed sentence; the model server's own words pass, with
    anything address-like replaced."""
    message = app_message("canary", status, "failed", details, address)
    assert message == expected
    assert address not in message and "10.1.2.3" not in message


def test_scrub_leaves_ordinary_text_alone() -> None:
    """Versions, shapes and counts are not addresses."""
    text = "input-0: expected shape [1, 4], got [2, 4] (v1.2, 3 of 4)"
    assert scrub(text, "models:9501") == text


def test_failure_log_is_rate_limited_per_variant_and_status() -> None:
    """The first failure of a kind is logged at once with the address; the same kind
    again within `every` seconds is counted, and the next line says how many."""
    clock = FakeClock(start=0.0)
    failures = FailureLog(every=10.0, clock=clock)
    with capture_logs() as logs:
        assert failures.failed("canary", "UNAVAILABLE", address="10.1.2.3:9501", details=REFUSED)
        for _ in range(5):
            assert not failures.failed("canary", "UNAVAILABLE", address="10.1.2.3:9501")
        assert failures.failed("canary", "INTERNAL", address="10.1.2.3:9501")  # another kind
        assert failures.failed("stable", "UNAVAILABLE", address="10.9.9.9:1")  # another variant
        clock.advance(10.0)
        assert failures.failed("canary", "UNAVAILABLE", address="10.1.2.3:9501")
    assert [(e["variant"], e["status"], e["suppressed"]) for e in logs] == [
        ("canary", "UNAVAILABLE", 0),
        ("canary", "INTERNAL", 0),
        ("stable", "UNAVAILABLE", 0),
        ("canary", "UNAVAILABLE", 5),
    ]
    assert logs[0]["log_level"] == "warning" and logs[0]["address"] == "10.1.2.3:9501"
    assert logs[0]["details"] == REFUSED


def test_trailers_are_filtered_and_bounded() -> None:
    """gRPC's and HTTP/2's own names and the sidecar's x-variant / x-request-id are
    dropped; the rest pass in order, within the count and byte bounds."""
    raw = [
        ("grpc-status", "0"),
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("x-variant", "forged"),
        ("X-Request-Id", "forged"),
        ("x-model-latency-ms", "3.2"),
        ("x-trace-bin", b"\x00\x01"),
    ]
    assert passed_trailers(raw) == (("x-model-latency-ms", "3.2"), ("x-trace-bin", b"\x00\x01"))
    assert passed_trailers(()) is NO_TRAILERS and passed_trailers(None) is NO_TRAILERS
    assert passed_trailers([("grpc-message", "x")]) is NO_TRAILERS
    many = [(f"x-k{i}", "v") for i in range(100)]
    assert len(passed_trailers(many)) == MAX_TRAILERS
    big = [(f"x-big{i}", "v" * 1000) for i in range(10)]
    kept = passed_trailers(big)
    assert sum(len(k) + len(v) for k, v in kept) <= MAX_TRAILER_BYTES
    assert kept == tuple(big[: len(kept)]) and len(kept) == MAX_TRAILER_BYTES // 1006


async def test_unreachable_upstream_message_has_no_address_and_the_log_has_it(
    model_server: FaultInjectingUpstream,
) -> None:
    """Predict and the front door: UNAVAILABLE naming the variant, not 127.0.0.1:1; the
    sidecar's log names the address (once for the two failures: rate-limited)."""
    raw = config_dict(
        {"stable": model_server.address, "canary": "127.0.0.1:1"},
        weights={"stable": 0, "canary": 10_000},
    )
    async with running_sidecar(raw) as sc:
        with capture_logs() as logs:
            with pytest.raises(grpc.aio.AioRpcError) as front:
                await stub(sc.predict_port).ModelInfer(infer_request(), timeout=5)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
            request = predict_pb2.PredictRequest(
                inference=predict_pb2.InferRequest(model_name="classifier")
            )
            tensor = request.inference.inputs.add(name="input-0", datatype="FP64", shape=[1])
            tensor.contents.fp64_contents.append(1.0)
            with pytest.raises(grpc.aio.AioRpcError) as predict:
                await predict_pb2_grpc.PredictStub(channel).Predict(request, timeout=5)
    for info in (front, predict):
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = info.value.details() or ""
        assert details == "variant 'canary' is unavailable", details
    failed = [e for e in logs if e["event"] == "upstream.failed"]
    assert len(failed) == 1, failed
    assert failed[0]["address"] == "127.0.0.1:1" and failed[0]["variant"] == "canary"
    assert "127.0.0.1:1" in failed[0]["debug"]


async def test_upstream_trailers_reach_the_app_on_success_and_failure(
    model_server: FaultInjectingUpstream,
) -> None:
    """The upstream's trailers come back with ModelInfer's answer and with its failure;
    the sidecar's own x-variant / x-request-id win over the upstream's."""
    trailers = (("x-model-latency-ms", "3"), ("x-variant", "forged"), ("x-cache", "miss"))
    raw = config_dict(
        {"stable": model_server.address, "canary": model_server.address},
        weights={"stable": 10_000, "canary": 0},
    )
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)
        call = client.ModelInfer(infer_request())
        await call
        assert "x-model-latency-ms" not in dict(await call.trailing_metadata())  # none yet
        model_server.inject(Fault(trailers=trailers))
        call = client.ModelInfer(infer_request())
        await call
        got = list(await call.trailing_metadata())
        model_server.inject(
            Fault(status=grpc.StatusCode.INVALID_ARGUMENT, message="bad tensor", trailers=trailers)
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.ModelInfer(infer_request())
    md = dict(got)
    assert md["x-model-latency-ms"] == "3" and md["x-cache"] == "miss"
    assert [v for k, v in got if k == "x-variant"] == ["stable"]
    assert len(md["x-request-id"]) == 32
    failed = list(info.value.trailing_metadata() or ())
    assert ("x-model-latency-ms", "3") in failed and ("x-cache", "miss") in failed
    assert [v for k, v in failed if k == "x-variant"] == ["stable"]
    assert info.value.details() == "variant 'stable' failed: bad tensor"


def test_reading_a_finished_calls_trailers_falls_back_when_grpc_keeps_them_elsewhere() -> None:
    """An object without grpc.aio's finished-call status reads as None (the adapter then
    asks the public `trailing_metadata()`), never as "no trailers"."""

    class Elsewhere:
        async def trailing_metadata(self) -> tuple[()]:
            return ()

    class Odd:
        class _cython_call:  # grpc.aio's attribute name
            class _status:
                @staticmethod
                def trailing_metadata() -> list[tuple[str, str]]:
                    return [("x-a", "1")]  # not the tuple grpc holds: not trusted

    assert _finished_trailers(Elsewhere()) is None
    assert _finished_trailers(Odd()) is None

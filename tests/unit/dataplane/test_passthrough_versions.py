"""The front door for models it does not route (pass-through), explicit versions and the
repository index, in one process.

Upstreams are fault-injecting scripted servers on 127.0.0.1:0 (the routed model answers
label 1 for version "stable", 2 for "canary"); the pass-through upstream records the bytes
it receives. The integration test runs the same paths against one real MLServer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from conftest import counted, infer_request, stub

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.sidecar.v1 import predict_pb2, predict_pb2_grpc
from sidecar.adapters.upstream.passthrough import MAX_TRAILER_BYTES, MAX_TRAILERS, relayed_trailers
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar

OTHER_ANSWER = oip.ModelInferResponse(model_name="other-upstream", model_version="7", id="x")
OTHER_ANSWER.outputs.add(name="out", datatype="INT64", shape=[1]).contents.int64_contents.append(9)
INDEX = oip.RepositoryIndexResponse(
    models=[
        oip.RepositoryIndexResponse.ModelIndex(name="other", version="1", state="READY"),
        oip.RepositoryIndexResponse.ModelIndex(name="classifier", version="x", state="READY"),
    ]
)


class Recorder:
    """A pass-through model server's answers, and every request body it received."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []

    def __call__(self, method: str, data: bytes) -> bytes:
        self.received.append((method, data))
        answers = {
            "ModelInfer": OTHER_ANSWER,
            "ModelReady": oip.ModelReadyResponse(ready=True),
            "ModelMetadata": oip.ModelMetadataResponse(name="other", platform="elsewhere"),
            "RepositoryIndex": INDEX,
        }
        answer: Any = answers.get(method)
        return b"" if answer is None else bytes(answer.SerializeToString())


@pytest.fixture
async def other_server() -> AsyncIterator[tuple[FaultInjectingUpstream, Recorder]]:
    recorder = Recorder()
    async with FaultInjectingUpstream(respond=recorder) as up:
        yield up, recorder


def routed(
    model_server: FaultInjectingUpstream, passthrough: str | None = None, **extra: Any
) -> dict[str, Any]:
    """`classifier` routed: stable (version "stable") 100%, canary (version "canary") 0%."""
    raw = config_dict(
        {"stable": model_server.address, "canary": model_server.address},
        weights={"stable": 10_000, "canary": 0},
        **extra,
    )
    if passthrough is not None:
        raw["passthrough"] = {"address": passthrough}
    return raw


def raw_infer(port: int) -> Any:
    """ModelInfer on the sidecar with bytes in and bytes out (nothing re-serialised)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")


def recorded_variants(sc: Any) -> list[str]:
    """A sink on the span statistics: the variant of every request the windows count."""
    seen: list[str] = []
    sc.stats.sinks.append(lambda variant, end, duration, status: seen.append(variant))
    return seen


async def test_passthrough_sends_and_answers_bytes_unchanged_and_counts_nothing(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """A model no flag routes goes to the pass-through upstream as the caller's bytes (no
    model renamed or appended) and its answer bytes come back as it sent them; no
    variant, window, ledger or experiment counts it."""
    up, recorder = other_server
    async with running_sidecar(routed(model_server, up.address)) as sc:
        seen = recorded_variants(sc)
        before = counted(sc)
        request = infer_request(model="other")
        request.model_version = "3"
        request.id = "caller-id"
        sent = request.SerializeToString() + b"\x12\x01" + b"4"  # a repeated field kept as is
        call = raw_infer(sc.predict_port)(sent, metadata=(("x-user-id", "u1"),))
        answer = await call
        trailers = dict(await call.trailing_metadata())
        assert recorder.received == [("ModelInfer", sent)]
        assert answer == OTHER_ANSWER.SerializeToString()
        assert "x-variant" not in trailers and "x-request-id" not in trailers
        assert counted(sc) == before
        assert seen == [] and model_server.calls.get("ModelInfer", 0) == 0


async def test_passthrough_status_details_and_trailers_pass_through(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """The upstream's failure status, details and trailers reach the caller unchanged;
    its trailers on success too (gRPC's own names dropped)."""
    up, _ = other_server
    async with running_sidecar(routed(model_server, up.address)) as sc:
        client = stub(sc.predict_port)
        up.inject(Fault(trailers=(("x-upstream", "ok"),)))
        call = client.ModelInfer(infer_request(model="other"))
        await call
        assert ("x-upstream", "ok") in tuple(await call.trailing_metadata())
        up.inject(
            Fault(
                status=grpc.StatusCode.NOT_FOUND,
                message="Model other with version 3 not found",
                trailers=(("x-upstream", "no"),),
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.ModelInfer(infer_request(model="other"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "Model other with version 3 not found"
        trailers = dict(info.value.trailing_metadata() or ())
        assert trailers.get("x-upstream") == "no" and "x-variant" not in trailers


async def test_unreachable_passthrough_is_unavailable_without_its_address(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """A pass-through upstream that is down: UNAVAILABLE naming the pass-through model
    server, never its address; the routed model is unaffected."""
    up, _ = other_server
    async with running_sidecar(routed(model_server, up.address)) as sc:
        port = up.port
        await up.stop()
        client = stub(sc.predict_port)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.ModelInfer(infer_request(model="other"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        details = info.value.details() or ""
        assert "pass-through" in details and str(port) not in details
        assert "127.0.0.1" not in details
        reply = await client.ModelInfer(infer_request())
        assert reply.outputs[0].contents.int64_contents[0] == 1


async def test_without_passthrough_unrouted_models_are_not_found(
    model_server: FaultInjectingUpstream,
) -> None:
    """No `passthrough:` configured: infer, ready, metadata, load of another model are
    NOT_FOUND naming what is routed, as before."""
    async with running_sidecar(routed(model_server)) as sc:
        client = stub(sc.predict_port)
        calls = (
            client.ModelInfer(infer_request(model="other")),
            client.ModelReady(oip.ModelReadyRequest(name="other")),
            client.ModelMetadata(oip.ModelMetadataRequest(name="other")),
            client.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="other")),
        )
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert "routes 'classifier'" in (info.value.details() or "")


async def test_passthrough_ready_and_metadata_come_from_the_upstream(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """ModelReady / ModelMetadata of a model not routed here are the upstream's answers,
    the request as the caller sent it (version included, no rename)."""
    up, recorder = other_server
    async with running_sidecar(routed(model_server, up.address)) as sc:
        client = stub(sc.predict_port)
        ready = await client.ModelReady(oip.ModelReadyRequest(name="other", version="3"))
        meta = await client.ModelMetadata(oip.ModelMetadataRequest(name="other"))
        assert ready.ready and meta.platform == "elsewhere" and meta.name == "other"
        asked = oip.ModelReadyRequest.FromString(recorder.received[0][1])
        assert (asked.name, asked.version) == ("other", "3")


async def test_passthrough_calls_in_flight_are_bounded(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """One more pass-through call than `passthrough.max_in_flight` is RESOURCE_EXHAUSTED
    at once; the routed model still answers."""
    up, _ = other_server
    raw = routed(model_server)
    raw["passthrough"] = {"address": up.address, "max_in_flight": 1, "max_deadline": 5.0}
    async with running_sidecar(raw) as sc:
        client = stub(sc.predict_port)
        up.inject(Fault(hang=True))
        hanging = asyncio.ensure_future(client.ModelInfer(infer_request(model="other")))
        for _ in range(500):  # bounded poll: the first call is in flight
            if up.calls.get("ModelInfer", 0):
                break
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.ModelInfer(infer_request(model="other"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "passthrough.max_in_flight" in (info.value.details() or "")
        assert (await client.ModelInfer(infer_request())).outputs
        hanging.cancel()


def predict_request(version: str, user: str = "u1") -> predict_pb2.PredictRequest:
    inference = infer_request()
    inference.model_version = version
    return predict_pb2.PredictRequest(
        context=predict_pb2.RoutingContext(targeting_key=user),
        inference=predict_pb2.InferRequest.FromString(inference.SerializeToString()),
    )


OUTCOMES = {"metrics": [{"name": "click", "kind": "bool", "minimum_effect": 0.05}]}


async def test_requested_version_is_served_by_its_variant_outside_the_experiment(
    model_server: FaultInjectingUpstream,
) -> None:
    """A version that is a served variant's is served by it (the canary at weight 0 too),
    reason VERSION_REQUESTED; counted as that variant's request (served counts, windows),
    never as an assignment of the experiment (its outcome has epoch -1)."""
    async with running_sidecar(routed(model_server, experiment=OUTCOMES)) as sc:
        seen = recorded_variants(sc)
        assigned = dict(sc.experiment.tracker._assigned)
        request = infer_request()
        request.model_version = "canary"
        call = stub(sc.predict_port).ModelInfer(request, metadata=(("x-user-id", "u1"),))
        reply = await call
        assert dict(await call.trailing_metadata())["x-variant"] == "canary"
        assert reply.outputs[0].contents.int64_contents[0] == 2
        assert (reply.model_name, reply.model_version) == ("classifier", "canary")
        client = predict_pb2_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))  # fmt: skip
        answer = await client.Predict(predict_request("canary"))
        assert (answer.variant, answer.reason) == ("canary", predict_pb2.REASON_VERSION_REQUESTED)
        assert answer.model_version == "canary"
        attribution = sc.dataplane.report_outcome(answer.request_id, "click", True)
        assert attribution.variant == "canary" and attribution.epoch == -1
        assert sc.dataplane.served == {"stable": 0, "canary": 2}
        assert seen == ["canary", "canary"]
        assert dict(sc.experiment.tracker._assigned) == assigned
        stable = await client.Predict(predict_request("stable"))
        assert (stable.variant, stable.reason) == ("stable", predict_pb2.REASON_VERSION_REQUESTED)


async def test_unknown_version_is_not_found_and_counts_nothing(
    model_server: FaultInjectingUpstream,
) -> None:
    """A version no served variant has (the shadow's included) is NOT_FOUND naming the
    model and the version, before anything is counted or sent upstream."""
    raw = routed(model_server, shadow={"variant": "shadow", "sample_bp": 0})
    raw["variants"]["shadow"] = {**raw["variants"]["stable"], "model_version": "shadow"}
    async with running_sidecar(raw) as sc:
        seen = recorded_variants(sc)
        before = counted(sc)
        client = stub(sc.predict_port)
        for version in ("v9", "shadow"):
            request = infer_request()
            request.model_version = version
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ModelInfer(request, metadata=(("x-user-id", "u1"),))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert f"model 'classifier' has no version {version!r} here" in (
                info.value.details() or ""
            )
        predict = predict_pb2_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await predict.Predict(predict_request("v9"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert counted(sc) == before and seen == []
        assert model_server.calls.get("ModelInfer", 0) == 0


async def test_a_version_variants_share_is_routed_as_usual_between_them(
    model_server: FaultInjectingUpstream,
) -> None:
    """Stable and canary with one version (on two servers, say): a request naming it is
    split as usual (reason SPLIT, in the experiment), so both serve it; another version is
    still NOT_FOUND."""
    raw = routed(model_server, experiment=OUTCOMES)
    raw["flag"]["weights"] = {"stable": 5_000, "canary": 5_000}
    for name in ("stable", "canary"):
        raw["variants"][name]["model_version"] = "same"
    async with running_sidecar(raw) as sc:
        client = predict_pb2_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))  # fmt: skip
        reasons = set()
        for i in range(40):
            request = predict_request("same")
            request.context.targeting_key = f"user-{i}"
            answer = await client.Predict(request)
            reasons.add(answer.reason)
        assert reasons == {predict_pb2.REASON_SPLIT}
        assert sc.dataplane.served["stable"] > 0 and sc.dataplane.served["canary"] > 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.Predict(predict_request("v9"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_kill_switch_beats_a_requested_version(model_server: FaultInjectingUpstream) -> None:
    """With the kill switch on, a request for the canary's version is served by stable,
    and the answer's model version says so."""
    async with running_sidecar(routed(model_server)) as sc:
        await sc.control.set_kill_switch("ops", "incident", 0, True)
        client = predict_pb2_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))  # fmt: skip
        answer = await client.Predict(predict_request("canary"))
        assert (answer.variant, answer.reason) == ("stable", predict_pb2.REASON_KILL_SWITCH)
        assert answer.model_version == "stable"
        assert answer.inference.outputs[0].contents.int64_contents[0] == 1


async def test_ready_and_metadata_answer_for_the_requested_version(
    model_server: FaultInjectingUpstream,
) -> None:
    """ModelReady / ModelMetadata with a version answer for that variant (metadata named
    as the routed model); an unknown version is not ready and its metadata NOT_FOUND."""
    async with FaultInjectingUpstream(target=model_server.address) as canary_server:
        raw = config_dict(
            {"stable": model_server.address, "canary": canary_server.address},
            weights={"stable": 9_000, "canary": 1_000},
        )
        async with running_sidecar(raw) as sc:
            client = stub(sc.predict_port)

            async def ready(version: str) -> bool:
                reply = await client.ModelReady(oip.ModelReadyRequest(name="classifier", version=version))  # fmt: skip
                return bool(reply.ready)

            assert (await ready(""), await ready("stable"), await ready("canary")) == (True,) * 3
            assert not await ready("v9")
            canary_server.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, methods=frozenset({"ModelReady"})))  # fmt: skip
            assert (await ready("stable"), await ready("canary")) == (True, False)
            meta = await client.ModelMetadata(oip.ModelMetadataRequest(name="classifier", version="canary"))  # fmt: skip
            assert (meta.name, list(meta.versions)) == ("classifier", ["canary"])
            plain = await client.ModelMetadata(oip.ModelMetadataRequest(name="classifier"))
            assert list(plain.versions) == ["stable"]
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ModelMetadata(oip.ModelMetadataRequest(name="classifier", version="v9"))  # fmt: skip
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_repository_index_lists_routed_versions_then_passed_models(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """The index: the routed model once per served variant's version (state from its
    readiness), then the pass-through upstream's entries for models not routed here."""
    up, _ = other_server
    async with FaultInjectingUpstream(target=model_server.address) as canary_server:
        raw = config_dict(
            {"stable": model_server.address, "canary": canary_server.address},
            weights={"stable": 9_000, "canary": 1_000},
            passthrough={"address": up.address},
        )
        async with running_sidecar(raw) as sc:
            client = stub(sc.predict_port)
            index = await client.RepositoryIndex(oip.RepositoryIndexRequest())
            rows = [(m.name, m.version, m.state) for m in index.models]
            assert rows == [
                ("classifier", "stable", "READY"),
                ("classifier", "canary", "READY"),
                ("other", "1", "READY"),
            ]
            canary_server.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, methods=frozenset({"ModelReady"})))  # fmt: skip
            index = await client.RepositoryIndex(oip.RepositoryIndexRequest())
            assert [m.state for m in index.models][:2] == ["READY", "UNAVAILABLE"]
            ready_only = await client.RepositoryIndex(oip.RepositoryIndexRequest(ready=True))
            assert ("classifier", "canary") not in [(m.name, m.version) for m in ready_only.models]


async def test_repository_load_and_unload_refuse_routed_models_and_pass_others(
    model_server: FaultInjectingUpstream, other_server: tuple[FaultInjectingUpstream, Recorder]
) -> None:
    """Load / unload of a routed model (or a variant's upstream model) is
    FAILED_PRECONDITION with nothing sent; of another model it passes through."""
    up, recorder = other_server
    async with running_sidecar(routed(model_server, up.address)) as sc:
        client = stub(sc.predict_port)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.RepositoryModelUnload(oip.RepositoryModelUnloadRequest(model_name="classifier"))  # fmt: skip
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "routed by this sidecar" in (info.value.details() or "")
        assert recorder.received == []
        await client.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name="other"))
        assert [m for m, _ in recorder.received] == ["RepositoryModelLoad"]


def test_relayed_trailers_drop_grpc_names_and_stay_bounded() -> None:
    """gRPC's own, pseudo and hop-by-hop names are dropped; at most MAX_TRAILERS entries
    and MAX_TRAILER_BYTES bytes pass, in the upstream's order."""
    raw = [("grpc-status", "0"), (":path", "/x"), ("content-type", "a"), ("x-a", "1"), ("x-b-bin", b"\x00")]  # fmt: skip
    assert relayed_trailers(raw) == (("x-a", "1"), ("x-b-bin", b"\x00"))
    many = [(f"x-{i}", "v") for i in range(MAX_TRAILERS + 5)]
    assert relayed_trailers(many) == tuple(many[:MAX_TRAILERS])
    big = [("x-big", "é" * (MAX_TRAILER_BYTES // 2)), ("x-small", "1")]
    assert relayed_trailers(big) == () and relayed_trailers(None) == ()

"""Two routed models on one sidecar, in process: each has its own state and audit (its
own SQLite file), Control addresses one model per call by `x-model`, `ListModels` lists
them, outcomes go to the model that served, and metrics and windows keep them apart.
Upstream: one scripted fault-injection server answering per model version."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.predict import PredictClient
from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar._proto.sidecar.v1 import predict_pb2_grpc as pb_grpc
from sidecar.adapters.grpc.models import MAX_MODEL_HEADER_BYTES
from sidecar.testing.credentials import OPERATOR_TOKEN, VIEWER_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.wiring import Sidecar

OPS = bearer(OPERATOR_TOKEN)
VIEW = bearer(VIEWER_TOKEN)
LABELS = {"stable": 1, "canary": 2, "r-stable": 3, "r-canary": 4}


def two_models(up: FaultInjectingUpstream, folder: Path) -> dict[str, Any]:
    raw = config_dict(
        {"stable": up.address, "canary": up.address},
        weights={"stable": 10_000, "canary": 0},
        state={"backend": "sqlite", "path": str(folder / "sidecar.db"),
               "experiment_path": str(folder / "experiment.json")},
        listen={"metrics": "127.0.0.1:0"},
        experiment={"metrics": [{"name": "converted", "kind": "bool", "minimum_effect": 0.05}]},
    )  # fmt: skip
    raw["models"] = {
        "ranker": {
            "variants": {
                "stable": {"address": up.address, "model_name": "rk", "model_version": "r-stable"},
                "canary": {"address": up.address, "model_name": "rk", "model_version": "r-canary"},
            },
            "flag": {
                "key": "ranker-rollout",
                "stable": "stable",
                "canary": "canary",
                "weights": {"stable": 10_000, "canary": 0},
            },
            "experiment": {
                "metrics": [{"name": "clicked", "kind": "bool", "minimum_effect": 0.05}]
            },
        }
    }
    return raw


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with (
        FaultInjectingUpstream(respond=scripted_model(LABELS)) as up,
        running_sidecar(two_models(up, tmp_path)) as sc,
    ):
        yield sc


def control(sc: Sidecar) -> cpb_grpc.ControlStub:
    return cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))


def front_door(sc: Sidecar) -> oip_grpc.GRPCInferenceServiceStub:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}")
    return oip_grpc.GRPCInferenceServiceStub(channel)


async def answer(sc: Sidecar, model: str, user: str) -> tuple[int, str]:
    req = oip.ModelInferRequest(model_name=model)
    req.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1.0)
    call = front_door(sc).ModelInfer(req, metadata=(("x-user-id", user),))
    reply = await call
    variant = str(dict(await call.trailing_metadata())["x-variant"])
    assert reply.model_name == model
    return reply.outputs[0].contents.int64_contents[0], variant


def ranker() -> tuple[tuple[str, str], ...]:
    return (*OPS, ("x-model", "ranker"))


async def test_each_model_answers_from_its_own_variants(sidecar: Sidecar) -> None:
    """The front door routes each model by its own flag to its own upstream models."""
    assert await answer(sidecar, "classifier", "u1") == (1, "stable")
    assert await answer(sidecar, "ranker", "u1") == (3, "stable")


async def test_a_write_with_x_model_changes_only_that_model(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    """`x-model: ranker` weights: the ranker serves its canary, the classifier's state,
    revision and audit are untouched; each model has its own database file."""
    stub = control(sidecar)
    before = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    state = await stub.SetWeights(
        cpb.SetWeightsRequest(reason="ranker canary", weights={"stable": 0, "canary": 10_000}),
        metadata=ranker(),
    )
    assert state.model == "ranker" and dict(state.flag.weights)["canary"] == 10_000
    after = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
    assert after.model == "classifier" and after == before
    assert await answer(sidecar, "ranker", "u2") == (4, "canary")
    assert await answer(sidecar, "classifier", "u2") == (1, "stable")
    primary_audit = await stub.GetAuditLog(cpb.GetAuditLogRequest(), metadata=OPS)
    ranker_audit = await stub.GetAuditLog(cpb.GetAuditLogRequest(), metadata=ranker())
    assert [e.method for e in primary_audit.entries] == ["Initialize"]
    assert [e.method for e in ranker_audit.entries] == ["Initialize", "SetWeights"]
    assert (tmp_path / "sidecar.db").is_file() and (tmp_path / "sidecar.ranker.db").is_file()


async def test_an_unknown_model_is_not_found_and_changes_nothing(sidecar: Sidecar) -> None:
    """`x-model` naming a model that is not routed: NOT_FOUND naming the routed ones; an
    overlong header: INVALID_ARGUMENT; nothing written."""
    stub = control(sidecar)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SetKillSwitch(
            cpb.SetKillSwitchRequest(reason="x", on=True), metadata=(*OPS, ("x-model", "ghost"))
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'ghost'" in (info.value.details() or "")
    assert "'classifier', 'ranker'" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetState(
            cpb.GetStateRequest(), metadata=(*OPS, ("x-model", "m" * (MAX_MODEL_HEADER_BYTES + 1)))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for model in ("classifier", "ranker"):
        state = await stub.GetState(cpb.GetStateRequest(), metadata=(*OPS, ("x-model", model)))
        assert state.revision == 1 and not state.flag.kill_switch


async def test_list_models_names_every_routed_model_with_its_flag(sidecar: Sidecar) -> None:
    """ListModels (viewer role): each model's flag key, stable, canary, weights, kill
    switch and revision, the primary first and marked."""
    stub = control(sidecar)
    await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="r", on=True), metadata=ranker())
    listed = await stub.ListModels(cpb.ListModelsRequest(), metadata=VIEW)
    assert [m.name for m in listed.models] == ["classifier", "ranker"]
    primary, other = listed.models
    assert primary.primary and not other.primary
    assert (primary.flag_key, primary.stable, primary.canary) == (
        "classifier-rollout", "stable", "canary",
    )  # fmt: skip
    assert dict(primary.weights) == {"stable": 10_000, "canary": 0}
    assert other.flag_key == "ranker-rollout" and other.kill_switch and other.revision == 2
    assert not primary.kill_switch and primary.revision == 1


async def test_outcomes_go_to_the_ledger_of_the_model_that_served(sidecar: Sidecar) -> None:
    """ReportOutcome with `model`: counted in that model's ledger; the primary's ledger
    does not know the other model's request ids."""
    predict = pb_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.predict_port}"))
    req = pb.PredictRequest()
    req.inference.model_name = "ranker"
    req.inference.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(1)
    req.context.targeting_key = "u9"
    reply = await predict.Predict(req)
    assert reply.variant == "stable" and reply.inference.model_name == "ranker"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await predict.ReportOutcome(
            pb.ReportOutcomeRequest(request_id=reply.request_id, metric="clicked", bool_value=True)
        )
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    counted = await predict.ReportOutcome(
        pb.ReportOutcomeRequest(
            request_id=reply.request_id, metric="clicked", bool_value=True, model="ranker"
        )
    )
    assert counted.variant == "stable" and counted.counted
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await predict.ReportOutcome(
            pb.ReportOutcomeRequest(
                request_id=reply.request_id, metric="clicked", bool_value=True, model="ghost"
            )
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    second = await predict.Predict(req)
    with PredictClient(f"127.0.0.1:{sidecar.predict_port}") as client:
        attributed = await asyncio.to_thread(
            client.report_outcome, second.request_id, "clicked", False, model="ranker"
        )
    assert attributed == ("stable", "")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_and_windows_keep_the_models_apart(sidecar: Sidecar) -> None:
    """3 classifier and 5 ranker requests, both served by a variant named `stable`: each
    model's window and request counter has its own count."""
    for i in range(3):
        await answer(sidecar, "classifier", f"c{i}")
    for i in range(5):
        await answer(sidecar, "ranker", f"r{i}")
    name = "sidecar_requests_total"

    def count(model: str, version: str) -> float:
        labels = (("model", model), ("model_version", version), ("status", "OK"))
        return m.get((name, (*labels, ("variant", "stable"))), -1)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:  # the span ends after the answer is sent: poll, bounded
        m = await asyncio.to_thread(scrape, sidecar.metrics.port)
        if (count("classifier", "stable"), count("ranker", "r-stable")) == (3, 5):
            break
        assert loop.time() < deadline, (count("classifier", "stable"), count("ranker", "r-stable"))
        await asyncio.sleep(0.02)
    for model, expected in (("classifier", 3), ("ranker", 5)):
        window = sidecar.unit(model).windows.window("stable", time.time() + 60, 600)
        assert window.requests == expected, model
    assert m[("sidecar_state_revision", (("model", "ranker"),))] == 1

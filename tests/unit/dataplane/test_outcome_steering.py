"""Issue #10, failure 9: one client that knows its arm reports outcomes selectively on
2,000 requests to force Keep A. Honest traffic here: 300 users, the canary converting
60% against the stable's 20% (a clear Ship B). The attack is reproduced against an
undefended sidecar, then shown not to steer the verdict: app credentials refuse the
attacker's reports, and the per-key cap makes one user weigh as one unit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar._proto.sidecar.v1 import predict_pb2_grpc as pb_grpc
from sidecar.testing.credentials import VIEWER_TOKEN, bearer, sha256_hex
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.wiring import Sidecar

APP_TOKEN = "test-app-token-0123456789abcdef"
ATTACK = 2000
HONEST = 300
BATCH = 200  # concurrent calls per batch


@pytest.fixture
async def model() -> AsyncIterator[FaultInjectingUpstream]:
    async with FaultInjectingUpstream(respond=scripted_model({"stable": 1, "canary": 2})) as up:
        yield up


def config(up: FaultInjectingUpstream, **predict: Any) -> dict[str, Any]:
    return config_dict(
        {"stable": up.address, "canary": up.address},
        weights={"stable": 5000, "canary": 5000},
        experiment={
            "metrics": [
                {"name": "converted", "kind": "bool", "minimum_effect": 0.05, "baseline": 0.5}
            ],
            "look_interval": 0.1,
        },
        predict=predict,
    )


def request(key: str) -> pb.PredictRequest:
    req = pb.PredictRequest(context=pb.RoutingContext(targeting_key=key))
    tensor = req.inference.inputs.add(name="x", datatype="FP64", shape=[1, 2])
    tensor.contents.fp64_contents.extend([1.0, 2.0])
    return req


def outcome(reply: pb.PredictResponse, won: bool) -> pb.ReportOutcomeRequest:
    return pb.ReportOutcomeRequest(request_id=reply.request_id, metric="converted", bool_value=won)


async def honest(
    sc: Sidecar, metadata: tuple[tuple[str, str], ...] = (), users: int = HONEST
) -> None:
    """One prediction per user; the app reports the truth: canary 60%, stable 20%."""
    client = pb_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))
    rate = {"stable": 0.2, "canary": 0.6}

    async def one(i: int) -> None:
        reply = await client.Predict(request(f"user-{i}"))
        won = (i * 37 % 100) / 100 < rate[reply.variant]
        await client.ReportOutcome(outcome(reply, won), metadata=metadata)

    for start in range(0, users, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(start + BATCH, users))))


async def attacker(sc: Sidecar, *, key: str) -> dict[str, int]:
    """2,000 predictions with `key` ("": none, each request split on its own); the answer
    names the arm, so the client reports a failure for the canary and a success for the
    stable. Returns how its reports were answered (status name -> count)."""
    client = pb_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))
    answers: dict[str, int] = {}

    async def one() -> None:
        reply = await client.Predict(request(key))
        try:
            await client.ReportOutcome(outcome(reply, reply.variant == "stable"))
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        answers[status] = answers.get(status, 0) + 1

    for _ in range(0, ATTACK, BATCH):
        await asyncio.gather(*(one() for _ in range(BATCH)))
    return answers


async def verdict(sc: Sidecar) -> cpb.MetricResult:
    stub = cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))
    report = await stub.GetExperimentReport(
        cpb.GetExperimentReportRequest(metrics=["converted"]), metadata=bearer(VIEWER_TOKEN)
    )
    result: cpb.MetricResult = report.metrics[0]
    return result


async def test_selective_reports_force_keep_a_on_an_undefended_sidecar(
    model: FaultInjectingUpstream,
) -> None:
    """The reproduction: without credentials, 2,000 keyless requests reported selectively
    turn a clear Ship B into Keep A (each request is its own unit; no cap can help)."""
    async with running_sidecar(config(model, max_per_key=0)) as sc:
        assert await attacker(sc, key="") == {"OK": ATTACK}
        await honest(sc)
        result = await verdict(sc)
    assert result.verdict == cpb.VERDICT_KEEP_A, result.reason


async def test_app_credentials_refuse_the_attackers_reports(model: FaultInjectingUpstream) -> None:
    """With `predict.auth.tokens`, the attacker's reports (no app token) are refused with
    UNAUTHENTICATED and count nothing, its predictions are still served, and the honest
    app (with its token) gets its verdict: Ship B."""
    tokens = [{"name": "shop", "token_sha256": sha256_hex(APP_TOKEN)}]
    async with running_sidecar(config(model, auth={"tokens": tokens})) as sc:
        assert await attacker(sc, key="") == {"UNAUTHENTICATED": ATTACK}
        await honest(sc, metadata=bearer(APP_TOKEN))
        result = await verdict(sc)
    assert result.verdict == cpb.VERDICT_SHIP_B, result.reason
    assert result.control.n + result.treatment.n == HONEST


async def test_one_user_weighs_one_unit_under_the_per_key_cap(
    model: FaultInjectingUpstream,
) -> None:
    """A user in the canary whose 2,000 requests all end in failure (reported by the app,
    so credentials cannot help): without a cap it outweighs the honest users and denies
    them their Ship B (the sample ratio check counts users, so its 2,000 requests are one
    user there and do not block; its 2,000 failures in one user bucket widen the interval
    until the verdict is undecided, or Keep A); with the default cap (20
    per key and epoch) its weight is 20 requests and 20 outcomes of one user, and the honest
    verdict stands: Ship B. Users are the unit, so the attacker's 20 outcomes sit in one
    user bucket and widen the interval as one heavy user does: 600 honest users (not 300)
    keep its 20 outcomes a small share of the canary's."""
    async with running_sidecar(config(model, max_per_key=0)) as sc:
        key = await canary_key(sc)
        await attacker(sc, key=key)
        await honest(sc)
        steered = await verdict(sc)
    # its 2,000 failures deny the honest Ship B (undecided, blocked or steered)
    assert steered.verdict in (
        cpb.VERDICT_CONTINUE,
        cpb.VERDICT_BLOCKED,
        cpb.VERDICT_KEEP_A,
    ), steered.reason
    async with running_sidecar(config(model)) as sc:
        assert await attacker(sc, key=key) == {"OK": ATTACK}
        await honest(sc, users=2 * HONEST)
        result = await verdict(sc)
        stats = sc.dataplane.outcomes.stats()
    assert result.verdict == cpb.VERDICT_SHIP_B, result.reason
    assert result.treatment.n <= 2 * HONEST + 20
    assert result.unit == "user" and result.treatment.users <= 2 * HONEST + 1
    assert stats["capped_assignments"] == ATTACK - 20


async def canary_key(sc: Sidecar) -> str:
    """A targeting key the split sends to the canary (found by asking, as a client can)."""
    client = pb_grpc.PredictStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}"))
    for i in range(100):
        reply = await client.Predict(request(f"mallory-{i}"))
        if reply.variant == "canary":
            return f"mallory-{i}"
    raise AssertionError("no key in the canary within 100 tries")

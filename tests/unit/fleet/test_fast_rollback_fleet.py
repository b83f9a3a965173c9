"""The fast path in a fleet: two sidecars (in process) share their state through a real
redis-server; both see the canary die and each may roll back on its own requests. The
shared audit log holds exactly one Rollback, both members end with the canary at 0%, and
neither raised (a second rollback is a no-op or a revision conflict, taken quietly)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar.core.canary.fastpath import Tally, Trip
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.testing.redis import RedisServer
from sidecar.wiring import Sidecar


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def request() -> oip.ModelInferRequest:
    req = oip.ModelInferRequest(model_name="classifier")
    req.inputs.add(name="input-0", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
        [5.1, 3.5, 1.4, 0.2]
    )
    return req


@contextlib.asynccontextmanager
async def member(
    name: str, stable: str, canary: str, redis_url: str, folder: Path
) -> AsyncIterator[Sidecar]:
    raw = config_dict(
        {"stable": stable, "canary": canary},
        weights={"stable": 5000, "canary": 5000},
        state={
            "backend": "redis",
            "experiment_path": str(folder / f"{name}-experiment.json"),
            "redis": {"url": redis_url, "fleet": f"fast-path-{folder.name}", "member_id": name,
                      "resync_interval": 0.5, "heartbeat_interval": 0.5},
        },
    )  # fmt: skip
    async with running_sidecar(raw) as sidecar:
        yield sidecar


async def test_members_roll_a_dead_canary_back_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Both members serve 50/50; the canary's server starts refusing every call; traffic
    goes on through both members alternately until both hold the canary at 0%."""
    async with (
        FaultInjectingUpstream(respond=scripted_model({"stable": 1})) as stable,
        FaultInjectingUpstream(respond=scripted_model({"canary": 2})) as canary,
        member("a", stable.address, canary.address, redis_server.url, tmp_path) as a,
        member("b", stable.address, canary.address, redis_server.url, tmp_path) as b,
    ):
        stubs = [
            oip_grpc.GRPCInferenceServiceStub(
                grpc.aio.insecure_channel(f"127.0.0.1:{m.predict_port}")
            )
            for m in (a, b)
        ]

        async def send(i: int) -> str:
            try:
                await stubs[i % 2].ModelInfer(request(), metadata=(("x-user-id", f"u{i}"),))
                return "OK"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name

        assert {await send(i) for i in range(40)} == {"OK"}
        canary.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, message="dead"))

        def weights() -> list[int]:
            return [m.control.snapshot().state.weights["canary"] for m in (a, b)]

        outcomes = []
        i = 40
        while weights() != [0, 0] and i < 4000:
            outcomes.append(await send(i))
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # let the members hear Redis's notices
        assert weights() == [0, 0]
        assert outcomes.count("UNAVAILABLE") <= 200
        entries = a.control.store.read_audit(0, 100, 1 << 20)
        rollbacks = [e for e in entries if e.method == "Rollback"]
        assert len(rollbacks) == 1
        assert rollbacks[0].principal == "health-checker"
        assert rollbacks[0].reason.startswith("fast-path: canary failed ")
        fast = [m.fast_rollback for m in (a, b)]
        assert all(f is not None for f in fast)
        assert sum(f.rollbacks for f in fast if f is not None) == 1
        assert [await send(10_000 + j) for j in range(20)] == ["OK"] * 20
        await settled(a, b)


async def test_two_members_rolling_back_at_once_commit_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Both members act on a trip at the same moment, from the same revision: Redis's
    compare-and-set lets one commit; the other's write is a conflict (or, re-checked,
    finds nothing to roll back) and is skipped without raising."""
    async with (
        FaultInjectingUpstream(respond=scripted_model({})) as upstream,
        member("c", upstream.address, upstream.address, redis_server.url, tmp_path) as c,
        member("d", upstream.address, upstream.address, redis_server.url, tmp_path) as d,
    ):
        assert c.fast_rollback is not None and d.fast_rollback is not None
        assert c.control.snapshot().revision == d.control.snapshot().revision
        trip = Trip("canary", "stable", 0.5, 5.0, Tally(20, 20), Tally(30, 0))
        done = await asyncio.gather(c.fast_rollback.act(trip), d.fast_rollback.act(trip))
        assert sorted(done) == [False, True]
        assert c.fast_rollback.skipped + d.fast_rollback.skipped == 1
        entries = c.control.store.read_audit(0, 100, 1 << 20)
        assert [e.method for e in entries].count("Rollback") == 1
        await settled(c, d)


async def settled(*members: Sidecar) -> None:
    """Until every member serves the same revision: an in-process member that stops while
    a change notice is still on its way hangs in `stop` (so does main's code; not this
    test's subject)."""
    deadline = asyncio.get_running_loop().time() + 10
    while len({m.control.snapshot().revision for m in members}) > 1:
        assert asyncio.get_running_loop().time() < deadline, "members did not converge"
        await asyncio.sleep(0.01)

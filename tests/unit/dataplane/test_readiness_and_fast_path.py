"""The overall health status and the fast path, wired in one process: scripted upstreams
(fault injection) on 127.0.0.1:0 and the sidecar as `wiring.build` makes it. The same
paths run against MLServer processes in tests/integration/test_fast_rollback.py and
test_health_readiness.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from conftest import infer_request, stub
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar.app.rollout import HEALTH_CHECKER
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ROUTED_SERVICE = "inference.GRPCInferenceService"


async def wait_for(condition: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll `condition` (yielding to the event loop) until it holds, within `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


async def test_overall_health_follows_the_stable_readiness(
    model_server: FaultInjectingUpstream,
) -> None:
    """The overall status "" is SERVING once started with a ready stable; NOT_SERVING
    (with the routed services) while the stable's ModelReady fails, although the process
    is live (ServerLive, and the health name "liveness"); SERVING again once it answers."""
    raw = config_dict({"stable": model_server.address}, weights={"stable": 10_000})
    async with running_sidecar(raw) as sc:
        port = sc.predict_port
        assert await health(port) == SERVING
        model_server.inject(
            Fault(status=grpc.StatusCode.UNAVAILABLE, methods=frozenset({"ModelReady"}))
        )
        statuses: dict[str, int] = {}

        async def look() -> None:
            statuses[""] = await health(port)
            statuses[ROUTED_SERVICE] = await health(port, ROUTED_SERVICE)
            statuses["liveness"] = await health(port, "liveness")

        for _ in range(1000):
            await look()
            if statuses[""] == NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert statuses == {"": NOT_SERVING, ROUTED_SERVICE: NOT_SERVING, "liveness": SERVING}
        live = await stub(port).ServerLive(oip.ServerLiveRequest(), timeout=5)
        assert live.live
        model_server.heal()
        for _ in range(1000):
            if await health(port) == SERVING:
                break
            await asyncio.sleep(0.05)
        assert await health(port) == SERVING


async def test_a_stopping_sidecar_stays_not_serving(model_server: FaultInjectingUpstream) -> None:
    """Graceful stop sets "" NOT_SERVING at once (a request still in flight), and a
    readiness check meanwhile (the stable answers ready) cannot set it back."""
    raw = config_dict({"stable": model_server.address}, weights={"stable": 10_000})
    async with running_sidecar(raw) as sc:
        request = health_pb2.HealthCheckRequest(service="")

        async def status() -> int:
            return int((await sc.health.Check(request, None)).status)  # type: ignore[arg-type]

        assert await status() == SERVING
        model_server.inject(Fault(delay=1.0))
        pending = asyncio.ensure_future(
            stub(sc.predict_port).ModelInfer(infer_request(), timeout=5)
        )
        await wait_for(lambda: model_server.calls.get("ModelInfer", 0) >= 1)  # in flight
        stopping = asyncio.ensure_future(sc.stop(grace=3.0))
        for _ in range(500):
            if await status() == NOT_SERVING:
                break
            await asyncio.sleep(0.01)
        assert await status() == NOT_SERVING
        liveness = health_pb2.HealthCheckRequest(service="liveness")
        assert (await sc.health.Check(liveness, None)).status == NOT_SERVING  # type: ignore[arg-type]
        assert not pending.done()
        sc._all_ready = None  # published again: the stable answers ready ...
        assert await sc.refresh_readiness() is True
        assert await status() == NOT_SERVING  # ... and "" stays NOT_SERVING
        assert (await pending).outputs  # drained
        await stopping


async def test_a_dead_canary_is_rolled_back_by_the_fast_path() -> None:
    """Stable and canary on separate scripted servers, 50/50; the canary's server starts
    failing every call with UNAVAILABLE: the sidecar rolls back by itself long before its
    60 s judge would look, as health-checker with the fast path's reason; the canary's
    failures stop there (bounded), and the stable never failed."""
    async with (
        FaultInjectingUpstream(respond=scripted_model({"stable": 1})) as stable,
        FaultInjectingUpstream(respond=scripted_model({"canary": 2})) as canary,
    ):
        raw = config_dict(
            {"stable": stable.address, "canary": canary.address},
            weights={"stable": 5000, "canary": 5000},
        )
        async with running_sidecar(raw) as sc:
            client = stub(sc.predict_port)
            outcomes: list[str] = []

            async def send(i: int) -> None:
                call = client.ModelInfer(infer_request(), metadata=(("x-user-id", f"u{i}"),))
                try:
                    await call
                    outcomes.append(dict(await call.trailing_metadata())["x-variant"])
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code().name)

            for i in range(100):
                await send(i)
            assert set(outcomes) == {"stable", "canary"}
            canary.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, message="dead"))
            i = 100
            while sc.control.snapshot().state.weights["canary"] > 0 and i < 5000:
                await send(i)
                i += 1
            state = sc.control.snapshot().state
            assert state.weights["canary"] == 0 and state.updated_by == HEALTH_CHECKER
            assert state.update_reason.startswith("fast-path: canary failed ")
            failed = outcomes.count("UNAVAILABLE")
            assert 10 <= failed <= 100, failed  # >= 50% of >= 20 requests
            assert sc.fast_rollback is not None and sc.fast_rollback.rollbacks == 1
            before = len(outcomes)
            for j in range(50):
                await send(10_000 + j)
            assert outcomes[before:] == ["stable"] * 50

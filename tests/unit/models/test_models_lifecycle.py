"""Several routed models in one process: the routed services' health is SERVING only
while every routed model's stable variant is ready (`Sidecar.all_ready`), WatchState
streams the addressed model's states, SIGHUP applies a model's live fields to it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.config import load_config
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer
from sidecar.testing.fault_upstream import Fault, FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.wiring import Sidecar, build

OPS = bearer(OPERATOR_TOKEN)
SERVICE = "inference.GRPCInferenceService"


def config(primary: str, ranker: str) -> dict[str, Any]:
    raw = config_dict({"stable": primary}, weights={"stable": 10_000})
    raw["models"] = {
        "ranker": {
            "variants": {"stable": {"address": ranker, "model_name": "rk"}},
            "flag": {"key": "ranker-rollout", "stable": "stable", "weights": {"stable": 10_000}},
        }
    }
    return raw


async def service_status(sc: Sidecar) -> int:
    """The service's health status; -1 before the first readiness was published."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.predict_port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return -1
    return int(answer.status)


async def until(sc: Sidecar, status: int, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await service_status(sc) != status:
        assert loop.time() < deadline, f"health of {SERVICE} never became {status}"
        await asyncio.sleep(0.05)


async def test_health_needs_every_routed_models_stable() -> None:
    """The ranker's model server stops being ready: the routed services go NOT_SERVING
    although the primary's stable is ready; back to SERVING when it heals."""
    async with (
        FaultInjectingUpstream(respond=scripted_model({})) as primary,
        FaultInjectingUpstream(respond=scripted_model({})) as ranker,
        running_sidecar(config(primary.address, ranker.address)) as sc,
    ):
        await until(sc, health_pb2.HealthCheckResponse.SERVING)
        assert sc.all_ready()
        ranker.inject(Fault(status=grpc.StatusCode.UNAVAILABLE, methods=frozenset({"ModelReady"})))
        await until(sc, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert not sc.all_ready()
        assert await sc.unit("classifier").dataplane.stable_ready(1.0)
        ranker.heal()
        await until(sc, health_pb2.HealthCheckResponse.SERVING)


async def test_watch_state_follows_the_addressed_model() -> None:
    """WatchState with `x-model: ranker` streams the ranker's states, not the primary's."""
    async with (
        FaultInjectingUpstream(respond=scripted_model({})) as up,
        running_sidecar(config(up.address, up.address)) as sc,
    ):
        stub = cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sc.control_port}"))
        ranker = (*OPS, ("x-model", "ranker"))
        watch = stub.WatchState(cpb.WatchStateRequest(), metadata=ranker)
        first = await watch.read()
        assert first.model == "ranker" and first.revision == 1
        await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="r", on=True), metadata=ranker)
        second = await asyncio.wait_for(watch.read(), 10)
        assert second.model == "ranker" and second.revision == 2 and second.flag.kill_switch
        watch.cancel()
        primary = await stub.GetState(cpb.GetStateRequest(), metadata=OPS)
        assert primary.revision == 1 and not primary.flag.kill_switch


async def test_sighup_applies_a_models_live_shadow_share_to_that_model_only(
    tmp_path: Path,
) -> None:
    """`models.ranker.shadow.sample_bp` changed in the file: after `reload` the ranker's
    mirror samples the new share, the primary's keeps its own."""
    async with FaultInjectingUpstream(respond=scripted_model({})) as up:
        raw = config(up.address, up.address)
        raw["variants"]["shadow"] = {"address": up.address, "model_name": "c"}  # type: ignore[index]
        raw["shadow"] = {"variant": "shadow", "sample_bp": 100}
        models: Any = raw["models"]
        models["ranker"]["variants"]["shadow"] = {"address": up.address, "model_name": "rk"}
        models["ranker"]["shadow"] = {"variant": "shadow", "sample_bp": 200}
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(raw))
        sc = build(load_config(path))
        await sc.start()
        try:
            models["ranker"]["shadow"]["sample_bp"] = 5000
            path.write_text(yaml.safe_dump(raw))
            sc.reload()
            ranker, primary = sc.unit("ranker").dataplane.mirror, sc.primary.dataplane.mirror
            assert ranker is not None and primary is not None
            assert (ranker.settings.sample_bp, primary.settings.sample_bp) == (5000, 100)
            assert sc.config.for_model("ranker").shadow.sample_bp == 5000  # type: ignore[union-attr]
        finally:
            await sc.stop(grace=1.0)

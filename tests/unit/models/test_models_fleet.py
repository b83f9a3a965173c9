"""Two routed models with `state.backend: redis`: each model's state, audit and members
live under its own fleet key (`<fleet>/<model>`), and `ListFleetMembers` answers per model
through `x-model`. Real redis-server, scripted upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc
from sidecar.testing.credentials import OPERATOR_TOKEN, bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.testing.redis import RedisServer
from sidecar.wiring import Sidecar

OPS = bearer(OPERATOR_TOKEN)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def fleet_config(up: FaultInjectingUpstream, url: str, folder: Path) -> dict[str, Any]:
    raw = config_dict(
        {"stable": up.address, "canary": up.address},
        weights={"stable": 10_000, "canary": 0},
        state={"backend": "redis", "redis": {"url": url, "fleet": "shop", "member_id": "m1"},
               "experiment_path": str(folder / "experiment.json")},
    )  # fmt: skip
    raw["models"] = {
        "ranker": {
            "variants": {
                "stable": {"address": up.address, "model_name": "rk", "model_version": "a"},
                "canary": {"address": up.address, "model_name": "rk", "model_version": "b"},
            },
            "flag": {"key": "ranker-rollout", "stable": "stable", "canary": "canary",
                     "weights": {"stable": 10_000, "canary": 0}},
        }
    }  # fmt: skip
    return raw


@pytest.fixture
async def sidecar(server: RedisServer, tmp_path: Path) -> AsyncIterator[Sidecar]:
    async with (
        FaultInjectingUpstream(respond=scripted_model({})) as up,
        running_sidecar(fleet_config(up, server.url, tmp_path)) as sc,
    ):
        yield sc


async def test_each_model_has_its_own_fleet_keys(sidecar: Sidecar, server: RedisServer) -> None:
    """A write to the ranker lands in `sidecar:{shop/ranker}:*` only; each model's
    `ListFleetMembers` names its own fleet."""
    stub = cpb_grpc.ControlStub(grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.control_port}"))
    ranker = (*OPS, ("x-model", "ranker"))
    await stub.SetKillSwitch(cpb.SetKillSwitchRequest(reason="r", on=True), metadata=ranker)
    client = redis.Redis.from_url(server.url)
    try:
        assert client.hget("sidecar:{shop}:state", "revision") == b"1"
        assert client.hget("sidecar:{shop/ranker}:state", "revision") == b"2"
        assert client.xlen("sidecar:{shop}:audit") == 1
        assert client.xlen("sidecar:{shop/ranker}:audit") == 2
    finally:
        client.close()
    primary = await stub.ListFleetMembers(cpb.ListFleetMembersRequest(), metadata=OPS)
    other = await stub.ListFleetMembers(cpb.ListFleetMembersRequest(), metadata=ranker)
    assert (primary.fleet, other.fleet) == ("shop", "shop/ranker")
    assert (primary.revision, other.revision) == (1, 2)
    assert sidecar.unit("ranker").lead is not None and sidecar.primary.lead is not None

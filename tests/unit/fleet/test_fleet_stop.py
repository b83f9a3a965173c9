"""A fleet member stops when asked, whatever its Redis calls were doing.

redis-py's asyncio client can swallow the cancellation of a command interrupted
mid-read; the fleet loops (lease, statistics, outcome forwarding, membership) then ran on
after `Task.cancel()` and `Sidecar.stop` waited for them for ever. Two members in process
on a real redis-server, one write, both stopped at once: both stop (bounded wait)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model
from sidecar.testing.redis import RedisServer

STOP_BOUND_S = 30.0  # a hang, not a duration: a stop takes well under a second here


def fleet_member(name: str, address: str, url: str, folder: Path) -> dict[str, Any]:
    return config_dict(
        {"stable": address, "canary": address},
        weights={"stable": 5000, "canary": 5000},
        state={
            "backend": "redis",
            "experiment_path": str(folder / f"{name}.json"),
            "redis": {
                "url": url, "fleet": "stop", "member_id": name,
                "resync_interval": 0.5, "heartbeat_interval": 0.5,
            },
        },
    )  # fmt: skip


async def test_two_members_stop_right_after_a_write(tmp_path: Path) -> None:
    stopped: list[str] = []

    async def run() -> None:
        async with FaultInjectingUpstream(respond=scripted_model({})) as up:
            async with (
                running_sidecar(fleet_member("c", up.address, server.url, tmp_path)) as c,
                running_sidecar(fleet_member("d", up.address, server.url, tmp_path)),
            ):
                await c.control.set_weights("ops", "a write", 0, {"stable": 10_000, "canary": 0})
            stopped.append("both")

    with RedisServer() as server:
        await asyncio.wait_for(run(), STOP_BOUND_S)
    assert stopped == ["both"]

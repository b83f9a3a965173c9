"""`sidecarctl --all` through real processes: a real redis-server, three real `sidecar
serve` members on MLServer, the real `sidecarctl`. Each member advertises its Control
address in its heartbeat (listen.control; one through $SIDECAR_ADVERTISE_CONTROL with
port 0, the bound port); `--all status` asked through any one member prints every
member's own answer, labelled; a member that stops is no longer asked; writes refuse --all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from test_fleet_state import USERS, ctl, fleet_config, ok, poll, served_versions, state

from sidecar.testing.credentials import VIEWER_TOKEN
from sidecar.testing.mlserver import MLServerProcess
from sidecar.testing.process import SidecarProcess
from sidecar.testing.redis import RedisServer

pytestmark = pytest.mark.integration


def test_status_all_lists_every_members_answer(
    mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64], tmp_path: Path
) -> None:
    """Each member answers for itself: requests sent to m1 alone show in m1's served
    count only."""
    with RedisServer() as redis_server:
        config = fleet_config(mlserver.grpc_address, redis_server.url, "all")
        m: list[SidecarProcess] = []
        try:
            for i in range(3):
                env = {"SIDECAR_MEMBER_ID": f"m{i}"}
                if i == 2:
                    env["SIDECAR_ADVERTISE_CONTROL"] = "127.0.0.1:0"
                sc = SidecarProcess(config, run_dir=tmp_path / f"member-{i}", extra_env=env)
                m.append(sc.start())

            def listed() -> dict[str, str]:
                fleet = json.loads(ok(ctl(m[0], "fleet", "-o", "json", token=VIEWER_TOKEN)))
                return {x["member_id"]: x["control_address"] for x in fleet["members"] if x["live"]}

            expected = {f"m{i}": sc.control_address for i, sc in enumerate(m)}
            poll(lambda: listed() == expected, what="every member live with its address")

            table = ok(ctl(m[1], "--all", "status", token=VIEWER_TOKEN))
            blocks = table.split("=== ")[1:]
            assert [b.splitlines()[0] for b in blocks] == [
                f"m{i} ({sc.control_address}) ===" for i, sc in enumerate(m)
            ]
            assert all("revision 1" in b for b in blocks)

            served_versions(m[1], iris_x, USERS[:12])  # requests through m1 only
            revision = state(m[0])["revision"]
            answer = json.loads(ok(ctl(m[2], "status", "--all", "-o", "json", token=VIEWER_TOKEN)))
            assert [(x["member_id"], x["control_address"], x["exit_code"]) for x in
                    answer["members"]] == [(f"m{i}", sc.control_address, 0)
                                           for i, sc in enumerate(m)]  # fmt: skip
            assert all(x["answer"]["revision"] == revision for x in answer["members"])
            served = [sum(v["served"] for v in x["answer"]["variants"]) for x in answer["members"]]
            assert served == [0, 12, 0]

            refused = ctl(m[0], "--all", "kill", "on", "--reason", "incident")
            assert refused.returncode == 2 and "read commands only" in refused.stderr
            assert state(m[0])["revision"] == revision  # nothing changed

            m[2].stop()  # a clean stop leaves the registry: no longer asked
            poll(lambda: "m2" not in listed(), what="m2 gone from the registry")
            answer = json.loads(ok(ctl(m[0], "--all", "status", "-o", "json", token=VIEWER_TOKEN)))
            assert [x["member_id"] for x in answer["members"]] == ["m0", "m1"]
        finally:
            for sc in m:
                sc.stop()

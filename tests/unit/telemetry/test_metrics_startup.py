"""/metrics right after start-up: every configured variant's counters exist at zero with
their model_version, beside sidecar_build_info and the process metrics."""

from __future__ import annotations

import asyncio

from test_metrics import scrape

from sidecar import __version__
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model


async def test_counters_of_every_variant_are_zero_before_the_first_request() -> None:
    """No request has been sent: requests, errors and latency series of stable, canary and
    shadow are there at 0, each labelled with its configured model version."""
    async with FaultInjectingUpstream(respond=scripted_model({"v1": 1, "v2": 2})) as up:
        raw = config_dict(
            {
                "stable": (up.address, "v1"),
                "canary": (up.address, "v2"),
                "shadow": (up.address, "v2"),
            },
            weights={"stable": 9000, "canary": 1000},
            shadow={"variant": "shadow"},
            listen={"metrics": "127.0.0.1:0"},
        )
        async with running_sidecar(raw) as sc:
            m = await asyncio.to_thread(scrape, sc.metrics.port)
    for variant, version in (("stable", "v1"), ("canary", "v2"), ("shadow", "v2")):
        labels = (("model", "classifier"), ("model_version", version), ("variant", variant))
        assert m[("sidecar_requests_total", (*labels[:2], ("status", "OK"), labels[2]))] == 0
        assert m[("sidecar_request_errors_total", labels)] == 0
        assert m[("sidecar_request_duration_seconds_count", labels)] == 0
    build = [lb for (name, lb) in m if name == "sidecar_build_info"]
    assert len(build) == 1 and ("version", __version__) in build[0]
    assert m[("sidecar_build_info", build[0])] == 1
    assert m[("process_resident_memory_bytes", ())] > 0
    assert m[("process_open_fds", ())] > 0

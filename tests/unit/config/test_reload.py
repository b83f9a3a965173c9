"""What a SIGHUP reload applies (`sidecar.reload.plan_reload`, `merge`): live fields at
once, the flag never (the stored state wins), everything else only after a restart."""

from __future__ import annotations

import copy
from typing import Any

from test_config import example

from sidecar.config import Config, parse_config
from sidecar.reload import merge, plan_reload


def config(change: dict[str, dict[str, Any]] | None = None) -> Config:
    raw = copy.deepcopy(example())
    for section, values in (change or {}).items():
        raw[section].update(values)
    return parse_config(raw, "<test>")


def test_nothing_changed_is_an_empty_plan() -> None:
    plan = plan_reload(config(), config())
    assert (plan.live, plan.ignored, plan.restart) == ((), (), ())


def test_live_ignored_and_restart_fields_are_sorted_apart() -> None:
    old = config()
    new = config(
        {
            "server": {"log_level": "debug", "max_message_bytes": 1 << 20},
            "shadow": {"sample_bp": 1000, "noise_sample_bp": 200, "max_in_flight": 8},
            "analysis": {
                "interval": 5,
                "min_requests": 50,
                "bucket": 5,
                "progress_deadline": "2h",
            },
            "flag": {"weights": {"stable": 5000, "canary": 5000}},
            "listen": {"control": "127.0.0.1:9999"},
        }
    )
    plan = plan_reload(old, new)
    assert plan.live == (
        "analysis.interval",
        "analysis.progress_deadline",
        "server.log_level",
        "shadow.noise_sample_bp",
        "shadow.sample_bp",
    )
    assert plan.ignored == ("flag.weights.canary", "flag.weights.stable")
    assert plan.restart == (
        "analysis.bucket",
        "analysis.min_requests",  # the judge is built once per deployment
        "listen.control",
        "server.max_message_bytes",
        "shadow.max_in_flight",
    )
    merged = merge(old, new, plan.live)
    assert merged.server.log_level == "debug" and merged.server.max_message_bytes == 4194304
    assert merged.analysis.interval == 5 and merged.analysis.bucket == old.analysis.bucket
    assert merged.shadow is not None and merged.shadow.sample_bp == 1000
    assert merged.shadow.max_in_flight == 64 and merged.listen == old.listen
    assert merged.flag is old.flag and merged.source == old.source


def test_the_noise_mirror_cannot_be_started_live() -> None:
    """Off at start-up: there is no noise mirror to change, so turning it on needs a restart."""
    plan = plan_reload(config({"shadow": {"noise_sample_bp": 0}}), config())
    assert plan.restart == ("shadow.noise_sample_bp",) and plan.live == ()

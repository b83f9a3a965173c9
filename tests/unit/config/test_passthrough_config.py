"""The `passthrough:` section and the rule that served variants' versions are distinct."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import ConfigError, parse_config

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sidecar.yaml"


def example() -> dict[str, Any]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(raw, dict)
    return copy.deepcopy(raw)


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.yaml")
    return info.value.problems


def test_passthrough_is_off_by_default_and_inherits_upstream_deadlines() -> None:
    """No section: None. A section with only an address takes the `upstream:` deadlines;
    its own deadlines win when set."""
    assert parse_config(example(), "test.yaml").passthrough is None
    raw = example()
    raw["passthrough"] = {"address": "127.0.0.1:9600"}
    config = parse_config(raw, "test.yaml")
    assert config.passthrough is not None
    limits = config.passthrough.limits(config.upstream)
    assert (limits.default_deadline, limits.max_deadline) == (
        config.upstream.default_deadline,
        config.upstream.max_deadline,
    )
    assert config.passthrough.max_in_flight == 256
    raw["passthrough"] = {"address": "127.0.0.1:9600", "max_deadline": "2s", "default_deadline": 1}
    config = parse_config(raw, "test.yaml")
    assert config.passthrough is not None
    assert config.passthrough.limits(config.upstream).max_deadline == 2.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"address": "nowhere"}, "passthrough.address: "),
        ({"address": "127.0.0.1:9600", "max_in_flight": 0}, "passthrough.max_in_flight"),
        ({"address": "127.0.0.1:9600", "extra": 1}, "passthrough.extra"),
        (
            {"address": "127.0.0.1:9600", "default_deadline": 3, "max_deadline": 2},
            "passthrough.default_deadline: must not exceed passthrough.max_deadline",
        ),
    ],
)
def test_bad_passthrough_names_the_field(section: dict[str, Any], message: str) -> None:
    raw = example()
    raw["passthrough"] = section
    assert any(message in p for p in problems(raw)), problems(raw)


def test_served_variants_may_share_a_version() -> None:
    """Stable and canary both `v1` (the same model version on two servers, as Triton's
    `1` / `1`): accepted; a request for v1 is routed as usual between them."""
    raw = example()
    raw["variants"]["canary"]["model_version"] = "v1"
    parse_config(raw, "test.yaml")


def test_the_shadow_and_empty_versions_may_repeat() -> None:
    """The shadow never serves (the example's shares the canary's version), and an empty
    version names nothing."""
    raw = example()
    assert raw["variants"]["shadow"]["model_version"] == raw["variants"]["canary"]["model_version"]
    raw["variants"]["stable"]["model_version"] = ""
    raw["variants"]["canary"]["model_version"] = ""
    parse_config(raw, "test.yaml")

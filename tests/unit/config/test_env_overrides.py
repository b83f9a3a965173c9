"""SIDECAR_* environment overrides: every listen address and secret path, and the state
paths an image points at its volume, set over the file's values; a bad value names its
variable; an empty one is ignored."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import example

from sidecar.config import ENV_OVERRIDES, ConfigError, parse_config


def test_listen_and_state_paths_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The image's way: listen on every interface, keep the state on the volume."""
    monkeypatch.setenv("SIDECAR_LISTEN_PREDICT", "0.0.0.0:8500")
    monkeypatch.setenv("SIDECAR_LISTEN_CONTROL", "0.0.0.0:8501")
    monkeypatch.setenv("SIDECAR_LISTEN_METRICS", "0.0.0.0:9464")
    monkeypatch.setenv("SIDECAR_STATE_PATH", str(tmp_path / "sidecar.db"))
    monkeypatch.setenv("SIDECAR_STATE_EXPERIMENT_PATH", str(tmp_path / "experiment.json"))
    monkeypatch.setenv("SIDECAR_REDIS_URL", "redis://redis:6379/0")
    config = parse_config(example(), "<test>")
    assert config.listen.predict == "0.0.0.0:8500"
    assert config.listen.control == "0.0.0.0:8501"
    assert config.listen.metrics == "0.0.0.0:9464"
    assert config.state.path == str(tmp_path / "sidecar.db")
    assert config.state.experiment_path == str(tmp_path / "experiment.json")
    assert config.state.redis.url == "redis://redis:6379/0"


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_LISTEN_CONTROL", "nowhere")
    with pytest.raises(ConfigError) as caught:
        parse_config(example(), "<test>")
    assert caught.value.problems == [
        "listen.control: must be host:port, got 'nowhere' (set by $SIDECAR_LISTEN_CONTROL)"
    ]


def test_tls_files_from_the_environment_are_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A secret path from the environment is checked like one from the file."""
    monkeypatch.setenv("SIDECAR_CONTROL_TLS_CERT_FILE", str(tmp_path / "missing.crt"))
    monkeypatch.setenv("SIDECAR_CONTROL_TLS_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError) as caught:
        parse_config(example(), "<test>")
    text = "\n".join(caught.value.problems)
    assert "control.tls.cert_file: no such file" in text
    assert "$SIDECAR_CONTROL_TLS_CERT_FILE" in text


def test_empty_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_OVERRIDES:
        monkeypatch.setenv(variable, "")
    assert parse_config(example(), "<test>").listen == parse_config(example(), "<t>").listen


def test_every_listen_address_has_a_variable() -> None:
    fields = {".".join(path) for path in ENV_OVERRIDES.values()}
    assert {"listen.predict", "listen.control", "listen.metrics"} <= fields
    assert {"control.tls.cert_file", "control.tls.key_file", "control.tls.client_ca_file"} <= fields
    assert {"state.redis.password_file", "state.redis.tls_ca_file"} <= fields


def test_an_experiment_segment_a_rule_always_routes_is_refused() -> None:
    """Such a segment never enters the split, so it could never have A/B data."""
    raw = example()
    raw["experiment"]["segments"] = ["beta", "internal"]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "<test>")
    assert caught.value.problems == [
        "experiment.segments: 'internal' is always routed to 'canary' by "
        "flag.segment_rules[0], so it never enters the A/B split; remove it from "
        "experiment.segments or remove the rule"
    ]

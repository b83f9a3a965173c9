"""Configuration: the example validates; every error names its field; check-config."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "sidecar.yaml"


def example() -> dict[str, Any]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(raw, dict)
    return raw


def test_example_config_is_valid_and_complete() -> None:
    """The commented example loads, with every section present."""
    config = load_config(EXAMPLE)
    assert config.model == "classifier"
    assert set(config.variants) == {"stable", "canary", "shadow"}
    assert dict(config.flag.weights) == {"stable": 9000, "canary": 1000}
    assert config.shadow is not None and config.shadow.max_in_flight == 64
    assert config.flag.user_overrides["qa-user-1"] == "canary"
    assert [m.name for m in config.experiment.metrics] == ["converted", "revenue"]
    assert config.experiment.metrics[0].baseline == 0.10 and config.experiment.gate_metric
    assert config.experiment.segments == ("beta",)
    # No experiment segment is one a segment rule always routes (it could have no A/B data).
    assert not set(config.experiment.segments) & {
        r.segment for r in config.flag_config.segment_rules
    }
    assert config.drift.enabled and config.drift.major == 0.25
    # A realistic sample: every mirrored request is one more inference upstream.
    assert config.shadow.sample_bp == 500 and config.shadow.noise_sample_bp == 100
    fast = config.analysis.fast_rollback
    assert (fast.enabled, fast.min_requests, fast.failure_ratio, fast.window) == (
        True, 20, 0.5, 5.0,
    )  # fmt: skip
    assert fast.hard_failures == ("UNAVAILABLE", "DATA_LOSS")


def mutate(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(example())
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


DELETE = object()

BAD = [
    ("flag.weights", {"stable": 9000, "canary": 500}, "flag.weights: must sum to 10000"),
    ("flag.weights", {"stable": 9000, "ghost": 1000}, "flag.weights[ghost]: unknown variant"),
    ("flag.weights", {"stable": 9000.5, "canary": 999.5}, "flag.weights[stable]: must be an int"),
    ("flag.stable", "ghost", "flag.stable: unknown variant"),
    ("flag.kill_switch", "yes", "flag.kill_switch: must be true or false"),
    (
        "flag.segment_rules",
        [{"segment": "gamma", "variant": "canary"}],
        "flag.segment_rules[0].segment",
    ),
    ("flag.user_overrides", {"bob": "ghost"}, "flag.user_overrides[bob]: unknown variant"),
    ("flag.colour", "blue", "flag.colour: unknown field"),
    ("variants.stable.address", "nowhere", "variants.stable.address: must be host:port"),
    ("variants.stable.model_name", "", "variants.stable.model_name: must be a non-empty"),
    ("shadow.variant", "ghost", "shadow.variant: unknown variant"),
    ("shadow.sample_bp", 10_001, "shadow.sample_bp: must be 0..10000"),
    ("shadow.max_in_flight", 0, "shadow.max_in_flight: must be >= 1"),
    ("shadow.deadline", -1, "shadow.deadline: must be > 0"),
    ("shadow.comparator", "fuzzy", "shadow.comparator"),
    ("listen.predict", "8500", "listen.predict: must be host:port"),
    ("upstream.max_deadline", "soon", "upstream.max_deadline: must be a number"),
    ("server.log_level", "loud", "server.log_level: must be one of"),
    ("model", DELETE, "model: must be the model name"),
    ("tracing", {}, "tracing: unknown field"),
    ("shadow.noise_sample_bp", -1, "shadow.noise_sample_bp: must be 0..10000"),
    ("experiment.metrics", "converted", "experiment.metrics: must be a list"),
    (
        "experiment.metrics",
        [{"name": "x", "kind": "text", "minimum_effect": 1}],
        "experiment.metrics[0].kind: must be bool or number",
    ),
    (
        "experiment.metrics",
        [{"name": "x", "kind": "bool"}],
        "experiment.metrics[0].minimum_effect: is required",
    ),
    (
        "experiment.metrics",
        [{"name": "x", "kind": "bool", "minimum_effect": 0}],
        "experiment.metrics[0].minimum_effect: must be > 0",
    ),
    (
        "experiment.metrics",
        [{"name": "x", "kind": "bool", "minimum_effect": 0.1, "baseline": 1.5}],
        "experiment.metrics[0].baseline: must be within (0, 1)",
    ),
    (
        "experiment.metrics",
        [{"name": "x", "kind": "number", "minimum_effect": 1, "baseline": 0.5}],
        "experiment.metrics[0].baseline: only boolean metrics",
    ),
    (
        "experiment.metrics",
        [{"name": "x", "kind": "bool", "minimum_effect": 0.1}] * 2,
        "experiment.metrics[1].name: duplicate metric",
    ),
    ("experiment.correction", "bonferroni", "experiment.correction: must be holm or bh"),
    ("experiment.alpha", 1.5, "experiment.alpha: must be within (0, 1)"),
    ("experiment.gate_metric", "clicks", "experiment.gate_metric: 'clicks' is not one of"),
    ("experiment.segments", ["beta", "beta"], "experiment.segments: must not repeat"),
    ("experiment.colour", 1, "experiment.colour: unknown field"),
    ("drift.major", 0.05, "drift.major: must exceed drift.moderate"),
    ("drift.bins", 1, "drift.bins: must be 2..100"),
    ("drift.reference_file", "missing.json", "drift.reference_file: no such file"),
    ("drift.enabled", "yes", "drift.enabled: must be true or false"),
    ("analysis.fast_rollback.min_requests", 0, "analysis.fast_rollback.min_requests: must be"),
    ("analysis.fast_rollback.window", "10m", "analysis.fast_rollback.window: must be a dura"),
    ("analysis.fast_rollback.failure_ratio", 0, "analysis.fast_rollback.failure_ratio: must"),
    (
        "analysis.fast_rollback.hard_failures",
        ["NOT_FOUND"],
        "analysis.fast_rollback.hard_failures: must be distinct names among UNAVAILABLE",
    ),
    ("analysis.fast_rollback.colour", 1, "analysis.fast_rollback.colour"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD)
def test_each_error_names_the_field(path: str, value: Any, message: str) -> None:
    """A bad value anywhere is reported with its dotted field path and what is wrong."""
    with pytest.raises(ConfigError) as info:
        parse_config(mutate(path, value), "test.yaml")
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_all_problems_are_reported_at_once() -> None:
    """Several mistakes give several lines, not just the first."""
    raw = mutate("shadow.sample_bp", -5)
    raw["server"]["log_level"] = "loud"
    raw["listen"]["control"] = "x"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.yaml")
    assert len(info.value.problems) >= 3


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *args], capture_output=True, text=True, check=False
    )


def test_check_config_accepts_the_example() -> None:
    """`sidecar check-config` exits 0 and summarises a valid file."""
    done = run_cli("check-config", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout and "classifier" in done.stdout


def test_check_config_rejects_with_field_names(tmp_path: Path) -> None:
    """`sidecar check-config` exits 1 and prints each problem with its field."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate("flag.weights", {"stable": 1, "canary": 1})))
    done = run_cli("check-config", str(bad))
    assert done.returncode == 1
    assert "flag.weights: must sum to 10000" in done.stderr
    missing = run_cli("check-config", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("flag: [unclosed")
    done = run_cli("check-config", str(broken))
    assert done.returncode == 1 and "not valid YAML" in done.stderr


DURATIONS = [
    ("shadow.deadline", "250ms", 0.25),
    ("shadow.breaker_cooldown", "2s", 2.0),
    ("upstream.default_deadline", "5s", 5.0),
    ("upstream.max_deadline", "1m", 60.0),
    ("upstream.connect_timeout", "10s", 10.0),
    ("server.shutdown_grace", "30s", 30.0),
    ("analysis.interval", "1m", 60.0),
    ("analysis.lookback", "5m", 300.0),
    ("analysis.bucket", "10s", 10.0),
    ("analysis.horizon", "2h", 7200.0),
    ("analysis.webhook_timeout", "1.5s", 1.5),
    ("experiment.look_interval", "30s", 30.0),
    ("experiment.ttl_seconds", "1h30m", 5400.0),
]


@pytest.mark.parametrize(("path", "text", "seconds"), DURATIONS)
def test_every_duration_field_accepts_units(path: str, text: str, seconds: float) -> None:
    """Durations are seconds or text such as 30s, 15m, 2h, in every duration field."""
    config = parse_config(mutate(path, text), "test.yaml")
    section, key = path.split(".")
    assert getattr(getattr(config, section), key) == seconds


STRICT = [
    ("shadow.max_in_flight", "64", "shadow.max_in_flight: must be an integer, got '64'"),
    ("shadow.rtol", True, "shadow.rtol: must be a number, got True"),
    ("analysis.max_p95_ratio", float("nan"), "analysis.max_p95_ratio: must be a finite number"),
    ("experiment.alpha", float("inf"), "experiment.alpha: must be a finite number"),
    ("drift.sample_every", 2.5, "drift.sample_every: must be an integer"),
    ("analysis.interval", "soon", "analysis.interval: must be a number of seconds or a dura"),
    ("analysis.lookback", 5000, "analysis.horizon: must exceed lookback by at least one bucket"),
    ("upstream.default_deadline", 60, "upstream.default_deadline: must not exceed"),
    ("control.auth.tokens", [], "control.auth.tokens: at least one token is required"),
    ("control.colour", 1, "control.colour: unknown field"),
]


@pytest.mark.parametrize(("path", "value", "message"), STRICT)
def test_values_are_not_coerced(path: str, value: Any, message: str) -> None:
    """Text is not a number, true is not a number, NaN and infinity are refused; cross-field
    rules name the field they are about."""
    with pytest.raises(ConfigError) as info:
        parse_config(mutate(path, value), "test.yaml")
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_token_rules_name_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token specs: exactly one source, a set variable, distinct principals, each named."""
    monkeypatch.delenv("SIDECAR_TEST_UNSET_TOKEN", raising=False)
    raw = example()
    alice = raw["control"]["auth"]["tokens"][0]
    raw["control"]["auth"]["tokens"] = [
        alice,
        {"name": "bob", "role": "viewer", "token_env": "SIDECAR_TEST_UNSET_TOKEN"},
        {"name": "carol", "role": "viewer", "token_env": "X", "token_sha256": "ab" * 32},
        {"name": "dave", "role": "admin", "token_sha256": "ab" * 32},
    ]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.yaml")
    problems = info.value.problems
    assert (
        "control.auth.tokens[1].token_env: environment variable SIDECAR_TEST_UNSET_TOKEN "
        "is not set" in problems
    ), problems
    assert (
        "control.auth.tokens[2]: give exactly one of token_env, token_file, token_sha256"
        in problems
    )
    assert any(p.startswith("control.auth.tokens[3].role: must be one of") for p in problems)
    monkeypatch.setenv("SIDECAR_TEST_UNSET_TOKEN", "bob-token-long-enough")
    raw["control"]["auth"]["tokens"] = [alice, {**alice, "role": "viewer"}]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.yaml")
    assert "control.auth.tokens[1].name: duplicate principal 'alice'" in info.value.problems


def test_paths_are_resolved_against_the_file_folder(tmp_path: Path) -> None:
    """Relative state paths and files are read from the configuration file's folder."""
    (tmp_path / "reference.json").write_text("{}")
    raw = mutate("drift.reference_file", "reference.json")
    raw["state"]["path"] = "var/state.json"
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    assert config.state.path == str(tmp_path / "var" / "state.json")
    assert config.drift.reference_file == str(tmp_path / "reference.json")

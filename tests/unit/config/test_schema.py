"""The published JSON Schema: printed by `sidecar config-schema`, and every example fits it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from sidecar.config import config_schema

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_there_are_examples_to_check() -> None:
    """The example folder holds the commented configuration the schema is checked on."""
    assert ROOT / "examples" / "sidecar.yaml" in EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_against_the_schema(path: Path) -> None:
    """Each YAML file under examples/ is valid under the published schema."""
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    """Unknown fields, text for integers and unknown duration text are schema errors too."""
    validator = jsonschema.Draft202012Validator(config_schema())
    example = yaml.safe_load((ROOT / "examples" / "sidecar.yaml").read_text())
    for section, key, value in (
        ("shadow", "colour", "blue"),
        ("shadow", "max_in_flight", "64"),
        ("analysis", "interval", "soon"),
        ("drift", "bins", True),
    ):
        bad = json.loads(json.dumps(example))
        bad[section][key] = value
        assert not validator.is_valid(bad), (section, key, value)
    ok = json.loads(json.dumps(example))
    ok["analysis"]["interval"] = "1m30s"
    assert validator.is_valid(ok)


def test_config_schema_command_prints_the_schema_as_json() -> None:
    """`sidecar config-schema` exits 0 and prints a valid JSON Schema of the file."""
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "config-schema"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == config_schema()
    assert {"listen", "variants", "flag", "experiment", "drift"} <= set(schema["properties"])

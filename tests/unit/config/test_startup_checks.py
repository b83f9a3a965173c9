"""check-config makes every check serve can fail on: duplicate keys, non-finite numbers,
message sizes, TLS files that do not parse, state paths, drift reference files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from clients.sidecarctl import PlanFileError, load_plan
from sidecar.app.experiment import ExperimentService, FileCheckpoint
from sidecar.config import (
    MAX_MESSAGE_BYTES,
    ConfigError,
    UniqueKeyLoader,
    config_schema,
    load_config,
)
from sidecar.core.experiment.analysis import ExperimentSettings, ExperimentTracker
from sidecar.testing.pki import OPENSSL, make_pki

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "sidecar.yaml"
DEEP = "[" * 200_000 + "]" * 200_000


def example() -> dict[str, Any]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(raw, dict)
    return raw


def write(tmp_path: Path, raw: dict[str, Any], name: str = "sidecar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_a_repeated_key_is_refused_naming_key_and_lines(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys; the loader refuses them, naming both lines."""
    text = EXAMPLE.read_text()
    path = tmp_path / "dup.yaml"
    path.write_text(text + "\nmodel: other\n")
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("model:"))
    (problem,) = problems_of(path)
    assert "duplicate key 'model'" in problem and f"first at line {first}" in problem
    assert f"line {len(text.splitlines()) + 2}," in problem


def test_a_repeated_nested_key_is_refused(tmp_path: Path) -> None:
    """Repeated keys are refused at any depth; merge keys (<<) may still be overridden."""
    text = yaml.safe_dump(example(), sort_keys=False)
    path = tmp_path / "nested.yaml"
    path.write_text(text.replace("\nshadow:\n", "\nshadow:\n  sample_bp: 1\n", 1))
    (problem,) = problems_of(path)
    assert "duplicate key 'sample_bp'" in problem
    merged = yaml.load("a: &d {x: 1, y: 2}\nb: {<<: *d, x: 3}\n", Loader=UniqueKeyLoader)
    assert merged == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


def float_fields() -> list[str]:
    """Every number field of every section, from the JSON Schema (durations included)."""
    schema = config_schema()
    out = []
    for section, spec in schema["properties"].items():
        refs = [spec.get("$ref", "")] + [s.get("$ref", "") for s in spec.get("anyOf", [])]
        ref = next((r for r in refs if r), "")
        if not ref:
            continue
        model = schema["$defs"][ref.rsplit("/", 1)[1]]
        for name, field in model.get("properties", {}).items():
            kinds = [field.get("type")] + [s.get("type") for s in field.get("anyOf", [])]
            if "number" in kinds:
                out.append(f"{section}.{name}")
    return out


FLOATS = float_fields()


def test_the_float_fields_are_found() -> None:
    """The walk over the schema finds the float fields of every section."""
    assert {"analysis.interval", "server.shutdown_grace", "drift.major"} <= set(FLOATS)
    assert {"shadow.rtol", "experiment.alpha", "upstream.max_deadline"} <= set(FLOATS)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("field", FLOATS)
def test_no_float_field_takes_nan_or_infinity(tmp_path: Path, field: str, value: str) -> None:
    """NaN and +-infinity are refused in every number field, naming it."""
    raw = copy.deepcopy(example())
    section, name = field.split(".")
    raw.setdefault(section, {})[name] = "@@"
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False).replace("'@@'", value))
    problems = problems_of(path)
    assert any(p.startswith(f"{field}: must be a finite number") for p in problems), problems


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**12, f"must be <= {MAX_MESSAGE_BYTES}, got 1000000000000"),
        ("1e12", "must be an integer, got '1e12'"),
        (1023, "must be >= 1024"),
    ],
)
def test_message_size_is_bounded(tmp_path: Path, value: Any, message: str) -> None:
    """server.max_message_bytes stays within 1 KiB..64 MiB (gRPC fails at bind beyond)."""
    raw = example()
    raw["server"]["max_message_bytes"] = value
    (problem,) = problems_of(write(tmp_path, raw))
    assert problem.startswith(f"server.max_message_bytes: {message}")


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
def test_tls_files_must_parse(tmp_path: Path) -> None:
    """A certificate, key or CA file that is not PEM is refused by check-config, naming it."""
    pki = make_pki(tmp_path / "pki")
    raw = example()
    raw["control"]["tls"] = {
        "cert_file": str(pki / "server.pem"),
        "key_file": str(pki / "server.key"),
        "client_ca_file": str(pki / "ca.pem"),
    }
    assert load_config(write(tmp_path, raw)).control.tls is not None
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for field, other in [("cert_file", "client.key"), ("client_ca_file", "server.key")]:
        for bad in (str(junk), str(pki / other)):
            broken = copy.deepcopy(raw)
            broken["control"]["tls"][field] = bad
            (problem,) = problems_of(write(tmp_path, broken, "bad.yaml"))
            assert problem.startswith(f"control.tls.{field}: {bad}"), problem
    broken = copy.deepcopy(raw)
    broken["control"]["tls"]["key_file"] = str(pki / "client.key")  # not the cert's key
    (problem,) = problems_of(write(tmp_path, broken, "bad.yaml"))
    assert problem.startswith("control.tls.cert_file:") and "client.key" in problem


def test_state_paths_must_be_writable_files(tmp_path: Path) -> None:
    """A state path that is a folder, or under a file, or in a folder that cannot be
    written, is refused naming the field."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    cases = {
        "path": (str(blocker / "sidecar.db"), f"{blocker} is not a folder"),
        "experiment_path": ("/proc/1/experiment.json", "folder /proc/1 is not writable"),
    }
    raw = example()
    raw["state"] = {**raw["state"], **{k: v for k, (v, _) in cases.items()}}
    problems = problems_of(write(tmp_path, raw))
    raw["state"] = {**raw["state"], "path": str(tmp_path)}
    problems += problems_of(write(tmp_path, raw))
    cases["path (folder)"] = (str(tmp_path), "is a folder, not a file")
    for name, (_, message) in cases.items():
        field = name.split(" ")[0]
        assert any(p.startswith(f"state.{field}: ") and message in p for p in problems), problems
    raw["state"]["backend"] = "memory"
    assert load_config(write(tmp_path, raw)).state.backend == "memory"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not text", "not UTF-8 text"),
        (b"{not json", "not valid JSON"),
        (DEEP.encode(), "nested too deeply"),
        (b'{"x[0]": [1.0, NaN]}', "NaN is not a number"),
        (b'{"x[0]": "abc"}', "configured reference 'x[0]'"),
        (b"[1, 2]", "maps series names to values"),
    ],
    ids=["binary", "json", "deep", "nan", "values", "list"],
)
def test_drift_reference_must_parse(tmp_path: Path, content: bytes, message: str) -> None:
    """The drift reference is read as serve reads it; a bad one is one problem naming the
    field (never a RecursionError or UnicodeDecodeError)."""
    (tmp_path / "ref.json").write_bytes(content)
    raw = example()
    raw["drift"]["reference_file"] = "ref.json"
    (problem,) = problems_of(write(tmp_path, raw))
    assert problem.startswith("drift.reference_file: ") and message in problem, problem


def test_the_config_file_cannot_be_a_folder(tmp_path: Path) -> None:
    """A folder given as the configuration is one line naming it."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert (
        str(info.value) == f"invalid configuration {tmp_path}: <file>: cannot read: Is a directory"
    )


def test_a_deep_checkpoint_is_set_aside(tmp_path: Path) -> None:
    """A 200,000-deep experiment checkpoint is unreadable (ValueError naming the file), and
    the experiment starts afresh, the file moved aside."""
    path = tmp_path / "experiment.json"
    path.write_text(DEEP)
    checkpoint = FileCheckpoint(path)
    with pytest.raises(ValueError, match=r"experiment\.json: not valid JSON: nested too deeply"):
        checkpoint.load()
    settings = ExperimentSettings()
    tracker = ExperimentService.restore(
        lambda d: (
            ExperimentTracker(settings) if d is None else ExperimentTracker.from_dict(d, settings)
        ),
        checkpoint,
    )
    assert tracker.epoch == 0 and not path.exists()
    assert [p.name.split("-")[0] for p in tmp_path.iterdir()] == ["experiment.json.unreadable"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("plan.yaml", "- {name: c, kind: canary, canary_bp: 5, canary_bp: 500}\n", "duplicate key 'canary_bp'"),
        ("plan.json", '[{"name": "c", "kind": "canary", "name": "d", "canary_bp": 5}]', "duplicate key 'name'"),
        ("plan.json", DEEP, "not valid JSON"),
    ],
)  # fmt: skip
def test_plan_files_refuse_duplicate_keys(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    """sidecarctl plan files: a key given twice in one stage is refused, naming it."""
    (tmp_path / name).write_text(content)
    with pytest.raises(PlanFileError, match=message):
        load_plan(str(tmp_path / name))


def test_a_valid_reference_file_loads(tmp_path: Path) -> None:
    """A reference file that parses and fits is accepted (the refusals above are not
    refusing everything)."""
    (tmp_path / "ref.json").write_text(json.dumps({"x[0]": [0.1 * i for i in range(100)]}))
    raw = example()
    raw["drift"]["reference_file"] = "ref.json"
    assert load_config(write(tmp_path, raw)).drift.reference_file == str(tmp_path / "ref.json")


@pytest.mark.parametrize("field", ["minimum_effect", "baseline", "tau_squared"])
def test_metric_numbers_are_finite(tmp_path: Path, field: str) -> None:
    """Numbers inside lists (experiment.metrics[i]) are refused as NaN too, with the index."""
    raw = example()
    raw["experiment"]["metrics"][1][field] = "@@"
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False).replace("'@@'", ".nan"))
    (problem,) = problems_of(path)
    assert problem == f"experiment.metrics[1].{field}: must be a finite number, got nan"

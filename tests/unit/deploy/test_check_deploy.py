"""`make check-deploy` (scripts/check_deploy.py) fails on broken deployment files: each
test breaks one thing in a copy and shows the checker names it. The shipped files pass
(`make check-deploy` runs them; the last test runs it too)."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_deploy", ROOT / "scripts/check_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checker() -> Iterator[ModuleType]:
    module = load_checker()
    module.problems.clear()
    yield module


def model_deployment(checker: ModuleType) -> dict[str, Any]:
    docs = checker.render_kustomization(ROOT / "deploy/kubernetes")
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "classifier"
    ]
    return copy.deepcopy(deployment)


def test_the_fallback_renderer_applies_namespace_labels_and_images(checker: ModuleType) -> None:
    deployment = model_deployment(checker)
    assert deployment["metadata"]["namespace"] == "models"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == "classifier-rollout"
    (sidecar,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "sidecar"
    ]
    assert sidecar["image"] == "registry.example.com/rollout-sidecar:0.1.0"


def test_an_unknown_field_fails_the_schema_check(checker: ModuleType) -> None:
    deployment = model_deployment(checker)
    deployment["spec"]["template"]["spec"]["containers"][1]["imagePullPolicyy"] = "Always"
    checker._validate_object("k8s", deployment)
    assert any("imagePullPolicyy" in p for p in checker.problems), checker.problems


def test_a_root_pod_and_a_writable_root_filesystem_fail(checker: ModuleType) -> None:
    deployment = model_deployment(checker)
    pod = deployment["spec"]["template"]["spec"]
    del pod["securityContext"]["runAsUser"]
    pod["containers"][1]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["containers"][1]["readinessProbe"] = {"tcpSocket": {"port": 8500}}
    checker._check_policies("k8s", [deployment])
    text = "\n".join(checker.problems)
    assert "numeric runAsUser" in text
    assert "container sidecar: needs readOnlyRootFilesystem" in text
    assert "readinessProbe must be a grpc.health.v1 probe" in text


def test_probes_asking_for_the_wrong_health_service_fail(checker: ModuleType) -> None:
    """Readiness must ask for "" (it follows the stable's readiness), liveness and start-up
    for "liveness" (a liveness probe on "" would restart the sidecar whenever the model
    server is down)."""
    deployment = model_deployment(checker)
    sidecar = deployment["spec"]["template"]["spec"]["containers"][1]
    checker._check_policies("k8s", [deployment])
    assert checker.problems == []
    sidecar["readinessProbe"]["grpc"]["service"] = "inference.GRPCInferenceService"
    sidecar["livenessProbe"]["grpc"].pop("service")
    sidecar["startupProbe"]["grpc"]["service"] = ""
    checker._check_policies("k8s", [deployment])
    text = "\n".join(checker.problems)
    assert "readinessProbe must ask for service ''" in text
    assert "livenessProbe must ask for service 'liveness'" in text
    assert "startupProbe must ask for service 'liveness'" in text


def test_a_bad_sidecar_configuration_is_named(checker: ModuleType) -> None:
    raw = yaml.safe_load((ROOT / "deploy/compose/sidecar.yaml").read_text())
    raw["analysis"]["intervall"] = 5
    checker.check_sidecar_config("compose", raw)
    assert any("intervall" in p for p in checker.problems), checker.problems


def test_an_invalid_compose_file_fails(
    checker: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/compose.yaml").read_text())
    compose["services"]["redis"]["restart"] = ["always"]  # must be a string
    folder = tmp_path / "compose"
    folder.mkdir()
    (folder / "compose.yaml").write_text(yaml.safe_dump(compose))
    (folder / "compose-spec.schema.json").write_text(
        (ROOT / "deploy/compose/compose-spec.schema.json").read_text()
    )
    monkeypatch.setattr(checker, "COMPOSE", folder)
    checker.check_compose()
    assert any("services.redis.restart" in p for p in checker.problems), checker.problems


def test_a_dashboard_query_on_a_series_the_sidecar_does_not_export_fails(
    checker: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/rollout-sidecar.json").read_text())
    dashboard["panels"][1]["targets"][0]["expr"] = "rate(sidecar_request_total[5m])"
    (tmp_path / "d.json").write_text(json.dumps(dashboard))
    monkeypatch.setattr(checker, "GRAFANA", tmp_path)
    checker.check_grafana()
    assert any("sidecar_request_total is not a series" in p for p in checker.problems)


def test_exported_series_include_the_new_metrics(checker: ModuleType) -> None:
    known = checker.exported_series()
    assert {
        "sidecar_requests_total",
        "sidecar_request_errors_total",
        "sidecar_upstream_duration_seconds_bucket",
        "sidecar_shadow_duration_seconds_bucket",
        "sidecar_build_info",
        "sidecar_rollout_progress_deadline_exceeded",
    } <= known


def test_the_shipped_files_pass() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/check_deploy.py")], capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promtool test rules" in done.stdout

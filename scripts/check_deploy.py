"""`make check-deploy`: validate everything under deploy/ without a cluster or a Docker engine.

1. Kubernetes (deploy/kubernetes): the kustomization rendered (by `kubectl kustomize` when
   kubectl is installed, and always by the small renderer below, which knows only the
   kustomization fields this folder uses; when both ran they must agree), every object
   validated against the Kubernetes API schemas (PyPI `kubernetes-validate`, strict: unknown
   fields are errors), and the rules the issue sets: numeric non-root users, read-only root
   filesystems, resource requests, grpc.health.v1 probes on the sidecar, the sidecar's
   configuration valid against its own JSON Schema.
2. Compose (deploy/compose/compose.yaml): against the Compose specification's JSON Schema
   (vendored in deploy/compose/compose-spec.schema.json), every bind-mounted file present,
   the sidecars' configuration valid against the sidecar's schema.
3. Prometheus (deploy/prometheus): `promtool check rules` and `promtool test rules`.
4. Grafana (deploy/grafana and its provisioning): the dashboard JSON parses, has a uid and
   panels, every query's PromQL parses (`promtool check rules` on the queries written as
   recording rules), and every `sidecar_*` series a query or rule reads is one the sidecar
   exports.

Prints one line per check and exits non-zero on the first kind of failure it meets (all
checks run; every problem is listed).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
KUBERNETES_VERSION = "1.30.0"  # the oldest API the manifests must hold for
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
}
SIDECAR_IMAGE = "rollout-sidecar"
SIDECAR_CONTAINER = "sidecar"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def ok(what: str) -> None:
    print(f"ok    {what}")


def rel(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --------------------------------------------------------------------------- kustomize


class UnsupportedKustomization(Exception):
    pass


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """The fields this folder uses: resources, namespace, labels (metadata only), images."""
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "images"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UnsupportedKustomization(
            f"kustomization fields {unknown} are not known to the fallback renderer "
            "(install kubectl, or extend scripts/check_deploy.py)"
        )
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        if path.is_dir():
            docs += render_kustomization(path)
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    namespace = spec.get("namespace")
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if namespace and doc.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        for label in spec.get("labels", []):
            if label.get("includeSelectors") or label.get("includeTemplates"):
                raise UnsupportedKustomization("labels with includeSelectors/includeTemplates")
            meta.setdefault("labels", {}).update(label["pairs"])
        for pod in pod_specs(doc):
            for container in containers(pod):
                container["image"] = _new_image(container["image"], spec.get("images", []))
    return docs


def _new_image(image: str, images: list[dict[str, str]]) -> str:
    name = re.split(r"[:@]", image, maxsplit=1)[0]
    for rule in images:
        if rule["name"] == name:
            return (
                f"{rule.get('newName', name)}:{rule['newTag']}"
                if "newTag" in rule
                else rule.get("newName", name)
            )
    return image


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        yield spec
    elif isinstance(spec.get("template"), dict):
        yield spec["template"].get("spec") or {}


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def kubectl_render(folder: Path) -> list[dict[str, Any]] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        problem(f"kubectl kustomize {rel(folder)}", done.stderr.strip())
        return []
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return (doc.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def check_kubernetes() -> None:
    where = rel(KUBERNETES)
    try:
        docs = render_kustomization(KUBERNETES)
    except UnsupportedKustomization as exc:
        problem(where, str(exc))
        docs = []
    rendered = kubectl_render(KUBERNETES)
    if rendered is None:
        ok(
            f"{where}: rendered by the fallback renderer "
            f"({len(docs)} objects; kubectl not installed)"
        )
    else:
        ours = {_key(d): d for d in docs}
        theirs = {_key(d): d for d in rendered}
        if ours != theirs:
            differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            problem(where, f"kubectl kustomize and the fallback renderer differ on {differ}")
        else:
            ok(
                f"{where}: kubectl kustomize renders {len(rendered)} objects "
                "(fallback renderer agrees)"
            )
        docs = rendered or docs
    names = [k for k in (_key(d) for d in docs)]
    if len(set(names)) != len(names):
        problem(where, "two objects share kind, namespace and name")
    for doc in docs:
        _validate_object(where, doc)
    _check_policies(where, docs)
    ok(
        f"{where}: {len(docs)} objects valid against the Kubernetes "
        f"{KUBERNETES_VERSION} API (strict)"
    )


def _validate_object(where: str, doc: dict[str, Any]) -> None:
    kind, _, name = _key(doc)
    try:
        kubernetes_validate.validate(copy.deepcopy(doc), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        problem(f"{where} {kind}/{name}", f"{path}: {exc.message}")
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        problem(f"{where} {kind}/{name}", f"no schema: {exc}")


def _check_policies(where: str, docs: list[dict[str, Any]]) -> None:
    """Numeric non-root users, read-only root filesystems, requests, the sidecar's probes,
    its configuration."""
    found_sidecar = False
    for doc in docs:
        kind, _, name = _key(doc)
        for pod in pod_specs(doc):
            context = pod.get("securityContext") or {}
            if context.get("runAsNonRoot") is not True or not isinstance(
                context.get("runAsUser"), int
            ):
                problem(
                    f"{where} {kind}/{name}", "pod needs runAsNonRoot: true and a numeric runAsUser"
                )
            for container in containers(pod):
                label = f"{where} {kind}/{name} container {container['name']}"
                security = container.get("securityContext") or {}
                if security.get("readOnlyRootFilesystem") is not True:
                    problem(label, "needs readOnlyRootFilesystem: true")
                if security.get("allowPrivilegeEscalation") is not False:
                    problem(label, "needs allowPrivilegeEscalation: false")
                if not (container.get("resources") or {}).get("requests"):
                    problem(label, "needs resource requests")
                if container["name"] == SIDECAR_CONTAINER:
                    found_sidecar = True
                    _check_sidecar_container(label, container, pod)
        if kind == "ConfigMap" and "sidecar.yaml" in (doc.get("data") or {}):
            check_sidecar_config(
                f"{where} ConfigMap/{name}", yaml.safe_load(doc["data"]["sidecar.yaml"])
            )
    if not found_sidecar:
        problem(where, f"no container named {SIDECAR_CONTAINER!r}")


# grpc.health.v1 service names the sidecar's probes ask for: "" (overall) follows the
# stable variant's readiness; "liveness" stays SERVING while the process answers.
PROBE_SERVICES = {"readinessProbe": "", "livenessProbe": "liveness", "startupProbe": "liveness"}


def _check_sidecar_container(label: str, container: dict[str, Any], pod: dict[str, Any]) -> None:
    for probe in ("readinessProbe", "livenessProbe"):
        grpc = (container.get(probe) or {}).get("grpc")
        if not grpc or grpc.get("port") != 8500:
            problem(label, f"{probe} must be a grpc.health.v1 probe on the predict port 8500")
    for probe, service in PROBE_SERVICES.items():
        grpc = (container.get(probe) or {}).get("grpc")
        if grpc is not None and grpc.get("service", "") != service:
            problem(label, f"{probe} must ask for service {service!r} (grpc.health.v1)")
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts") or []}
    state = mounts.get("/var/lib/sidecar")
    if state is None or state.get("readOnly"):
        problem(label, "needs a writable volume at /var/lib/sidecar (the image's state folder)")
    config = mounts.get("/etc/sidecar/sidecar.yaml") or mounts.get("/etc/sidecar")
    if config is None or not config.get("readOnly"):
        problem(label, "needs the configuration mounted read-only at /etc/sidecar")
    ports = {p.get("containerPort") for p in container.get("ports") or []}
    if not {8500, 8501, 9464} <= ports:
        problem(label, "must declare the predict, control and metrics ports (8500, 8501, 9464)")


# --------------------------------------------------------------------------- sidecar config


def check_sidecar_config(where: str, raw: Any) -> None:
    """The sidecar's configuration against its JSON Schema (`sidecar config-schema`); what
    needs the files of the target machine (tokens, TLS) is checked by `sidecar serve`."""
    from sidecar.config import config_schema

    validator = jsonschema.Draft202012Validator(config_schema())
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path) or "<top level>"
        problem(f"{where} sidecar.yaml", f"{path}: {error.message}")


# --------------------------------------------------------------------------- compose


def check_compose() -> None:
    path = COMPOSE / "compose.yaml"
    where = rel(path)
    schema = json.loads((COMPOSE / "compose-spec.schema.json").read_text())
    compose = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    for error in errors:
        problem(where, f"{'.'.join(str(p) for p in error.path) or '<top level>'}: {error.message}")
    services = compose.get("services", {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = (
                volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            )
            if source.startswith((".", "/")) and not (COMPOSE / source).exists():
                problem(f"{where} services.{name}.volumes", f"{source} does not exist")
        build = service.get("build")
        if (
            isinstance(build, dict)
            and not (
                COMPOSE / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            ).is_file()
        ):
            problem(f"{where} services.{name}.build", "no Dockerfile there")
        for dependency in service.get("depends_on", {}):
            if dependency not in services:
                problem(f"{where} services.{name}.depends_on", f"unknown service {dependency}")
    for config in sorted(COMPOSE.glob("sidecar*.yaml")):
        check_sidecar_config(rel(config), yaml.safe_load(config.read_text()))
    sidecars = [
        n for n, s in services.items() if "build" in s or SIDECAR_IMAGE in str(s.get("image", ""))
    ]
    if len(sidecars) < 2:
        problem(where, f"fleet mode needs two or more sidecars, found {sidecars}")
    if not errors:
        ok(f"{where}: valid against the Compose specification schema ({len(services)} services)")


# --------------------------------------------------------------------------- prometheus


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str] | None:
    tool = shutil.which("promtool")
    if tool is None:
        problem("promtool", "not installed (Debian package prometheus; .ci/run installs it)")
        return None
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def check_prometheus() -> None:
    for args in (("check", "rules", "alerts.yaml"), ("test", "rules", "alerts_test.yaml")):
        done = promtool(*args)
        if done is None:
            return
        if done.returncode != 0:
            problem(f"promtool {' '.join(args)}", (done.stdout + done.stderr).strip())
        else:
            ok(f"promtool {' '.join(args)} ({rel(PROMETHEUS)})")


# --------------------------------------------------------------------------- grafana


def exported_series() -> set[str]:
    """The `sidecar_*` series the sidecar exports, read from its metrics module."""
    source = (ROOT / "sidecar/adapters/telemetry/metrics.py").read_text()
    families = set(re.findall(r'"(sidecar_[a-z0-9_]+)"', source))
    counters = set(re.findall(r'CounterMetricFamily[(,]\s*"(sidecar_[a-z0-9_]+)"', source))
    counters |= set(re.findall(r'Counter\(\s*"(sidecar_[a-z0-9_]+)"', source))
    histograms = set(re.findall(r'Histogram\(\s*"(sidecar_[a-z0-9_]+)"', source))
    out = set(families)
    out |= {f"{c}_total" for c in counters}
    out |= {f"{h}{s}" for h in histograms for s in HISTOGRAM_SUFFIXES}
    return out


def _series_in(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b(sidecar_[a-z0-9_]+)\b", expr)}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop()
        stack += panel.get("panels", [])
        for target in panel.get("targets", []):
            out.append((panel.get("title", "?"), target.get("expr", "")))
    return out


def check_grafana() -> None:
    known = exported_series()
    dashboards = sorted(GRAFANA.glob("*.json"))
    if not dashboards:
        problem(rel(GRAFANA), "no dashboard")
    queries: list[str] = []
    for path in dashboards:
        where = rel(path)
        try:
            dashboard = json.loads(path.read_text())
        except ValueError as exc:
            problem(where, f"not JSON: {exc}")
            continue
        for field in ("uid", "title", "panels", "schemaVersion"):
            if field not in dashboard:
                problem(where, f"no {field}")
        found = dashboard_queries(dashboard)
        for title, expr in found:
            if not expr:
                problem(f"{where} panel {title!r}", "a target without a query")
            for series in sorted(_series_in(expr) - known):
                problem(f"{where} panel {title!r}", f"{series} is not a series the sidecar exports")
        queries += [e for _, e in found if e]
        ok(f"{where}: {len(found)} queries over series the sidecar exports")
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            for series in sorted(_series_in(rule["expr"]) - known):
                name = rule.get("alert") or rule.get("record")
                problem(f"deploy/prometheus/alerts.yaml {name}", f"{series} is not exported")
    _check_promql(queries)


def _check_promql(queries: list[str]) -> None:
    """Every dashboard query parses as PromQL (as a recording rule for promtool)."""
    grafana_variables = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    rules = []
    for i, expr in enumerate(queries):
        for variable, value in grafana_variables.items():
            expr = expr.replace(variable, value)
        expr = re.sub(r"\$\{?\w+\}?", "x", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dashboard-queries.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        done = promtool("check", "rules", str(path))
    if done is None:
        return
    if done.returncode != 0:
        problem("deploy/grafana: PromQL", (done.stdout + done.stderr).strip())
    else:
        ok(f"deploy/grafana: {len(queries)} dashboard queries parse as PromQL (promtool)")


def check_grafana_provisioning() -> None:
    for path in sorted((COMPOSE / "grafana").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or data.get("apiVersion") != 1:
            problem(rel(path), "a Grafana provisioning file needs apiVersion: 1")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    for check in (
        check_kubernetes,
        check_compose,
        check_prometheus,
        check_grafana,
        check_grafana_provisioning,
    ):
        try:
            check()
        except Exception as exc:  # a crash in one check is a failure, not a traceback
            problem(check.__name__, f"{type(exc).__name__}: {exc}")
    for line in problems:
        print(f"FAIL  {line}", file=sys.stderr)
    if problems:
        print(f"check-deploy: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        "check-deploy: everything under deploy/ is valid "
        "(validated only: no cluster, no Docker engine here)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

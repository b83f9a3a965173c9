"""No dependency shipped unused, and none the server image lacks.

- every runtime dependency in pyproject.toml is imported by some runtime module (sidecar/,
  generated code included, or clients/);
- no runtime module imports a package that only an extra installs (dev: the tests' tools
  and statsmodels, their oracle), except clients/report_html.py, which imports the `report`
  extra (matplotlib) when it draws;
- a started sidecar has imported neither matplotlib nor statsmodels.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
RUNTIME_PACKAGES = ("sidecar", "clients")
#: The one runtime module that may import an extra: the HTML report draws with matplotlib.
EXTRA_IMPORTERS = {"clients/report_html.py": {"matplotlib"}}


def normalise(distribution: str) -> str:
    """A distribution name as PEP 503 compares them: `PyYAML` -> `pyyaml`."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    """`grpcio-health-checking>=1.81,<1.82` -> `grpcio-health-checking` (extras dropped)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return normalise(match.group(1))


@cache
def project() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    section = data["project"]
    assert isinstance(section, dict)
    return section


def runtime_dependencies() -> set[str]:
    dependencies = project()["dependencies"]
    assert isinstance(dependencies, list)
    return {requirement_name(r) for r in dependencies}


def extra_dependencies() -> set[str]:
    """What only the extras install (dev, report), less the project itself."""
    extras = project()["optional-dependencies"]
    assert isinstance(extras, dict)
    own = normalise(str(project()["name"]))
    names = {requirement_name(r) for group in extras.values() for r in group}
    return names - {own} - runtime_dependencies()


@cache
def modules_of(distribution: str) -> frozenset[str]:
    """The importable module names a distribution installs, from its file list (so that
    namespace packages such as `opentelemetry` are told apart: the SDK installs
    `opentelemetry.sdk...`, the exporter `opentelemetry.exporter...`)."""
    files = metadata.distribution(distribution).files or []
    modules: set[str] = set()
    for file in files:
        parts = file.parts
        if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
            continue
        name = parts[-1]
        if not name.endswith((".py", ".so", ".pyd")):
            continue
        stem = name.split(".")[0]
        dotted = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
        if dotted and all(p.isidentifier() for p in dotted):
            modules.update(".".join(dotted[:i]) for i in range(1, len(dotted) + 1))
    if not modules:  # no file list: fall back on the top-level names
        modules.update(
            top
            for top, dists in metadata.packages_distributions().items()
            if distribution in {normalise(d) for d in dists}
        )
    return frozenset(modules)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST) -> Iterator[str]:
    """Module names imported at run time (anywhere, also inside functions; not under
    `if TYPE_CHECKING:`); for `from a.b import c` both `a.b` and `a.b.c`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


@cache
def runtime_imports() -> dict[str, frozenset[str]]:
    """Relative path -> module names imported, for every module under sidecar/ and clients/."""
    found = {}
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            found[path.relative_to(ROOT).as_posix()] = frozenset(_imported(tree))
    return found


def importers_of(distribution: str) -> list[str]:
    provided = modules_of(distribution)
    return [path for path, names in runtime_imports().items() if names & provided]


def test_every_runtime_dependency_is_imported_by_a_runtime_module() -> None:
    """Each entry of [project].dependencies is imported by a module under sidecar/
    (generated code under sidecar/_proto counts) or clients/: the image ships nothing idle."""
    unused = sorted(d for d in runtime_dependencies() if not importers_of(d))
    assert not unused, f"runtime dependencies no runtime module imports: {unused}"


def test_the_scan_tells_namespace_packages_apart() -> None:
    """The check above is not fooled by a shared top-level name: the OTLP exporter is found
    by its own modules, and a dev-only tool is found nowhere."""
    assert "opentelemetry.exporter.otlp.proto.grpc" in modules_of(
        "opentelemetry-exporter-otlp-proto-grpc"
    )
    assert "opentelemetry.sdk" not in modules_of("opentelemetry-exporter-otlp-proto-grpc")
    assert importers_of("opentelemetry-exporter-otlp-proto-grpc")
    assert importers_of("pytest") == []


def test_runtime_modules_import_no_extra_but_the_report_renderer_matplotlib() -> None:
    """statsmodels (the tests' oracle) and the other dev tools are never imported at run
    time; matplotlib (the `report` extra) only by clients/report_html.py."""
    bad = []
    for distribution in sorted(extra_dependencies()):
        provided = modules_of(distribution)
        tops = {m.split(".")[0] for m in provided}
        for path, names in runtime_imports().items():
            if names & provided and not tops & EXTRA_IMPORTERS.get(path, set()):
                bad.append(f"{path}: {distribution}")
    assert not bad, "runtime modules import packages only an extra installs:\n" + "\n".join(bad)
    assert "statsmodels" in extra_dependencies()
    assert "matplotlib" in extra_dependencies()


SERVER_SCRIPT = """
import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc
from sidecar.testing.credentials import bearer
from sidecar.testing.fault_upstream import FaultInjectingUpstream
from sidecar.testing.inprocess import config_dict, running_sidecar, scripted_model


async def main() -> None:
    async with FaultInjectingUpstream(respond=scripted_model({})) as upstream:
        raw = config_dict(
            {"stable": (upstream.address, "v1"), "canary": (upstream.address, "v2")},
            weights={"stable": 5000, "canary": 5000},
        )
        async with running_sidecar(raw) as sidecar:
            predict = f"127.0.0.1:{sidecar.predict_port}"
            control = f"127.0.0.1:{sidecar.control_port}"
            async with grpc.aio.insecure_channel(predict) as channel:
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING, health
            serving_with = sorted(m for m in ("scipy.stats", "scipy.special") if m in sys.modules)
            async with grpc.aio.insecure_channel(control) as channel:
                stub = control_pb2_grpc.ControlStub(channel)
                await stub.GetState(control_pb2.GetStateRequest(), metadata=bearer(), timeout=5)
                await stub.GetExperimentReport(
                    control_pb2.GetExperimentReportRequest(), metadata=bearer(), timeout=5
                )
            heavy = sorted(m for m in ("matplotlib", "statsmodels") if m in sys.modules)
            with open(sys.argv[1], "w") as out:  # stdout carries the sidecar's log
                out.write("imported: " + " ".join(heavy) + "\\n")
                out.write("serving with: " + " ".join(serving_with))


asyncio.run(main())
"""


def test_a_started_sidecar_has_not_imported_matplotlib_or_statsmodels(tmp_path: Path) -> None:
    """In a fresh process (this one may have imported both), a sidecar started on port 0
    against a scripted upstream, asked for its health, state and experiment report, has
    imported neither matplotlib nor statsmodels; and it was SERVING before scipy's
    statistics modules were imported (they load on first use: sidecar.core.stats.lazy)."""
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(SERVER_SCRIPT), encoding="utf-8")
    result = tmp_path / "result.txt"
    done = subprocess.run(
        [sys.executable, str(script), str(result)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert result.read_text(encoding="utf-8") == "imported: \nserving with: "

"""The dependency rule: the core is pure, the application layer knows no adapters."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# statsmodels is not here: it is the tests' oracle (dev extra), not shipped with the server.
CORE_ALLOWED = {"numpy", "scipy", "mmh3", "ddsketch", "sidecar"}
CORE_FORBIDDEN_STDLIB = {"asyncio", "socket", "time", "random", "os", "subprocess", "threading"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_only_stdlib_and_numeric_libraries() -> None:
    """sidecar/core uses the standard library (no clock, I/O, randomness), numpy, scipy,
    mmh3 and ddsketch, and only other core modules of its own package."""
    bad = []
    for path in sorted((ROOT / "sidecar" / "core").rglob("*.py")):
        for name in imports(path):
            top = name.split(".")[0]
            if (
                (top == "sidecar" and not name.startswith("sidecar.core"))
                or top in CORE_FORBIDDEN_STDLIB
                or (top not in CORE_ALLOWED and top not in sys.stdlib_module_names)
            ):
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, "core must stay pure:\n" + "\n".join(bad)


def test_app_never_imports_adapters_or_generated_code() -> None:
    """sidecar/app talks to I/O only through the Protocols in sidecar/app/ports.py."""
    bad = []
    for path in sorted((ROOT / "sidecar" / "app").rglob("*.py")):
        for name in imports(path):
            if name.startswith(("sidecar.adapters", "sidecar._proto", "grpc")):
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, "\n".join(bad)


def test_clients_do_not_reach_into_sidecar_internals() -> None:
    """clients/ use the protos and the pure tensor codec, nothing else of the sidecar."""
    allowed = ("sidecar._proto", "sidecar.core.tensors")
    bad = []
    for path in sorted((ROOT / "clients").rglob("*.py")):
        for name in imports(path):
            if name.startswith("sidecar") and not name.startswith(allowed):
                bad.append(f"{path.relative_to(ROOT)}: {name}")
    assert not bad, "\n".join(bad)

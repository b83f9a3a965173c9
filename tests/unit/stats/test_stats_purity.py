"""The statistics core stays pure: allowed imports only, no I/O, clock or global randomness."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import sidecar.core.stats as stats_pkg

ALLOWED_THIRD_PARTY = {"numpy", "scipy"}  # statsmodels is the tests' oracle only
FORBIDDEN_STDLIB = {"time", "datetime", "random", "os", "io", "socket", "pathlib", "subprocess"}
PACKAGE_DIR = Path(stats_pkg.__file__).parent
MODULES = sorted(PACKAGE_DIR.glob("*.py"))


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_stats_modules_import_only_stdlib_numpy_scipy() -> None:
    """Every module imports only the standard library, numpy or scipy (statsmodels is a
    test-only dependency: the oracle the tests compare with)."""
    assert len(MODULES) >= 8
    for path in MODULES:
        roots = _imported_roots(ast.parse(path.read_text()))
        third_party = {r for r in roots if r not in sys.stdlib_module_names}
        assert third_party <= ALLOWED_THIRD_PARTY, (path.name, third_party)
        assert not (roots & FORBIDDEN_STDLIB), (path.name, roots & FORBIDDEN_STDLIB)


def test_stats_modules_use_no_global_randomness_or_io() -> None:
    """No np.random, open() or print() calls anywhere in the core."""
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "random":
                raise AssertionError(f"{path.name}:{node.lineno} uses .random")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"open", "print", "input"}, (path.name, node.lineno)

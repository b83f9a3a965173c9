"""Heavy modules imported on first use, so that a sidecar is SERVING before they load.

scipy's `stats`, `special` and `optimize` take most of the sidecar's import time; the
request path never uses them (only the rollout controller, the experiment's looks, drift
and the report do). The statistics modules name them through `lazy(...)` (with the real
import under `TYPE_CHECKING` for the type checker); the first attribute read imports the
module and caches the attribute. `warm_up` imports them all at once: the sidecar calls it
in a worker thread once it is serving, so the first statistical look rarely pays for it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

HEAVY = ("scipy.special", "scipy.stats", "scipy.optimize")


class LazyModule:
    """Stands for module `name` until an attribute is read; then imports it."""

    def __init__(self, name: str) -> None:
        self._lazy_name = name
        self._lazy_module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._lazy_module
        if module is None:
            module = self._lazy_module = importlib.import_module(self._lazy_name)
        value = getattr(module, attribute)
        setattr(self, attribute, value)  # later reads skip __getattr__
        return value

    def __repr__(self) -> str:
        state = "loaded" if self._lazy_module is not None else "not loaded yet"
        return f"<lazy module {self._lazy_name!r} ({state})>"


def lazy(name: str) -> Any:
    """A stand-in for module `name` (`Any`: the real import under TYPE_CHECKING types it)."""
    return LazyModule(name)


def warm_up() -> None:
    """Import the heavy modules now (call it off the event loop: a worker thread)."""
    import scipy.optimize
    import scipy.special
    import scipy.stats

    del scipy

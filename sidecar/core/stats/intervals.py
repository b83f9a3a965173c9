"""The interval result type shared by the statistics modules."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Interval:
    """A two-sided interval estimate.

    ``confidence`` is the nominal coverage (``1 - alpha``); ``method`` names the construction
    (for example ``"wilson"`` or ``"newcombe"``) so that callers can report it.
    """

    lower: float
    upper: float
    confidence: float
    method: str

    @property
    def width(self) -> float:
        """Upper minus lower bound."""
        return self.upper - self.lower

    def contains(self, value: float) -> bool:
        """True if ``lower <= value <= upper``."""
        return self.lower <= value <= self.upper

    def excludes_zero(self) -> bool:
        """True if the whole interval lies strictly above or strictly below zero."""
        return self.lower > 0.0 or self.upper < 0.0


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with a two-sided interval (the ``Estimate`` proto message).

    ``level`` is the nominal coverage (``1 - alpha``), ``method`` names the interval
    (``"wilson"``, ``"newcombe"``, ``"msprt"``, ``"welch"``, ...). NaN where the quantity
    is undefined (no data yet).
    """

    value: float
    lower: float
    upper: float
    level: float
    method: str

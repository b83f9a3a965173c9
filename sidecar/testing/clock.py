"""A clock tests move by hand.

Every time-dependent part of the sidecar takes a clock (a `Callable[[], float]`):
`ControlService`, `RolloutController`, `DataPlane`. Pass a `FakeClock` and call
`advance(seconds)` instead of sleeping; the test then runs as fast as the machine allows
and never depends on the scheduler.
"""

from __future__ import annotations


class FakeClock:
    """A clock that only moves when told. Usable as a wall clock (starts at a fixed Unix
    time by default) or a monotonic one (pass ``start=0.0``)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds!r})")
        self._now += seconds
        return self._now

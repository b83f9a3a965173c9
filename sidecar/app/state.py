"""The routing state in force: one immutable snapshot, swapped atomically.

Readers (the request path) take `holder.current` once per request and never lock; a
writer builds a complete new `Snapshot` and replaces the reference in one assignment.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.core.routing import Flag


@dataclass(frozen=True, slots=True)
class Snapshot:
    flag: Flag
    revision: int


class StateHolder:
    """Holds the current snapshot. Single event-loop writer; any number of readers."""

    def __init__(self, flag: Flag, revision: int = 1) -> None:
        self._current = Snapshot(flag, revision)

    @property
    def current(self) -> Snapshot:
        return self._current

    def replace(self, flag: Flag) -> Snapshot:
        """Swap in a new flag (already validated); returns the new snapshot."""
        snap = Snapshot(flag, self._current.revision + 1)
        self._current = snap
        return snap

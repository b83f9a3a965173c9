"""The routing state in force: one immutable snapshot, swapped atomically.

Readers (the request path) take `holder.current` once per request and never lock; a
writer builds a complete new `Snapshot` and replaces the reference in one assignment.
Watchers (Control.WatchState) get every new snapshot through bounded queues.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.core.routing import Flag
from sidecar.core.state import DesiredState

WATCH_QUEUE = 256


@dataclass(frozen=True, slots=True)
class Snapshot:
    flag: Flag
    state: DesiredState
    safe_mode: bool = False

    @property
    def revision(self) -> int:
        return self.state.revision


class StateHolder:
    """Holds the current snapshot. Single event-loop writer; any number of readers."""

    def __init__(self, flag: Flag, state: DesiredState | None = None, *, safe_mode: bool = False):
        self._current = Snapshot(flag, state or DesiredState.from_flag(flag), safe_mode)
        self._watchers: set[asyncio.Queue[Snapshot]] = set()

    @property
    def current(self) -> Snapshot:
        return self._current

    def swap(self, snapshot: Snapshot) -> None:
        """Make `snapshot` the one the next request reads, and tell every watcher."""
        self._current = snapshot
        for queue in self._watchers:
            if queue.full():  # a slow watcher skips to the newest states, never blocks us
                queue.get_nowait()
            queue.put_nowait(snapshot)

    def follow(self, snapshot: Snapshot) -> bool:
        """Swap in `snapshot` only when its revision is newer than the one in force (a
        fleet member applies shared revisions this way; a late notice never goes back)."""
        if snapshot.revision <= self._current.revision:
            return False
        self.swap(snapshot)
        return True

    def watch(self) -> asyncio.Queue[Snapshot]:
        queue: asyncio.Queue[Snapshot] = asyncio.Queue(WATCH_QUEUE)
        queue.put_nowait(self._current)
        self._watchers.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[Snapshot]) -> None:
        self._watchers.discard(queue)

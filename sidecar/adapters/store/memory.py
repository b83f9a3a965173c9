"""In-memory state store and audit log (tests, and a sidecar that must not persist)."""

from __future__ import annotations

from sidecar.app.ports import AuditEntry
from sidecar.core.state import DesiredState


class MemoryStateStore:
    def __init__(self, state: DesiredState | None = None) -> None:
        self.state = state
        self.saves = 0

    def load(self) -> DesiredState | None:
        return self.state

    def save(self, state: DesiredState) -> None:
        self.state = state
        self.saves += 1


class MemoryAuditLog:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def append(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    def count(self) -> int:
        return len(self.entries)

    def read(self, start: int, limit: int) -> list[AuditEntry]:
        return self.entries[start : start + limit]

"""In-memory state store with its audit log (tests, and a sidecar that must not persist)."""

from __future__ import annotations

from sidecar.adapters.store import take_page
from sidecar.app.ports import AuditEntry
from sidecar.core.state import DesiredState


class MemoryStateStore:
    """The `StateStore` port in memory. Set `fail` to an exception to make commits fail
    (nothing is kept when they do)."""

    def __init__(self, state: DesiredState | None = None) -> None:
        self.state = state
        self.entries: list[AuditEntry] = []
        self.commits = 0
        self.fail: Exception | None = None

    def load(self) -> DesiredState | None:
        return self.state

    def commit(self, state: DesiredState, entry: AuditEntry) -> None:
        if self.fail is not None:
            raise self.fail
        self.state = state
        self.entries.append(entry)
        self.commits += 1

    def audit_count(self) -> int:
        return len(self.entries)

    def read_audit(self, start: int, limit: int, max_bytes: int) -> list[AuditEntry]:
        return take_page(((e.size, e) for e in self.entries[start:]), limit, max_bytes)

    def last_revision(self) -> int:
        revisions = [e.revision_after for e in self.entries[-1:]]
        return max([self.state.revision if self.state else 0, *revisions])

    def quarantine(self) -> str | None:
        self.state = None
        return None

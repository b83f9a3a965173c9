"""The I/O boundaries the application layer talks to, as Protocols.

Adapters implement them (`sidecar/adapters/...`); tests and `sidecar/testing` provide
in-memory ones. The application layer never imports an adapter or generated code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import numpy as np

from sidecar.core.state import DesiredState

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)
Resp_co = TypeVar("Resp_co", covariant=True)

Metadata = Sequence[tuple[str, str]]
Outputs = Mapping[str, np.ndarray]


class Upstream(Protocol[Req_contra, Resp_co]):
    """One model variant's upstream: an Open Inference Protocol model server.

    `infer` may set the request's model name and version for this variant (the upstream
    takes ownership of the request for the duration of the call). Failures raise
    `sidecar.errors.UpstreamError` carrying the upstream's status.
    """

    name: str

    async def infer(
        self, request: Req_contra, *, timeout: float, metadata: Metadata
    ) -> Resp_co: ...

    async def ready(self, *, timeout: float) -> bool: ...


# The fleet leader's fencing token while the rollout driver acts (None otherwise). The
# leader sets it around each tick; a fleet store's `commit` then checks, inside the same
# atomic compare-and-set, that the lease still holds this token, so a deposed leader's
# late write is refused (ABORTED) instead of racing the new leader. Single-sidecar stores
# ignore it.
leader_fence: ContextVar[int | None] = ContextVar("leader_fence", default=None)


class StateFileError(Exception):
    """The stored state cannot be read or is invalid; `where` names the file or key."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"state {where}: {reason}")
        self.where = where
        self.reason = reason


class CommitRefused(Exception):
    """A fleet store refused a commit for a reason of the fleet (nothing was written)."""


class RevisionConflict(CommitRefused):
    """The shared state is no longer at the revision the new state was derived from
    (another member or operator wrote first): answered ABORTED, re-read and retry."""


class NotLeader(CommitRefused):
    """The commit carried a leader's fencing token (`leader_fence`) that no longer holds
    the lease: a deposed leader's late write, answered ABORTED "not the leader"."""


@dataclass(frozen=True)
class MemberStatus:
    """One fleet member as its last heartbeat shows it."""

    member_id: str
    host: str
    version: str
    applied_revision: int
    ready: bool
    last_seen_unix: float
    live: bool  # seen within `member_ttl`
    control_address: str = ""  # its advertised Control address ("" if it advertises none)


class Fleet(Protocol):
    """The fleet a sidecar belongs to (`state.backend: redis`): its members and a wait
    until they have applied a revision. Raises OSError naming Redis when it is down."""

    async def members(self) -> list[MemberStatus]:
        """Every member with a heartbeat entry (live or not, not yet pruned), by id."""
        ...

    async def wait_applied(self, revision: int, timeout: float) -> list[MemberStatus]:
        """Wait until every live member has applied `revision` (or `timeout` seconds
        passed); returns the live members that had not."""
        ...


@dataclass(frozen=True)
class AuditEntry:
    """One audited change: who, when, what, why, and what it changed."""

    unix_time: float
    principal: str
    method: str
    reason: str
    revision_before: int
    revision_after: int
    diff: Mapping[str, Any]

    def to_json(self) -> str:
        """The stored form (one line, keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def size(self) -> int:
        """Bytes of the stored form: what audit pages are bounded by."""
        return len(self.to_json().encode())

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": datetime.fromtimestamp(self.unix_time, UTC).isoformat(),
            "unix_time": self.unix_time,
            "principal": self.principal,
            "method": self.method,
            "reason": self.reason,
            "revision_before": self.revision_before,
            "revision_after": self.revision_after,
            "diff": dict(self.diff),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> AuditEntry:
        return AuditEntry(
            unix_time=float(data["unix_time"]),
            principal=str(data["principal"]),
            method=str(data["method"]),
            reason=str(data["reason"]),
            revision_before=int(data["revision_before"]),
            revision_after=int(data["revision_after"]),
            diff=dict(data.get("diff", {})),
        )


class StateStore(Protocol):
    """Where the desired state and its audit log live, committed together.

    The commit rule: `commit(state, entry)` makes the new state and its audit entry
    durable in one step, or raises and changes neither (SQLite: one transaction; a Redis
    fleet store: one MULTI/Lua script). Keep this port small: a fleet store implements
    exactly these methods. Implementations: `sidecar.adapters.store.sqlite.SqliteStore`
    (default), `sidecar.adapters.store.memory.MemoryStateStore`.
    """

    def load(self) -> DesiredState | None:
        """The committed state; None when nothing was ever committed; `StateFileError`
        naming the storage (and where in it) when it is damaged."""
        ...

    def commit(self, state: DesiredState, entry: AuditEntry) -> None:
        """Durably store `state` and append `entry`, both or neither (raises OSError)."""
        ...

    def audit_count(self) -> int: ...

    def read_audit(self, start: int, limit: int, max_bytes: int) -> list[AuditEntry]:
        """Entries `start`.. (oldest first), at most `limit` of them and at most `max_bytes`
        of serialised entries (`AuditEntry.size`), but at least one when any is left."""
        ...

    def last_revision(self) -> int:
        """The highest revision the store has seen (state or audit; 0 when none), so that
        safe mode continues from it instead of restarting at 1."""
        ...

    def quarantine(self) -> str | None:
        """Move damaged storage aside (kept for inspection) and start empty; returns where
        it went (None when there was nothing to move)."""
        ...


class Leadership(Protocol):
    """Whether this sidecar drives rollouts: the fleet's leader lease
    (`sidecar.adapters.fleet.lease.LeaderLease`), or `AlwaysLeader` for one sidecar.
    `fenced()` sets `leader_fence` to the lease's token for the writes made within."""

    def is_leader(self) -> bool: ...

    def fenced(self) -> AbstractContextManager[int | None]: ...


class AlwaysLeader:
    """One sidecar on a local store: always the leader, no fencing token."""

    def is_leader(self) -> bool:
        return True

    def fenced(self) -> AbstractContextManager[int | None]:
        return nullcontext(None)

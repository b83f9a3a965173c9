"""The I/O boundaries the application layer talks to, as Protocols.

Adapters implement them (`sidecar/adapters/...`); tests and `sidecar/testing` provide
in-memory ones. The application layer never imports an adapter or generated code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


class StateFileError(Exception):
    """The stored state cannot be read or is invalid; `where` names the file or key."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"state {where}: {reason}")
        self.where = where
        self.reason = reason


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
    """Where the desired state lives (file by default; Redis for a fleet)."""

    def load(self) -> DesiredState | None: ...

    def save(self, state: DesiredState) -> None: ...


class AuditLog(Protocol):
    """Append-only record of every change, readable in pages (oldest first)."""

    def append(self, entry: AuditEntry) -> None: ...

    def count(self) -> int: ...

    def read(self, start: int, limit: int) -> list[AuditEntry]: ...

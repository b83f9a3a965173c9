"""File-backed state store and audit log: the embedded default.

State: one JSON file with a schema version, replaced atomically (write a temporary file
in the same folder, fsync it, rename over the old one, fsync the folder), so a crash at
any moment leaves either the old or the new state, never a torn one.
Audit: append-only JSON lines, each fsynced before the write is acknowledged.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from sidecar.app.ports import AuditEntry, StateFileError
from sidecar.core.state import DesiredState, StateFormatError


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStateStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> DesiredState | None:
        """The stored state; None when there is no file; StateFileError when unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateFileError(str(self.path), f"cannot read: {exc}") from None
        try:
            return DesiredState.from_json(text)
        except StateFormatError as exc:
            raise StateFileError(str(self.path), str(exc)) from None

    def save(self, state: DesiredState) -> None:
        """Durably replace the stored state (returns only once it is on disk)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(state.to_json())
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def quarantine(self) -> Path | None:
        """Move an unreadable state file aside (kept for inspection); returns its new path."""
        if not self.path.exists():
            return None
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        os.replace(self.path, target)
        return target


class FileAuditLog:
    """Append-only JSON lines. Line offsets are indexed at start-up for paging."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._offsets: list[int] = []
        self.skipped = 0
        self._index()

    def _index(self) -> None:
        if not self.path.exists():
            return
        offset = 0
        with open(self.path, "rb") as handle:
            for line in handle:
                if line.endswith(b"\n"):
                    try:
                        json.loads(line)
                        self._offsets.append(offset)
                    except ValueError:
                        self.skipped += 1
                else:  # a torn last line from a crash mid-append: ignored
                    self.skipped += 1
                offset += len(line)

    def append(self, entry: AuditEntry) -> None:
        line = (json.dumps(entry.to_dict(), sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                start = handle.seek(0, os.SEEK_END)
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            self._offsets.append(start)

    def count(self) -> int:
        return len(self._offsets)

    def read(self, start: int, limit: int) -> list[AuditEntry]:
        with self._lock:
            offsets = self._offsets[start : start + limit]
        if not offsets:
            return []
        out: list[AuditEntry] = []
        with open(self.path, "rb") as handle:
            for offset in offsets:
                handle.seek(offset)
                data: dict[str, Any] = json.loads(handle.readline())
                out.append(AuditEntry.from_dict(data))
        return out

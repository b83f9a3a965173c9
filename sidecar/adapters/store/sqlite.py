"""SQLite state store: the desired state and its audit log in one database file.

The commit rule: a write is one transaction (the state row, the changed override rows, the
audit row), committed in WAL mode with `synchronous=FULL`, so after a crash at any moment
the database holds the state before the write with its audit log, or the state after it
with its entry, never one without the other. A failed commit is rolled back.

Tables: `state` (one row: the revision and the state as JSON without the user overrides),
`overrides` (one row per targeting key, so a write touches the rows it changes),
`audit` (one row per entry, in order, with its size for paging by bytes), `meta`
(the schema version). Opening checks the file (`PRAGMA quick_check`); a damaged file is
reported as `StateFileError` naming the file and what SQLite says, never read past.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sidecar.adapters.store import take_page
from sidecar.app.ports import AuditEntry, StateFileError
from sidecar.core.routing import Overrides
from sidecar.core.state import DesiredState, StateFormatError

SCHEMA_VERSION = 1
SQLITE_HEADER = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (key TEXT PRIMARY KEY, variant TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    revision_after INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    entry TEXT NOT NULL
);
"""


class SqliteStore:
    """The `StateStore` port on one SQLite file (opened and checked on first use).

    Thread-safe: commits run in a worker thread (one writing connection behind a lock) so
    the event loop keeps serving while SQLite fsyncs; audit reads use a second connection
    (WAL lets it read while a commit is under way), so they never wait for a commit.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._committed_overrides = 0  # serial of the `Overrides` the rows hold (0: unknown)

    # ---- opening ---------------------------------------------------------------------

    def _fail(self, reason: str, where: str = "") -> StateFileError:
        return StateFileError(f"{self.path}{where}", reason)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._check_file()
            try:
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=5.0
                )
            except sqlite3.Error as exc:
                raise self._fail(f"cannot open: {exc} (is the folder writable?)") from None
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _check_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and not self.path.is_file():
                raise self._fail("is not a regular file (a folder?); give state.path a file")
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, "rb") as handle:
                    header = handle.read(len(SQLITE_HEADER))
                if header != SQLITE_HEADER:
                    raise self._fail(f"not an SQLite database (offset 0: header {header[:16]!r})")
        except OSError as exc:
            raise self._fail(f"cannot open: {exc.strerror or exc}") from None

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                found = "; ".join(" ".join(str(p).split()) for p in problems)
                raise self._fail(f"damaged: {found}")
            conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            (version,) = conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._fail(f"damaged or unreadable (SQLite: {exc})") from None
        if version != str(SCHEMA_VERSION):
            raise self._fail(
                f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})",
                " (table meta)",
            )

    def _read_connection(self) -> sqlite3.Connection:
        """The connection audit reads use (call with `_read_lock` held)."""
        if self._reader is None:
            with self._lock:
                self._connect()  # checked and prepared once, by the writing connection
            self._reader = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        return self._reader

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- the port --------------------------------------------------------------------

    def load(self) -> DesiredState | None:
        with self._lock:
            conn = self._connect()
            try:
                row = conn.execute("SELECT revision, doc FROM state WHERE id = 1").fetchone()
                if row is None:
                    return None
                revision, doc = row
                overrides = dict(conn.execute("SELECT key, variant FROM overrides"))
            except sqlite3.Error as exc:
                raise self._fail(f"damaged or unreadable (SQLite: {exc})") from None
            state = self._decode(revision, doc, overrides)
            self._committed_overrides = Overrides.of(state.user_overrides).serial
            return state

    def _decode(self, revision: object, doc: object, overrides: dict[str, str]) -> DesiredState:
        where = " (table state, row 1)"
        try:
            data: Any = json.loads(doc) if isinstance(doc, str) else None
        except (ValueError, RecursionError) as exc:
            raise self._fail(f"not valid JSON: {type(exc).__name__}: {exc}", where) from None
        if not isinstance(data, dict):
            raise self._fail("the state is not a JSON object", where)
        try:
            state = DesiredState.from_dict({**data, "user_overrides": overrides})
        except StateFormatError as exc:
            raise self._fail(str(exc), where) from None
        if state.revision != revision:
            raise self._fail(f"revision column {revision!r} != state {state.revision}", where)
        return state

    def commit(self, state: DesiredState, entry: AuditEntry) -> None:
        """The state and its audit entry in one transaction (raises OSError, rolled back)."""
        doc = json.dumps(state.to_dict(overrides=False), sort_keys=True)
        line = entry.to_json()
        overrides = Overrides.of(state.user_overrides)
        with self._lock:
            conn = self._connect_for_write()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO state (id, revision, doc) VALUES (1, ?, ?) ON CONFLICT (id) "
                    "DO UPDATE SET revision = excluded.revision, doc = excluded.doc",
                    (state.revision, doc),
                )
                self._write_overrides(conn, overrides)
                conn.execute(
                    "INSERT INTO audit (revision_after, bytes, entry) VALUES (?, ?, ?)",
                    (entry.revision_after, len(line.encode()), line),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise OSError(f"{self.path}: {exc}") from None
            self._committed_overrides = overrides.serial

    def _connect_for_write(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except StateFileError as exc:
            raise OSError(str(exc)) from None

    def _write_overrides(self, conn: sqlite3.Connection, overrides: Overrides) -> None:
        """Only the changed rows when `overrides` derives from the map the rows hold."""
        if overrides.serial == self._committed_overrides:
            return
        if overrides.base_serial and overrides.base_serial == self._committed_overrides:
            _apply_changes(conn, overrides.changes)
            return
        conn.execute("DELETE FROM overrides")
        conn.executemany("INSERT INTO overrides (key, variant) VALUES (?, ?)", overrides.items())

    def audit_count(self) -> int:
        with self._read_lock:
            conn = self._read_connection()
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()
        return int(row[0])

    def read_audit(self, start: int, limit: int, max_bytes: int) -> list[AuditEntry]:
        with self._read_lock:
            rows = self._read_connection().execute(
                "SELECT seq, bytes, entry FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (start, limit),
            )
            try:
                return take_page(self._entries(rows), limit, max_bytes)
            finally:
                rows.close()  # ends the read transaction, so checkpoints can reset the WAL

    def _entries(self, rows: Iterator[tuple[int, int, str]]) -> Iterator[tuple[int, AuditEntry]]:
        for seq, size, text in rows:
            try:
                yield size, AuditEntry.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise OSError(f"{self.path} (table audit, seq {seq}): unreadable: {exc}") from None

    def last_revision(self) -> int:
        """Best effort, also on a damaged file: the highest revision readable through SQLite,
        or found in the raw bytes of the file and its WAL (the audit rows' JSON) when the
        file is too damaged to open (0: none)."""
        with self._lock:
            return max(self._queried_revision(), _scanned_revision(self.path))

    def _queried_revision(self) -> int:
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0
        try:
            found = [0]
            for sql in ("SELECT max(revision_after) FROM audit", "SELECT revision FROM state"):
                try:
                    row = conn.execute(sql).fetchone()
                except sqlite3.Error:
                    continue
                if row and isinstance(row[0], int):
                    found.append(row[0])
            return max(found)
        finally:
            conn.close()

    def quarantine(self) -> str | None:
        """Move the database (and its WAL) aside as `<name>.corrupt-<unix time>`."""
        self.close()
        with self._lock:
            if not self.path.exists():
                return None
            target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{target}{suffix}")
            self._committed_overrides = 0
            return str(target)


_REVISION = re.compile(rb'"revision(?:_after)?": ?(\d{1,18})')
_SCAN_CHUNK = 1 << 20


def _scanned_revision(path: Path) -> int:
    """The highest `"revision": N` / `"revision_after": N` in the bytes of the database and
    its WAL (read in 1 MiB chunks; 0 when unreadable)."""
    best = 0
    for name in (str(path), f"{path}-wal"):
        try:
            with open(name, "rb") as handle:
                tail = b""
                while chunk := handle.read(_SCAN_CHUNK):
                    data = tail + chunk
                    best = max([best, *(int(m) for m in _REVISION.findall(data))])
                    tail = data[-40:]
        except OSError:
            continue
    return best


def _apply_changes(conn: sqlite3.Connection, changes: Mapping[str, list[str | None]]) -> None:
    for key, (_, after) in changes.items():
        if after is None:
            conn.execute("DELETE FROM overrides WHERE key = ?", (key,))
        else:
            conn.execute(
                "INSERT INTO overrides (key, variant) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET variant = excluded.variant",
                (key, after),
            )

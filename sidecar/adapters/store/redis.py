"""Redis state store: the fleet's shared desired state and its audit stream.

The commit rule: one Lua script (atomic on the Redis server) checks the revision, checks
the leader's fencing token when one is set, then writes the state, appends the audit entry
to the stream and publishes the new revision, or refuses with nothing written:

- compare-and-set: the state document must be at the revision the new state was derived
  from (the new revision minus one). When there is no document (a new fleet, a Redis that
  came back empty, a quarantined document) the new revision must be above the last one in
  the audit stream, so revisions never repeat. A re-seed passes the revision it saw
  explicitly (`expected`). Refused: `RevisionConflict` (ABORTED);
- fencing: when `sidecar.app.ports.leader_fence` holds a token, `GET lease` must equal it.
  Refused: `NotLeader` (ABORTED "not the leader");
- Redis errors (down, timeout, refused script) are OSError naming Redis (UNAVAILABLE,
  nothing changed).

Keys (`sidecar.adapters.fleet.keys.FleetKeys`): `state` is a hash (`revision`, `schema`,
`doc`: the state as compact JSON with its schema version); `audit` is a stream whose
entry ids are `<seq>-0` (seq counts from 1, so paging by position is an id range) with
fields `rev` (revision after) and `entry` (the audit entry's JSON).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import redis

from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.store import take_page
from sidecar.app.ports import AuditEntry, NotLeader, RevisionConflict, StateFileError, leader_fence
from sidecar.core.state import SCHEMA_VERSION, DesiredState, StateFormatError

# KEYS: state, audit, lease. ARGV: new revision, expected (-1: derived), doc, audit
# entry, fencing token ('' = none), schema version, changes channel.
COMMIT_SCRIPT = """
local new = tonumber(ARGV[1])
local expected = tonumber(ARGV[2])
if ARGV[5] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder ~= ARGV[5] then
    return {'fence', holder or ''}
  end
end
local cur = redis.call('HGET', KEYS[1], 'revision')
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local seq = 1
local last_rev = 0
if #last > 0 then
  seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'rev' then last_rev = tonumber(fields[i + 1]) end
  end
end
if expected >= 0 then
  if (tonumber(cur) or 0) ~= expected then
    return {'conflict', cur or '0'}
  end
elseif cur then
  if tonumber(cur) ~= new - 1 then
    return {'conflict', cur}
  end
elseif new <= last_rev then
  return {'conflict', tostring(last_rev)}
end
redis.call('HSET', KEYS[1], 'revision', ARGV[1], 'schema', ARGV[6], 'doc', ARGV[3])
redis.call('XADD', KEYS[2], seq .. '-0', 'rev', ARGV[1], 'entry', ARGV[4])
redis.call('PUBLISH', ARGV[7], ARGV[1])
return {'ok', ARGV[1]}
"""

_REVISION = re.compile(r'"revision(?:_after)?": ?(\d{1,18})')


def redis_name(url: str) -> str:
    """`redis host:port/db` without credentials (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or 6379
    return f"redis {host}:{port}{parts.path or '/0'}"


def encode_state(state: DesiredState) -> str:
    return json.dumps(
        {"schema_version": SCHEMA_VERSION, "state": state.to_dict()},
        sort_keys=True,
        separators=(",", ":"),
    )


def decode_revision(value: Any) -> int:
    """The revision field of the state hash (0 when absent or unreadable)."""
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


class RedisStore:
    """The `StateStore` port on one Redis (the fleet's keys). Blocking calls: the control
    service runs commits in a worker thread; the client's pool is thread-safe."""

    def __init__(self, client: redis.Redis, keys: FleetKeys, url: str) -> None:
        self.client = client
        self.keys = keys
        self.name = redis_name(url)
        self.path = f"{self.name} key {keys.state}"  # what start-up messages name
        self._commit = client.register_script(COMMIT_SCRIPT)

    def _unavailable(self, exc: Exception) -> OSError:
        return OSError(f"{self.name} unavailable: {type(exc).__name__}: {exc}")

    # ---- the port --------------------------------------------------------------------

    def load(self) -> DesiredState | None:
        """The shared state; StateFileError naming the key when this version cannot read
        it; OSError naming Redis when Redis cannot be reached."""
        try:
            fields = self.client.hgetall(self.keys.state)
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: not a hash
            raise StateFileError(self.path, f"unreadable ({exc})") from None
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        if not fields:
            return None
        return self.decode(fields)

    def decode(self, fields: Mapping[Any, Any]) -> DesiredState:
        """The state of the hash's fields (StateFileError naming the key)."""
        doc = fields.get(b"doc")
        if doc is None:
            raise StateFileError(self.path, "has no 'doc' field (not written by a sidecar?)")
        try:
            state = DesiredState.from_json(doc.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise StateFileError(self.path, f"not UTF-8: {exc}") from None
        except StateFormatError as exc:
            raise StateFileError(self.path, str(exc)) from None
        revision = decode_revision(fields.get(b"revision"))
        if revision != state.revision:
            raise StateFileError(
                self.path, f"revision field {revision} != the document's {state.revision}"
            )
        return state

    def commit(self, state: DesiredState, entry: AuditEntry, *, expected: int = -1) -> None:
        """The state, its audit entry and the change notice in one script, or nothing.
        `expected` >= 0: the stored revision must be exactly it (0: no document)."""
        fence = leader_fence.get()
        args: list[str | int] = [
            state.revision,
            expected,
            encode_state(state),
            entry.to_json(),
            "" if fence is None else str(fence),
            SCHEMA_VERSION,
            self.keys.changes,
        ]
        try:
            keys = [self.keys.state, self.keys.audit, self.keys.lease]
            result = self._commit(keys=keys, args=args)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        status, value = (_text(v) for v in result)
        if status == "fence":
            raise NotLeader(
                f"not the leader: the lease is held by token {value or 'nobody'}, not {fence}"
            )
        if status == "conflict":
            raise RevisionConflict(
                f"the fleet state is at revision {value}; revision {state.revision} was "
                f"derived from {state.revision - 1}: re-read the state and retry"
            )

    def audit_count(self) -> int:
        try:
            last = self.client.xrevrange(self.keys.audit, count=1)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return _seq(last[0][0]) if last else 0

    def read_audit(self, start: int, limit: int, max_bytes: int) -> list[AuditEntry]:
        try:
            rows: Any = self.client.xrange(self.keys.audit, min=f"{start + 1}-0", count=limit)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return take_page(self._entries(rows), limit, max_bytes)

    def _entries(self, rows: list[Any]) -> Iterator[tuple[int, AuditEntry]]:
        for entry_id, fields in rows:
            text = fields.get(b"entry", b"")
            try:
                yield len(text), AuditEntry.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                raise OSError(
                    f"{self.name} key {self.keys.audit} (entry {_text(entry_id)}): "
                    f"unreadable: {exc}"
                ) from None

    def last_revision(self) -> int:
        """The highest revision in the state hash (read raw) or the last audit entry."""
        found = [0]
        try:
            last: Any = self.client.xrevrange(self.keys.audit, count=1)
            if last:
                found.append(decode_revision(last[0][1].get(b"rev")))
            raw = self.client.hget(self.keys.state, "revision")
            found.append(decode_revision(raw))
            doc = self.client.hget(self.keys.state, "doc")
            if isinstance(doc, bytes):
                text = doc.decode("utf-8", "replace")
                found.extend(int(m) for m in _REVISION.findall(text))
        except redis.ResponseError:
            pass  # a key of the wrong type: nothing to read from it
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return max(found)

    def quarantine(self) -> str | None:
        """Rename the unreadable state key aside as `<key>:corrupt-<unix time>`."""
        target = f"{self.keys.state}:corrupt-{int(time.time())}"
        try:
            if not self.client.exists(self.keys.state):
                return None
            self.client.rename(self.keys.state, target)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return f"{self.name} key {target}"

    def close(self) -> None:
        self.client.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _seq(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])

"""One sidecar as a member of its fleet: follow the shared state, heartbeat, re-seed.

- **Follow**: subscribed to the changes channel (each commit publishes its revision) and
  re-reading the state every `resync_interval` (a lost notice is healed), the member
  applies a stored revision only when it is newer than the one it holds, through
  `StateHolder.follow` (the same swap a local commit makes: the next request reads it,
  `WatchState` streams see it). A stored document this version cannot read, or one that
  does not fit this sidecar's variants, is logged and not applied: the last applied state
  keeps serving.
- **Membership**: a heartbeat (id, host, version, applied revision, ready, the Control
  address it advertises, `state.redis.advertise_control`) goes into the
  members hash every `heartbeat_interval` and at once after each applied revision (so a
  write that waits sees it without a heartbeat's delay). `seen` is Redis's own clock
  (`TIME`, inside the script), so members' clocks need not agree; a member not seen for
  `member_ttl` is not live, and entries not seen for `PRUNE_TTLS` x `member_ttl` are
  removed by the next heartbeat of any member.
- **Redis down**: nothing here is on the request path; the member keeps serving the last
  state it applied (a kill switch that is on stays on). The listener reconnects with
  backoff (0.05 s doubling to 1 s) and re-reads the state when it is back; heartbeats and
  re-reads retry on their timers. Failures are logged once per outage.
- **Re-seed**: a stored revision below the one this member holds (or no document at all)
  means Redis lost its data (restarted without persistence, flushed): revisions never go
  backwards, so this is never read as "no rollout". One member (`SET reseed NX PX`)
  commits the state it holds at its revision plus one, audited as `Reseed`, with a
  compare-and-set on what it saw; the others follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio
import structlog

from sidecar.adapters.fleet.connection import raise_if_cancelled
from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.store.redis import RedisStore, decode_revision
from sidecar.app.ports import AuditEntry, CommitRefused, MemberStatus, StateFileError
from sidecar.app.state import Snapshot, StateHolder
from sidecar.core.routing import Flag, FlagError

log = structlog.get_logger("sidecar.fleet")

PRUNE_TTLS = 3
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
WAIT_POLL = 0.01
LISTEN_POLL = 1.0

# KEYS: members. ARGV: member id, heartbeat JSON (without `seen`), prune-after seconds.
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local beat = cjson.decode(ARGV[2])
beat['seen'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(beat))
local all = redis.call('HGETALL', KEYS[1])
local cutoff = now - tonumber(ARGV[3])
for i = 1, #all, 2 do
  local ok, other = pcall(cjson.decode, all[i + 1])
  if not ok or type(other) ~= 'table' or tonumber(other['seen'] or 0) < cutoff then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return tostring(now)
"""


class FleetMember:
    """The member's background work (`run`) and the `Fleet` port (`members`,
    `wait_applied`) for the Control servicer."""

    def __init__(
        self,
        *,
        client: redis.asyncio.Redis,
        store: RedisStore,
        keys: FleetKeys,
        holder: StateHolder,
        template: Flag,
        member_id: str,
        host: str,
        version: str,
        heartbeat_interval: float,
        member_ttl: float,
        resync_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.store = store
        self.keys = keys
        self.holder = holder
        self.template = template
        self.member_id = member_id
        self.host = host
        self.version = version
        self.heartbeat_interval = heartbeat_interval
        self.member_ttl = member_ttl
        self.resync_interval = resync_interval
        self.ready = False
        self.reseeds = 0
        self.control_address = ""  # advertised in the heartbeat; set once Control is bound
        self._clock = clock
        self._sync_lock = asyncio.Lock()
        self._heartbeat = client.register_script(HEARTBEAT_SCRIPT)
        self._refused = -1  # the stored revision last refused (unreadable or unfitting)
        self._down: dict[str, str] = {}  # loop -> the error it last logged (once per outage)

    # ---- background work -------------------------------------------------------------

    async def run(self) -> None:
        """Listen, re-read, heartbeat and report applied revisions until cancelled."""
        await asyncio.gather(
            self._listen(), self._resync_loop(), self._heartbeat_loop(), self._report_applied()
        )

    async def _listen(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.keys.changes)
                await self.sync()  # whatever was missed while not subscribed
                self._recovered("listen")
                backoff = BACKOFF_FIRST
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_POLL
                    )
                    raise_if_cancelled()
                    notice = _notice(message)
                    if notice is not None and notice[0] > self.holder.current.revision:
                        await self.take(*notice)
            except Exception as exc:  # logged, retried: never stops the member's work
                self._failed("listen", exc)
                raise_if_cancelled()
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_interval)
            try:
                await self.sync()
                self._recovered("resync")
            except Exception as exc:  # logged, retried: never stops the member's work
                self._failed("resync", exc)
            raise_if_cancelled()

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.beat()
                self._recovered("heartbeat")
            except Exception as exc:  # logged, retried: never stops the member's work
                self._failed("heartbeat", exc)
            raise_if_cancelled()
            await asyncio.sleep(self.heartbeat_interval)

    async def _report_applied(self) -> None:
        """A heartbeat at once whenever a new snapshot is in force (local or followed)."""
        queue = self.holder.watch()
        try:
            while True:
                await queue.get()
                while not queue.empty():
                    queue.get_nowait()
                with contextlib.suppress(Exception):  # the timer's heartbeat retries
                    await self.beat()
                raise_if_cancelled()
        finally:
            self.holder.unwatch(queue)

    def _failed(self, loop: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if loop not in self._down:
            log.warning(
                "fleet.redis_unavailable",
                loop=loop,
                redis=self.store.name,
                error=text,
                serving_revision=self.holder.current.revision,
            )
        self._down[loop] = text

    def _recovered(self, loop: str) -> None:
        if self._down.pop(loop, None) is not None:
            log.info("fleet.redis_back", loop=loop, revision=self.holder.current.revision)

    # ---- following -------------------------------------------------------------------

    async def take(self, revision: int, doc: bytes | None) -> None:
        """A change notice: apply the document it carries, or read the state."""
        if doc is None:
            await self.sync()
            return
        async with self._sync_lock:
            if revision > self.holder.current.revision:
                self._apply({b"revision": str(revision).encode(), b"doc": doc})

    async def sync(self) -> None:
        """Read the shared state once: apply it when newer, re-seed when Redis lost it."""
        async with self._sync_lock:
            fields = await self.client.hgetall(self.keys.state)
            held = self.holder.current
            stored = decode_revision(fields.get(b"revision")) if fields else 0
            if stored > held.revision:
                self._apply(fields)
            elif stored < held.revision:
                await self._reseed(held, stored)

    def _apply(self, fields: Mapping[Any, Any]) -> None:
        try:
            state = self.store.decode(fields)
            flag = state.to_flag(self.template)
        except (StateFileError, FlagError) as exc:
            revision = decode_revision(fields.get(b"revision"))
            if revision == self._refused:
                return  # logged once per revision
            self._refused = revision
            log.error(
                "fleet.state_not_applied",
                key=self.keys.state,
                error=str(exc),
                serving_revision=self.holder.current.revision,
            )
            return
        if self.holder.follow(Snapshot(flag, state)):
            log.info("fleet.applied", revision=state.revision, kill_switch=state.kill_switch)

    async def _reseed(self, held: Snapshot, stored: int) -> None:
        guard_ms = max(1000, int(self.member_ttl * 1000))
        won = await self.client.set(self.keys.reseed, self.member_id, nx=True, px=guard_ms)
        if not won:
            return
        now = self._clock()
        revision = held.revision + 1
        reason = (
            f"Redis held revision {stored or 'nothing'} below the fleet's {held.revision} "
            f"(lost its data?): re-seeded by {self.member_id} from the state it serves"
        )
        state = held.state.evolve(
            revision=revision, updated_unix_time=now, updated_by="sidecar", update_reason=reason
        )
        entry = AuditEntry(now, "sidecar", "Reseed", reason, held.revision, revision, {})
        try:
            await asyncio.to_thread(self.store.commit, state, entry, expected=stored)
        except CommitRefused as exc:  # someone wrote meanwhile: follow that instead
            log.info("fleet.reseed_skipped", reason=str(exc))
            return
        self.reseeds += 1
        log.warning("fleet.reseeded", revision=revision, stored_before=stored)
        self.holder.follow(Snapshot(held.flag, state, safe_mode=held.safe_mode))

    # ---- membership ------------------------------------------------------------------

    def heartbeat_document(self) -> dict[str, Any]:
        return {
            "id": self.member_id,
            "host": self.host,
            "version": self.version,
            "applied_revision": self.holder.current.revision,
            "ready": self.ready,
            "control_address": self.control_address,
        }

    async def beat(self) -> None:
        beat = json.dumps(self.heartbeat_document(), separators=(",", ":"))
        prune_after = PRUNE_TTLS * self.member_ttl
        await self._heartbeat(keys=[self.keys.members], args=[self.member_id, beat, prune_after])

    async def leave(self) -> None:
        """Remove this member's entry (a clean stop), best effort."""
        with contextlib.suppress(redis.RedisError, OSError):
            await self.client.hdel(self.keys.members, self.member_id)

    async def members(self) -> list[MemberStatus]:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.hgetall(self.keys.members)
                (seconds, micros), entries = await pipe.execute()
        except redis.RedisError as exc:
            raise OSError(f"{self.store.name} unavailable: {type(exc).__name__}: {exc}") from None
        now = float(seconds) + float(micros) / 1e6
        out = [_member(raw, now, self.member_ttl) for raw in entries.values()]
        return sorted((m for m in out if m is not None), key=lambda m: m.member_id)

    async def wait_applied(self, revision: int, timeout: float) -> list[MemberStatus]:
        """Polls the members hash every WAIT_POLL s (each member beats at once when it
        applies a revision); a Redis error is retried until the deadline, then raised."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = await self.members()
            except OSError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(WAIT_POLL * 10)
                continue
            lagging = [m for m in found if m.live and m.applied_revision < revision]
            if not lagging or time.monotonic() >= deadline:
                return lagging
            await asyncio.sleep(WAIT_POLL)

    async def close(self) -> None:
        await self.leave()
        await self.client.aclose()


def _notice(message: Mapping[str, Any] | None) -> tuple[int, bytes | None] | None:
    """(revision, document or None) of a change notice; None for anything else."""
    if message is None or message.get("type") != "message":
        return None
    data = message.get("data")
    if not isinstance(data, bytes):
        return None
    head, _, doc = data.partition(b"\n")
    return decode_revision(head), doc or None


def _member(raw: bytes, now: float, ttl: float) -> MemberStatus | None:
    try:
        data = json.loads(raw)
        seen = float(data["seen"])
        return MemberStatus(
            member_id=str(data["id"]),
            host=str(data.get("host", "")),
            version=str(data.get("version", "")),
            applied_revision=int(data.get("applied_revision", 0)),
            ready=bool(data.get("ready", False)),
            last_seen_unix=seen,
            live=now - seen <= ttl,
            control_address=_control_address(data.get("control_address")),
        )
    except (ValueError, KeyError, TypeError):
        return None


MAX_CONTROL_ADDRESS = 255


def _control_address(value: object) -> str:
    """The advertised Control address of a heartbeat; "" when absent or not a bounded
    printable string (an entry from an older member, or a damaged one)."""
    if not isinstance(value, str) or len(value) > MAX_CONTROL_ADDRESS:
        return ""
    return value if value.isascii() and value.isprintable() else ""

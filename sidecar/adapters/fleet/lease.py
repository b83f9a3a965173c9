"""One rollout driver per fleet: a leader lease in Redis with a fencing token.

Protocol (all keys in `FleetKeys`):

- **acquire**: one Lua script: when `lease` does not exist, `INCR lease_counter` and
  `SET lease <token> PX ttl`; the token is the new counter value. Tokens only grow, across
  leaders and across Redis restarts that keep the counter (with an emptied Redis the
  counter restarts; the state store's compare-and-set on the revision still holds then).
- **renew**: one Lua script: `PEXPIRE lease ttl` only when `GET lease` is still our
  token (compare-and-renew), so a member whose lease expired and was taken never renews
  the new leader's lease.
- **release** (graceful stop): `DEL lease` only when it still holds our token.

Locally a member counts itself leader until `started + ttl * (1 - SAFETY)`, where
`started` is its clock reading *before* the acquire/renew command was sent: Redis starts
its PX countdown later than that, so the member gives up strictly before Redis would let
another member in (the margin covers clock-rate differences). A member that cannot reach
Redis stops leading when that local deadline passes, even though nobody told it.

The leader sets `sidecar.app.ports.leader_fence` to its token around each act (see
`fenced`); a fleet store checks inside its compare-and-set that the lease still holds that
token, so a write from a deposed leader (paused past its lease, e.g. a long GC or a
frozen VM) is refused instead of racing the new one.

Renewal runs every `ttl / 3`, a follower's acquire attempt every `ttl / 10`: a leader that
dies (SIGKILL) is replaced at most `ttl + ttl / 10` after its last renewal (then the new
leader's first tick follows: `RolloutController.run` checks the lease every 0.25 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import redis
import redis.asyncio
import structlog

from sidecar.adapters.fleet.connection import raise_if_cancelled
from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.app.ports import NotLeader, leader_fence

log = structlog.get_logger("sidecar.fleet")

SAFETY: Final = 0.2
"""Fraction of the lease a leader gives up early (local deadline before Redis's expiry)."""

_ACQUIRE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"""

_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaderLease:
    """This member's view of the fleet's leader lease.

    `step()` is one attempt (acquire when not leading, renew when leading) and returns
    whether this member leads afterwards; `run()` repeats it (every `ttl / 3` leading,
    `ttl / 10` following). `is_leader()` answers from the local deadline only (no I/O), so
    the rollout driver can ask before every tick. `clock` is a monotonic clock (tests pass
    a `FakeClock`).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: FleetKeys,
        member: str,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        self.client = client
        self.keys = keys
        self.member = member
        self.ttl = float(ttl)
        self.clock = clock
        self._ttl_ms = max(1, round(self.ttl * 1000))
        self._token: int | None = None
        self._valid_until = 0.0
        self.acquired = 0  # times this member became leader
        self.lost = 0  # times it stopped leading (renewal refused or local deadline passed)
        self.errors = 0  # Redis errors while acquiring or renewing
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._renew: Any = client.register_script(_RENEW)
        self._release: Any = client.register_script(_RELEASE)

    @property
    def interval(self) -> float:
        """Seconds between attempts: a third of the lease."""
        return self.ttl / 3

    @property
    def token(self) -> int | None:
        """The fencing token while leading (None otherwise)."""
        return self._token if self.is_leader() else None

    def is_leader(self) -> bool:
        """Whether this member may act as the leader now (local deadline not passed)."""
        if self._token is None:
            return False
        if self.clock() >= self._valid_until:
            self._lose("lease deadline passed without a renewal")
            return False
        return True

    def _lose(self, why: str) -> None:
        if self._token is not None:
            log.warning("fleet.leader_lost", member=self.member, token=self._token, why=why)
            self.lost += 1
        self._token = None
        self._valid_until = 0.0

    async def step(self) -> bool:
        """One attempt: renew the lease when leading, else try to acquire it."""
        started = self.clock()
        try:
            if self.is_leader():
                assert self._token is not None
                renewed = await self._renew(
                    keys=[self.keys.lease], args=[str(self._token), self._ttl_ms]
                )
                if int(renewed) == 1:
                    self._valid_until = started + self.ttl * (1 - SAFETY)
                else:
                    self._lose("the lease is held by another member")
                return self.is_leader()
            token = int(
                await self._acquire(
                    keys=[self.keys.lease, self.keys.lease_counter], args=[self._ttl_ms]
                )
            )
        except (redis.RedisError, OSError) as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("fleet.lease_unreachable", error=str(exc), errors=self.errors)
            return self.is_leader()
        if token > 0:
            self._token = token
            self._valid_until = started + self.ttl * (1 - SAFETY)
            self.acquired += 1
            log.info("fleet.leader_acquired", member=self.member, token=token)
        return self.is_leader()

    async def release(self) -> None:
        """Give the lease up (graceful stop), so another member takes over at once."""
        token, self._token = self._token, None
        if token is None:
            return
        with contextlib.suppress(redis.RedisError, OSError):
            await self._release(keys=[self.keys.lease], args=[str(token)])

    @property
    def follower_interval(self) -> float:
        """Seconds between a follower's acquire attempts: a tenth of the lease, so a dead
        leader is replaced at most `ttl / 10` after its lease ran out in Redis."""
        return self.ttl / 10

    async def run(self) -> None:
        """Renew every `interval` seconds while leading; try to acquire every
        `follower_interval` otherwise; for ever (cancel to stop)."""
        while True:
            leading = await self.step()
            raise_if_cancelled()
            await asyncio.sleep(self.interval if leading else self.follower_interval)

    @contextlib.contextmanager
    def fenced(self) -> Iterator[int]:
        """Within: `leader_fence` holds this member's token (the store checks it in its
        compare-and-set). Raises `NotLeader` when this member does not lead."""
        token = self.token
        if token is None:
            raise NotLeader(f"member {self.member} does not hold the rollout leader lease")
        reset = leader_fence.set(token)
        try:
            yield token
        finally:
            leader_fence.reset(reset)


_SAVE_FENCED: Final = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class SharedCheckpoint:
    """A JSON checkpoint in Redis that the leader keeps and its successor restores (the
    canary deployment's budget state: one budget per deployment across the fleet, never
    renewed by a change of leader). `save` writes only while `leader_fence` holds the
    lease's token (a deposed leader's late save is dropped); blocking calls, like the
    file checkpoint it replaces in a fleet. Redis errors name the key: ValueError from
    `load` (read as unreadable: the evaluator logs and alerts a new budget), OSError from
    `save`."""

    def __init__(self, client: redis.Redis, keys: FleetKeys, name: str) -> None:
        self.client = client
        self.keys = keys
        self.key = f"{keys.prefix}:{name}"
        self._save: Any = client.register_script(_SAVE_FENCED)

    def load(self) -> dict[str, Any] | None:
        try:
            raw = self.client.get(self.key)
        except redis.RedisError as exc:  # unreadable now: the caller logs and alerts it
            raise ValueError(f"redis key {self.key}: {exc}") from None
        if raw is None:
            return None
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError(f"redis key {self.key}: not a JSON object")
        return data

    def save(self, data: Mapping[str, Any]) -> None:
        fence = leader_fence.get()
        document = json.dumps(data, separators=(",", ":"))
        try:
            self._save(
                keys=[self.key, self.keys.lease], args=[document, "" if fence is None else fence]
            )
        except redis.RedisError as exc:
            raise OSError(f"redis key {self.key}: {exc}") from None

"""The leader lease against a real redis-server: one leader at a time, fencing tokens that
only grow, compare-and-renew (a deposed leader cannot renew the new leader's lease), a
local deadline on the member's own clock, and release on a graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.fleet.lease import SAFETY, LeaderLease
from sidecar.app.ports import NotLeader, leader_fence
from sidecar.testing.clock import FakeClock
from sidecar.testing.redis import RedisServer

KEYS = FleetKeys("lease-test")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(server.url)
    await c.flushall()
    yield c
    await c.aclose()


def lease(
    client: redis.asyncio.Redis, member: str, clock: FakeClock, ttl: float = 5.0
) -> LeaderLease:
    return LeaderLease(client, KEYS, member, ttl, clock=clock)


async def test_exactly_one_member_acquires(client: redis.asyncio.Redis) -> None:
    clock = FakeClock(0.0)
    members = [lease(client, f"m{i}", clock) for i in range(5)]
    won = await asyncio.gather(*(m.step() for m in members))
    assert sum(won) == 1
    leader = members[won.index(True)]
    assert leader.token is not None
    assert int(await client.get(KEYS.lease)) == leader.token
    assert [m.is_leader() for m in members].count(True) == 1


async def test_takeover_after_expiry_gets_a_higher_token_and_the_old_leader_cannot_renew(
    client: redis.asyncio.Redis,
) -> None:
    clock_a, clock_b = FakeClock(0.0), FakeClock(0.0)
    a, b = lease(client, "a", clock_a), lease(client, "b", clock_b)
    assert await a.step()
    first = a.token
    assert not await b.step()
    await client.delete(KEYS.lease)  # the lease expired in Redis (a paused leader)
    assert await b.step()
    assert b.token is not None and first is not None and b.token > first
    # a still believes it leads until its own deadline, but its renewal is refused
    assert a.is_leader()
    assert not await a.step()
    assert not a.is_leader() and a.lost == 1
    assert int(await client.get(KEYS.lease)) == b.token  # a did not touch b's lease


async def test_local_deadline_ends_leadership_without_redis(client: redis.asyncio.Redis) -> None:
    clock = FakeClock(0.0)
    a = lease(client, "a", clock, ttl=5.0)
    assert await a.step()
    clock.advance(5.0 * (1 - SAFETY) - 0.01)
    assert a.is_leader()
    clock.advance(0.02)
    assert not a.is_leader()
    assert a.token is None


async def test_renewal_moves_the_deadline(client: redis.asyncio.Redis) -> None:
    clock = FakeClock(0.0)
    a = lease(client, "a", clock, ttl=3.0)
    assert await a.step()
    for _ in range(10):  # 10 renewals, each inside the lease
        clock.advance(a.interval)
        assert await a.step()
    assert a.is_leader() and a.acquired == 1
    ttl_ms = await client.pttl(KEYS.lease)
    assert 0 < ttl_ms <= 3000


async def test_unreachable_redis_keeps_leadership_only_until_the_deadline(
    client: redis.asyncio.Redis,
) -> None:
    clock = FakeClock(0.0)
    # no retries: redis-py's default backoff spends seconds of real time per refused
    # command (2.8 s measured), and the real lease key (5 s ttl in Redis's own time) could
    # expire meanwhile and be re-acquired through b's live client
    dead = redis.asyncio.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    a = LeaderLease(dead, KEYS, "a", 5.0, clock=clock)
    assert not await a.step()
    assert a.errors == 1
    b = lease(client, "b", clock)
    assert await b.step()
    # b's Redis goes away (swap its client for the dead one): it keeps leading until its
    # deadline, then stops, whatever Redis says
    b._renew = a._renew
    clock.advance(b.interval)
    assert await b.step()
    clock.advance(5.0)
    assert not await b.step()
    await dead.aclose()


async def test_release_lets_another_member_in_at_once(client: redis.asyncio.Redis) -> None:
    clock = FakeClock(0.0)
    a, b = lease(client, "a", clock), lease(client, "b", clock)
    assert await a.step()
    await a.release()
    assert not a.is_leader()
    assert await b.step()


async def test_fenced_sets_the_token_only_while_leading(client: redis.asyncio.Redis) -> None:
    clock = FakeClock(0.0)
    a = lease(client, "a", clock)
    with pytest.raises(NotLeader), a.fenced():
        pass
    assert await a.step()
    assert leader_fence.get() is None
    with a.fenced() as token:
        assert leader_fence.get() == token == a.token
    assert leader_fence.get() is None


async def test_real_ttl_expiry_hands_over(client: redis.asyncio.Redis) -> None:
    """With Redis's own clock: a leader that stops renewing (killed) is replaced once the
    PX expiry passes; the follower polls (bounded)."""
    a = LeaderLease(client, KEYS, "a", 0.3)
    b = LeaderLease(client, KEYS, "b", 0.3)
    assert await a.step()
    for _ in range(200):
        if await b.step():
            break
        await asyncio.sleep(0.02)
    assert b.is_leader()
    assert b.token is not None and a._token is not None and b.token > a._token

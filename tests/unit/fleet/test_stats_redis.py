"""Fleet statistics through a real redis-server: members publish snapshots and read each
other's; counts made while Redis is down arrive with the first publish after it returns;
malformed or expired documents are skipped; an outcome reported to another member is
forwarded through the owner's bounded stream and counted once by the owner's own ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio

from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.fleet.stats import (
    FORWARD_QUEUE,
    FleetExperiment,
    FleetStats,
    OutcomeForwarder,
    feed_windows,
    owner_of,
    request_ids,
    short_id,
)
from sidecar.core.canary.merged import MergedWindows
from sidecar.core.canary.window import RollingWindows
from sidecar.core.experiment import OutcomeLedger, UnknownMetric, WrongValueType
from sidecar.core.experiment.analysis import ExperimentSettings, ExperimentTracker, MetricSpec
from sidecar.testing.redis import RedisServer

T0 = 1_700_000_000.0
SETTINGS = ExperimentSettings(metrics=(MetricSpec("click", "bool", 0.02, baseline=0.2),))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    c = redis.asyncio.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    yield c
    await c.aclose()


class Member:
    """One member's statistics parts, on a fixed clock."""

    def __init__(self, client: redis.asyncio.Redis, name: str, keys: FleetKeys) -> None:
        self.now = T0
        self.windows = RollingWindows(10.0, 600.0)
        self.tracker = ExperimentTracker(SETTINGS)
        self.tracker.sync("stable", "canary", {"stable": 5000, "canary": 5000}, T0)
        self.stats = FleetStats(
            client, keys, name, windows=self.windows, experiment=self.tracker.counters,
            span=600.0, interval=1.0, ttl=60.0, clock=lambda: self.now,
        )  # fmt: skip
        self.merged = MergedWindows(self.windows, settle=0.0)
        self.stats.on_refresh.append(feed_windows(self.merged))
        self.view = FleetExperiment(SETTINGS, self.stats)

    def serve(self, variant: str, n: int, status: str = "OK") -> None:
        self.windows.record_many(variant, self.now, status, [0.01], [n])
        for _ in range(n):
            self.tracker.assigned(variant)


def members(client: redis.asyncio.Redis, n: int, fleet: str = "f") -> list[Member]:
    return [Member(client, f"m{i}", FleetKeys(fleet)) for i in range(n)]


async def test_every_member_reads_the_others_and_the_fleet_adds_up(
    client: redis.asyncio.Redis,
) -> None:
    fleet = members(client, 3)
    for i, m in enumerate(fleet):
        m.serve("stable", 10 * (i + 1))
        m.serve("canary", 1 + i, "UNAVAILABLE")
        m.tracker.outcome(1, "stable", "", "click", True)
    for m in fleet:
        assert await m.stats.publish()
    for m in fleet:
        m.now += 20.0
        assert await m.stats.refresh()
        assert set(m.stats.others) == {f"m{i}" for i in range(3)} - {m.stats.member}
        stable = m.merged.window("stable", m.now, 60.0)
        canary = m.merged.window("canary", m.now, 60.0)
        assert stable.requests == 60 and canary.errors == 6
        view = m.view(m.tracker, m.now)
        assert view.counters().assigned == {"stable": 60, "canary": 6}
        assert view.counters().cells[("click", "stable", "other")][:2] == (3, 3)


async def test_counts_made_while_redis_is_down_arrive_after_it_returns(
    client: redis.asyncio.Redis, server: RedisServer
) -> None:
    a, b = members(client, 2)
    a.serve("stable", 5)
    assert await a.stats.publish()
    server.stop()
    a.serve("stable", 7)  # counted while Redis is down
    a.tracker.outcome(1, "stable", "", "click", False)
    assert not await a.stats.publish()
    assert a.stats.publish_failures == 1
    assert not await b.stats.refresh()  # the reader keeps its cache
    server.start()
    for _ in range(100):  # the client reconnects on its own; bounded retries
        if await a.stats.publish():
            break
        await asyncio.sleep(0.05)
    assert await b.stats.refresh()
    b.now += 20.0
    assert b.merged.window("stable", b.now, 60.0).requests == 12
    assert b.view(b.tracker, b.now).counters().cells[("click", "stable", "other")][:2] == (1, 0)


async def test_malformed_and_expired_documents_are_skipped(client: redis.asyncio.Redis) -> None:
    keys = FleetKeys("bad")
    (a,) = members(client, 1, "bad")
    await client.sadd(keys.stats_index, "evil", "gone")
    await client.set(keys.stats("evil"), json.dumps({"v": 1, "member": "evil", "short": "x"}))
    assert await a.stats.refresh()
    assert a.stats.others == {} and a.stats.malformed == 1
    members_left = {m.decode() for m in await client.smembers(keys.stats_index)}
    assert "gone" not in members_left  # its key expired: it leaves the index


def test_request_ids_carry_the_member_short_id() -> None:
    ids = request_ids("pod-a:12")
    first = ids()
    assert owner_of(first) == short_id("pod-a:12") and first != ids()
    for other in ("", "abc", "0123abcd-xyz", "0123abcd" + "-" + "g" * 32, "x" * 41):
        assert owner_of(other) is None


async def test_outcome_reported_to_another_member_counts_once_at_the_owner(
    client: redis.asyncio.Redis,
) -> None:
    owner, other = members(client, 2, "out")
    ledger = OutcomeLedger(kinds={"click": "bool"})
    served = request_ids(owner.stats.member)()
    ledger.remember(served, "canary", "", 0.0)
    kinds = {"click": "bool"}
    to_owner = OutcomeForwarder(client, owner.stats.keys, owner.stats, kinds, stream_ttl=60.0)
    via = OutcomeForwarder(client, other.stats.keys, other.stats, kinds, stream_ttl=60.0)
    for m in (owner, other):
        await m.stats.publish()
    for m in (owner, other):
        await m.stats.refresh()
    counted: list[bool] = []

    def apply(request_id: str, metric: str, value: bool | float) -> None:
        counted.append(ledger.report(request_id, metric, value, 1.0).counted)

    consumer = asyncio.create_task(to_owner.consume(apply))
    try:
        # refused at once, nothing queued: unknown metric, wrong kind
        with pytest.raises(UnknownMetric):
            via.offer(served, "revenue", 1.0)
        with pytest.raises(WrongValueType):
            via.offer(served, "click", 1.0)
        # an id of no live member is this member's own business (its ledger: NOT_FOUND)
        assert via.offer("deadbeef-" + "0" * 32, "click", True) is None
        assert via.offer(request_ids(other.stats.member)(), "click", True) is None
        forged = f"{owner.stats.short}-{'f' * 32}"
        for request_id in (served, served, forged):  # a repeat, and a forged id
            attribution = via.offer(request_id, "click", True)
            assert attribution is not None and not attribution.counted
        assert await via.send()
        for _ in range(200):
            if to_owner.applied + to_owner.refused == 3:
                break
            await asyncio.sleep(0.02)
    finally:
        consumer.cancel()
    assert counted == [True, False]  # counted once; the repeat is a duplicate
    assert to_owner.refused == 1  # the forged id: unknown at the owner, nothing counted
    assert ledger.counters[("click", "canary", "")].n == 1
    assert await client.xlen(to_owner.stream(owner.stats.short)) == 0  # consumed


async def test_forwarding_queue_is_bounded(client: redis.asyncio.Redis) -> None:
    owner, other = members(client, 2, "flood")
    for m in (owner, other):
        await m.stats.publish()
    await other.stats.refresh()
    via = OutcomeForwarder(client, other.stats.keys, other.stats, {"click": "bool"}, stream_ttl=1.0)
    for i in range(FORWARD_QUEUE + 50):
        via.offer(f"{owner.stats.short}-{i:032x}", "click", True)
    assert via.dropped == 50
    assert await via.send()
    assert via.forwarded == FORWARD_QUEUE

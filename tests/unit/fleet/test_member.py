"""A fleet member against a real redis-server, in process: it applies only newer stored
revisions (swapped through the StateHolder, watchers see them), never an unreadable or
unfitting document, re-seeds a Redis that lost the state (once, above the old revision,
audited), heartbeats with Redis's clock and prunes dead entries, and `wait_applied` lists
the live members that had not applied a revision in time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis
import redis.asyncio

from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.fleet.member import FleetMember
from sidecar.adapters.grpc.control import fleet_wait_seconds
from sidecar.adapters.store.redis import RedisStore
from sidecar.app.ports import AuditEntry
from sidecar.app.state import StateHolder
from sidecar.core.routing import Flag
from sidecar.core.state import DesiredState
from sidecar.errors import InvalidRequest
from sidecar.testing.clock import FakeClock
from sidecar.testing.redis import RedisServer


def flag() -> Flag:
    return Flag.build(
        key="k", variants=["stable", "canary"], stable="stable", canary="canary",
        weights={"stable": 9000, "canary": 1000},
    )  # fmt: skip


def state(revision: int, **changes: object) -> DesiredState:
    return DesiredState.from_flag(flag(), revision=revision).evolve(**changes)  # type: ignore[arg-type]


def entry(after: int, method: str = "SetWeights") -> AuditEntry:
    return AuditEntry(float(after), "ops", method, "r", after - 1, after, {})


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


Factory = Callable[[str], FleetMember]


@pytest.fixture
async def make(server: RedisServer, request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    fleet = request.node.name[:50]
    made: list[FleetMember] = []

    def build(member_id: str) -> FleetMember:
        store = RedisStore(redis.Redis.from_url(server.url), FleetKeys(fleet), server.url)
        member = FleetMember(
            client=redis.asyncio.Redis.from_url(server.url),
            store=store,
            keys=store.keys,
            holder=StateHolder(flag(), state(1)),
            template=flag(),
            member_id=member_id,
            host="h",
            version="test",
            heartbeat_interval=60,
            member_ttl=2.0,
            resync_interval=60,
            clock=FakeClock(),
        )
        made.append(member)
        return member

    yield build
    for member in made:
        await member.client.aclose()
        member.store.close()


async def test_applies_only_newer_revisions(make: Factory) -> None:
    """A newer stored revision is swapped in (watchers see it); an older one is not."""
    member = make("a")
    member.store.commit(state(1), entry(1))
    member.store.commit(state(2, kill_switch=True), entry(2))
    watch = member.holder.watch()
    watch.get_nowait()
    await member.sync()
    assert member.holder.current.revision == 2 and member.holder.current.state.kill_switch
    assert (await watch.get()).revision == 2
    member.holder.follow(member.holder.current.__class__(flag(), state(5)))
    assert member.holder.follow(member.holder.current.__class__(flag(), state(3))) is False
    assert member.holder.current.revision == 5


async def test_unreadable_or_unfitting_document_is_not_applied(make: Factory) -> None:
    """A document this version cannot read, or whose variants this sidecar lacks, is
    logged and not applied: the member keeps serving what it holds."""
    member = make("a")
    doc = json.dumps({"schema_version": 99, "state": {}})
    await member.client.hset(member.keys.state, mapping={"revision": 4, "doc": doc})
    await member.sync()
    assert member.holder.current.revision == 1
    other = Flag.build(key="k", variants=["stable", "other"], stable="stable",
                       weights={"stable": 0, "other": 10_000})  # fmt: skip
    await member.client.delete(member.keys.state)
    member.store.commit(DesiredState.from_flag(other, revision=6), entry(6))
    await member.sync()
    assert member.holder.current.revision == 1


async def test_lost_state_is_reseeded_once_above_the_old_revision(make: Factory) -> None:
    """Two members holding revision 3 find Redis empty: exactly one re-seeds it at 4
    (audited Reseed, kill switch kept); the other then follows it."""
    a, b = make("a"), make("b")
    a.store.commit(state(3, kill_switch=True), entry(3), expected=0)
    await a.sync()
    await b.sync()
    assert a.holder.current.revision == b.holder.current.revision == 3
    await a.client.flushall()
    await asyncio.gather(a.sync(), b.sync())
    assert a.reseeds + b.reseeds == 1
    await a.sync()
    await b.sync()
    stored = a.store.load()
    assert stored is not None and stored.revision == 4 and stored.kill_switch
    assert a.holder.current.revision == b.holder.current.revision == 4
    assert [e.method for e in a.store.read_audit(0, 10, 1 << 20)] == ["Reseed"]


async def test_stored_revision_below_held_is_reseeded(make: Factory) -> None:
    """A Redis holding an older revision than the fleet served (a stale copy restored,
    or a new member initialised an emptied Redis) is re-seeded above the held one."""
    a = make("a")
    a.store.commit(state(7, kill_switch=True), entry(7), expected=0)
    await a.sync()
    await a.client.flushall()
    a.store.commit(state(1), entry(1))  # e.g. a new member's Initialize
    await a.client.delete(a.keys.reseed)
    await a.sync()
    stored = a.store.load()
    assert stored is not None and stored.revision == 8 and stored.kill_switch


async def test_heartbeats_membership_wait_and_prune(make: Factory) -> None:
    """Members list with their applied revision; `wait_applied` returns the live ones
    below the revision; an entry not seen for 3 member_ttl is pruned by any heartbeat."""
    a, b = make("a"), make("b")
    await a.beat()
    await b.beat()
    listed = await a.members()
    assert [(m.member_id, m.applied_revision, m.live) for m in listed] == [
        ("a", 1, True),
        ("b", 1, True),
    ]
    a.holder.follow(a.holder.current.__class__(flag(), state(2)))
    await a.beat()
    lagging = await a.wait_applied(2, timeout=0.05)
    assert [m.member_id for m in lagging] == ["b"]
    b.holder.follow(b.holder.current.__class__(flag(), state(2)))
    await b.beat()
    assert await a.wait_applied(2, timeout=5) == []
    old = json.dumps({"id": "gone", "applied_revision": 1, "seen": 1.0})
    await a.client.hset(a.keys.members, "gone", old)
    assert "gone" in [m.member_id for m in await a.members()]
    await a.beat()
    assert [m.member_id for m in await a.members()] == ["a", "b"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "301", "abc", ""])
def test_fleet_wait_header_is_bounded(value: str) -> None:
    with pytest.raises(InvalidRequest, match="x-fleet-wait-seconds"):
        fleet_wait_seconds([("x-fleet-wait-seconds", value)])


def test_fleet_wait_header_values() -> None:
    assert fleet_wait_seconds([]) is None
    assert fleet_wait_seconds([("x-fleet-wait-seconds", "2.5")]) == 2.5
    assert fleet_wait_seconds([("x-fleet-wait-seconds", b"300")]) == 300.0


async def test_change_notice_carries_small_documents(make: Factory) -> None:
    """A commit publishes `<revision>\\n<document>` (applied without another read) when
    the document is at most NOTICE_DOC_BYTES, else the revision alone (then read)."""
    member = make("a")
    pubsub = member.client.pubsub()
    await pubsub.subscribe(member.keys.changes)
    await pubsub.get_message(timeout=1.0)  # the subscription confirmation

    async def notice() -> bytes:
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                data: bytes = message["data"]
                return data
        raise AssertionError("no change notice")

    member.store.commit(state(2, kill_switch=True), entry(2), expected=0)
    revision, _, doc = (await notice()).partition(b"\n")
    assert revision == b"2" and doc
    await member.take(2, doc)
    assert member.holder.current.revision == 2 and member.holder.current.state.kill_switch
    many = {f"user-{i:06d}": "canary" for i in range(5000)}  # about 100 KiB of JSON
    member.store.commit(state(3, user_overrides=many), entry(3))
    assert await notice() == b"3"
    await member.take(3, None)
    assert member.holder.current.revision == 3
    assert len(member.holder.current.state.user_overrides) == 5000
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_heartbeat_carries_the_advertised_control_address(make: Factory) -> None:
    """The heartbeat lists the member's Control address; an older member's entry (none)
    or a damaged one (not a bounded printable string) lists as ""."""
    a = make("a")
    a.control_address = "10.0.0.7:8501"
    await a.beat()
    for member_id, value in [("old", None), ("long", "h" * 300 + ":1"), ("bin", "a\x00:1")]:
        entry = {"id": member_id, "applied_revision": 1, "seen": 9e9}
        if value is not None:
            entry["control_address"] = value
        await a.client.hset(a.keys.members, member_id, json.dumps(entry))
    listed = {m.member_id: m.control_address for m in await a.members()}
    assert listed == {"a": "10.0.0.7:8501", "old": "", "long": "", "bin": ""}

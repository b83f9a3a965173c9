"""The Redis state store on a real redis-server: the commit script's compare-and-set,
fencing, audit stream paging, unreadable documents named by key, quarantine, and
start-up through `initial_snapshot` (first member initialises, racing members follow)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sidecar.adapters.fleet.keys import FleetKeys
from sidecar.adapters.store.redis import RedisStore
from sidecar.app.ports import (
    AuditEntry,
    NotLeader,
    RevisionConflict,
    StateFileError,
    leader_fence,
)
from sidecar.config import parse_config
from sidecar.core.routing import Flag
from sidecar.core.state import DesiredState
from sidecar.testing.credentials import control_section
from sidecar.testing.redis import RedisServer
from sidecar.wiring import StartupError, initial_snapshot


def flag() -> Flag:
    return Flag.build(
        key="k", variants=["stable", "canary"], stable="stable", canary="canary",
        weights={"stable": 9000, "canary": 1000},
    )  # fmt: skip


def state(revision: int, **changes: Any) -> DesiredState:
    return DesiredState.from_flag(flag(), revision=revision).evolve(**changes)


def entry(after: int, method: str = "SetWeights") -> AuditEntry:
    return AuditEntry(float(after), "ops", method, "r", after - 1, after, {"x": [1, 2]})


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture
def store(server: RedisServer, request: pytest.FixtureRequest) -> Iterator[RedisStore]:
    client = redis.Redis.from_url(server.url)
    fleet = request.node.name.replace("[", "-").replace("]", "")[:60]
    s = RedisStore(client, FleetKeys(fleet), server.url)
    yield s
    s.close()


def test_commit_round_trip_and_audit_paging(store: RedisStore) -> None:
    """Committed states load back equal; audit entries page by position and bytes."""
    assert store.load() is None and store.audit_count() == 0
    for revision in range(1, 6):
        store.commit(state(revision, kill_switch=revision % 2 == 0), entry(revision))
    assert store.load() == state(5, kill_switch=False)
    assert store.audit_count() == 5
    assert [e.revision_after for e in store.read_audit(0, 2, 1 << 20)] == [1, 2]
    assert [e.revision_after for e in store.read_audit(3, 10, 1 << 20)] == [4, 5]
    assert len(store.read_audit(0, 10, 1)) == 1  # at least one entry per page
    assert store.read_audit(1, 1, 1 << 20) == [entry(2)]
    assert store.last_revision() == 5


def test_compare_and_set_refuses_a_stale_derivation(store: RedisStore) -> None:
    """A state derived from an older revision is refused and nothing is written."""
    store.commit(state(1), entry(1))
    store.commit(state(2), entry(2))
    with pytest.raises(RevisionConflict, match="revision 2"):
        store.commit(state(2, kill_switch=True), entry(2))
    assert store.load() == state(2) and store.audit_count() == 2
    # With no document, a revision at or below the audit stream's last one is refused.
    store.client.delete(store.keys.state)
    with pytest.raises(RevisionConflict):
        store.commit(state(2), entry(2))
    store.commit(state(3), entry(3))
    assert store.load() == state(3)


def test_racing_commits_exactly_one_wins(store: RedisStore) -> None:
    """Eight threads commit revision 2 on top of 1 at once: exactly one is stored."""
    store.commit(state(1), entry(1))
    results: list[str] = []
    barrier = threading.Barrier(8)

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.commit(state(2, update_reason=f"w{i}"), entry(2))
            results.append(f"won {i}")
        except RevisionConflict:
            results.append("lost")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("won")]
    assert len(winners) == 1 and results.count("lost") == 7
    loaded = store.load()
    assert loaded is not None and loaded.update_reason == f"w{winners[0].split()[1]}"
    assert store.audit_count() == 2


def test_fencing_token_must_hold_the_lease(store: RedisStore) -> None:
    """With `leader_fence` set, the commit needs the lease to hold that token."""
    store.commit(state(1), entry(1))
    store.client.set(store.keys.lease, "7")
    token = leader_fence.set(6)
    try:
        with pytest.raises(NotLeader, match="not the leader"):
            store.commit(state(2), entry(2))
    finally:
        leader_fence.reset(token)
    assert store.load() == state(1)
    token = leader_fence.set(7)
    try:
        store.commit(state(2), entry(2))
    finally:
        leader_fence.reset(token)
    assert store.load() == state(2)


def test_explicit_expected_revision_for_a_reseed(store: RedisStore) -> None:
    """A re-seed passes the revision it saw (0: none) and wins only against that."""
    store.commit(state(9), entry(9), expected=0)
    with pytest.raises(RevisionConflict):
        store.commit(state(12), entry(12), expected=0)
    store.commit(state(12), entry(12), expected=9)
    assert store.load() == state(12)


@pytest.mark.parametrize(
    "fields",
    [
        {"revision": "3", "schema": "1", "doc": "{not json"},
        {"revision": "3", "schema": "1", "doc": json.dumps({"schema_version": 99, "state": {}})},
        {"revision": "3", "schema": "1"},
    ],
)
def test_unreadable_document_names_the_key(store: RedisStore, fields: dict[str, str]) -> None:
    """A document this version cannot read is a StateFileError naming the Redis key."""
    store.client.hset(store.keys.state, mapping=fields)
    with pytest.raises(StateFileError) as caught:
        store.load()
    assert store.keys.state in str(caught.value)


def test_wrong_type_key_names_the_key(store: RedisStore) -> None:
    store.client.set(store.keys.state, "a string")
    with pytest.raises(StateFileError, match="WRONGTYPE"):
        store.load()


def config(server: RedisServer, fleet: str) -> Any:
    return parse_config(
        {
            "model": "m",
            "variants": {"stable": {"address": "127.0.0.1:1", "model_name": "m"},
                         "canary": {"address": "127.0.0.1:2", "model_name": "m"}},
            "flag": {"key": "k", "stable": "stable", "canary": "canary",
                     "weights": {"stable": 9000, "canary": 1000}},
            "state": {"backend": "redis", "redis": {"url": server.url, "fleet": fleet}},
            "control": control_section(),
        }
    )  # fmt: skip


def test_startup_refuses_bad_document_and_safe_mode_continues(
    server: RedisServer, store: RedisStore
) -> None:
    """Start-up stops on an unreadable document naming the key; --safe-mode moves it
    aside and commits the kill switch on at a revision above any seen."""
    cfg = config(server, store.keys.fleet)
    store.commit(state(1), entry(1))
    store.commit(state(2), entry(2))
    store.client.hset(store.keys.state, "doc", '{"schema_version": 99, "revision": 4}')
    with pytest.raises(StartupError) as caught:
        initial_snapshot(cfg, store, safe_mode=False)
    assert store.keys.state in str(caught.value) and "\n" not in str(caught.value)
    snapshot = initial_snapshot(cfg, store, safe_mode=True)
    assert snapshot.safe_mode and snapshot.state.kill_switch
    assert snapshot.revision == 5  # above the 4 found in the damaged document
    assert store.load() == snapshot.state
    assert store.read_audit(2, 1, 1 << 20)[0].method == "SafeMode"
    assert store.client.keys(f"{store.keys.state}:corrupt-*")


def test_first_members_race_to_initialise(server: RedisServer, store: RedisStore) -> None:
    """Members starting at once on an empty fleet: one commits Initialize, the others
    load that state."""
    cfg = config(server, store.keys.fleet)
    snaps = []
    barrier = threading.Barrier(4)

    def start() -> None:
        s = RedisStore(redis.Redis.from_url(server.url), store.keys, server.url)
        barrier.wait()
        snaps.append(initial_snapshot(cfg, s, safe_mode=False))
        s.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s.revision for s in snaps] == [1, 1, 1, 1]
    assert store.audit_count() == 1


def test_member_identity_from_config_env_or_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """member_id wins, then $SIDECAR_MEMBER_ID, then the pod/host name plus the pid."""
    from sidecar.config import RedisConfig

    monkeypatch.setenv("POD_NAME", "iris-7f9c")
    monkeypatch.delenv("SIDECAR_MEMBER_ID", raising=False)
    assert RedisConfig().member() == (f"iris-7f9c:{os.getpid()}", "iris-7f9c")
    monkeypatch.setenv("SIDECAR_MEMBER_ID", "env-id")
    assert RedisConfig().member() == ("env-id", "iris-7f9c")
    assert RedisConfig(member_id="cfg-id").member() == ("cfg-id", "iris-7f9c")


def test_check_config_names_an_unset_password_variable(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check-config` (parse_config) reports a password variable that is not set."""
    from sidecar.config import ConfigError

    monkeypatch.delenv("NO_SUCH_REDIS_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match=r"state\.redis\.password_env: environment variable"):
        parse_config(
            {
                "model": "m",
                "variants": {"stable": {"address": "127.0.0.1:1", "model_name": "m"}},
                "flag": {"key": "k", "stable": "stable", "weights": {"stable": 10_000}},
                "state": {
                    "backend": "redis",
                    "redis": {"url": server.url, "password_env": "NO_SUCH_REDIS_PASSWORD"},
                },
                "control": control_section(),
            }
        )


def test_a_lost_answer_is_checked_against_the_stored_state(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the connection drops after the script ran, the commit reads the state once:
    its own document stored means committed; anything else is UNAVAILABLE (OSError)."""
    real = store._commit

    def ran_then_dropped(**kwargs: Any) -> Any:
        real(**kwargs)
        raise redis.ConnectionError("connection reset after the script")

    def dropped(**kwargs: Any) -> Any:
        raise redis.ConnectionError("connection refused")

    store.commit(state(1), entry(1))
    monkeypatch.setattr(store, "_commit", ran_then_dropped)
    store.commit(state(2, kill_switch=True), entry(2))  # no error: it was stored
    assert store.load() == state(2, kill_switch=True)
    monkeypatch.setattr(store, "_commit", dropped)
    with pytest.raises(OSError, match=r"redis 127\.0\.0\.1"):
        store.commit(state(3), entry(3))
    assert store.load() == state(2, kill_switch=True)


def test_lost_document_with_an_audit_log_is_not_initialised_again(
    server: RedisServer, store: RedisStore
) -> None:
    """No state document but an audit log past revision 1: start-up stops naming the key
    (never re-initialises at revision 1); --safe-mode starts kill switch on above it."""
    cfg = config(server, store.keys.fleet)
    for revision in (1, 2, 3):
        store.commit(state(revision), entry(revision))
    store.client.delete(store.keys.state)
    with pytest.raises(StartupError) as caught:
        initial_snapshot(cfg, store, safe_mode=False)
    assert store.keys.state in str(caught.value) and "re-seed" in str(caught.value)
    assert store.load() is None
    snapshot = initial_snapshot(cfg, store, safe_mode=True)
    assert snapshot.state.kill_switch and snapshot.revision == 4


def test_advertised_control_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """advertise_control wins (port 0: the bound port); else listen.control when its host
    is specific; else $POD_IP, else the pod/host name, with the bound port."""
    from sidecar.config import RedisConfig

    monkeypatch.setenv("POD_NAME", "iris-7f9c")
    monkeypatch.delenv("POD_IP", raising=False)
    given = RedisConfig(advertise_control="iris-0.iris:8501")
    assert given.advertised_control("0.0.0.0:8501", 8501) == "iris-0.iris:8501"
    assert RedisConfig(advertise_control="10.1.2.3:0").advertised_control("x:0", 4242) == (
        "10.1.2.3:4242"
    )
    assert RedisConfig().advertised_control("127.0.0.1:0", 4242) == "127.0.0.1:4242"
    assert RedisConfig().advertised_control("0.0.0.0:8501", 8501) == "iris-7f9c:8501"
    monkeypatch.setenv("POD_IP", "10.244.1.9")
    assert RedisConfig().advertised_control("0.0.0.0:8501", 8501) == "10.244.1.9:8501"
    monkeypatch.setenv("POD_IP", "fd00::9")
    assert RedisConfig().advertised_control("[::]:8501", 8501) == "[fd00::9]:8501"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("no-port", "host:port"),
        ("h:99999", "0..65535"),
        ("a b:1", "without spaces"),
        ("h" * 256 + ":1", "at most 255"),
    ],
)
def test_advertise_control_is_validated_naming_the_field(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, value: str, words: str
) -> None:
    """A bad address, from the file or $SIDECAR_ADVERTISE_CONTROL, is refused naming both."""
    from sidecar.config import ConfigError

    monkeypatch.setenv("SIDECAR_ADVERTISE_CONTROL", value)
    with pytest.raises(ConfigError) as caught:
        config(server, "adv")
    text = str(caught.value)
    assert "state.redis.advertise_control" in text and words in text
    assert "$SIDECAR_ADVERTISE_CONTROL" in text

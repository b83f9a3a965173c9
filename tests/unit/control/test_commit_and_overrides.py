"""The commit rule through `ControlService` (a failed commit changes nothing), audit pages
bounded by bytes, and override writes whose cost follows the change, not the map."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from typing import Any

import pytest

from sidecar.adapters.store.memory import MemoryStateStore
from sidecar.adapters.store.sqlite import SqliteStore
from sidecar.app.control import ControlService
from sidecar.app.ports import AuditEntry, StateStore
from sidecar.app.state import StateHolder
from sidecar.config import parse_config
from sidecar.core.routing import Flag, FlagError, Overrides, model
from sidecar.core.state import DesiredState
from sidecar.errors import ErrorCode, InvalidRequest, SidecarError
from sidecar.testing.inprocess import config_dict

MANY = 99_999  # one below the Control limit (sidecar/core/limits.py): the write adds one


def service(store: StateStore, overrides: int = 0) -> ControlService:
    """A ControlService over `store`, starting from the configured flag plus `overrides`
    user overrides (committed as the first state)."""
    config = parse_config(
        config_dict(
            {"stable": "127.0.0.1:1", "canary": "127.0.0.1:1"},
            weights={"stable": 9500, "canary": 500},
        ),
        "<test>",
    )
    start = DesiredState.from_flag(config.flag).evolve(
        user_overrides={f"user-{i}": "stable" for i in range(overrides)}
    )
    flag = start.to_flag(config.flag)

    async def ready(variant: str) -> bool:
        return True

    return ControlService(
        holder=StateHolder(flag, start),
        template=config.flag,
        store=store,
        ready=ready,
        served=lambda: {"canary": 1},
    )


async def test_a_failed_commit_is_unavailable_and_changes_nothing() -> None:
    """A store that cannot commit: the write is answered UNAVAILABLE saying nothing
    changed, the snapshot, the stored state and the audit log are as before."""
    store = MemoryStateStore()
    svc = service(store)
    await svc.set_weights("ops", "ramp", 0, {"stable": 9000, "canary": 1000})
    before = svc.snapshot()
    store.fail = OSError("disk full")
    with pytest.raises(SidecarError) as info:
        await svc.set_kill_switch("ops", "incident", 0, True)
    assert info.value.code is ErrorCode.UNAVAILABLE and "nothing changed" in str(info.value)
    assert svc.snapshot() is before and store.state == before.state
    assert [e.method for e in store.entries] == ["SetWeights"]


async def test_audit_page_is_bounded_by_bytes(tmp_path: Any) -> None:
    """`audit_page` stops at the byte budget (at least one entry) and reports the total."""
    svc = service(SqliteStore(tmp_path / "s.db"))
    for i in range(4):
        await svc.set_user_override("ops", "r" * 1000, 0, f"user-{i}", "canary")
    entries, total = svc.audit_page(0, 50, 2500)
    assert total == 4 and len(entries) == 2
    assert entries[0].diff == {"user_overrides": {"user-0": [None, "canary"]}}
    assert len(svc.audit_page(3, 50, 1)[0]) == 1


async def test_override_write_at_100k_checks_and_stores_one_key(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100,000 overrides a write validates one key, stores one row and audits one key;
    a restart reads every override back."""
    store = SqliteStore(tmp_path / "s.db")
    svc = service(store, MANY)
    first = svc.snapshot().state
    store.commit(first, _initial(first))
    checked: list[str] = []
    need = model._need_variant

    def counting(field: str, value: object, known: set[str]) -> str:
        checked.append(field)
        return need(field, value, known)

    monkeypatch.setattr(model, "_need_variant", counting)
    snap = await svc.set_user_override("ops", "beta", 0, "qa-user", "canary")
    assert [f for f in checked if f.startswith("user_overrides")] == ["user_overrides[qa-user]"]
    assert snap.flag.user_overrides.get("qa-user") == "canary"
    (entry,) = svc.audit_page(1, 10, 1 << 20)[0]
    assert entry.diff == {"user_overrides": {"qa-user": [None, "canary"]}}
    checked.clear()
    await svc.clear_user_override("ops", "done", 0, "user-7")
    assert not [f for f in checked if f.startswith("user_overrides")]
    reloaded = SqliteStore(tmp_path / "s.db").load()
    assert reloaded is not None and len(reloaded.user_overrides) == MANY
    assert reloaded.user_overrides.get("qa-user") == "canary"
    assert "user-7" not in reloaded.user_overrides


def _initial(state: DesiredState) -> AuditEntry:
    return AuditEntry(0.0, "config", "Initialize", "test", 0, state.revision, {})


async def test_a_bad_changed_override_is_refused_and_changes_nothing() -> None:
    """An override naming an unknown variant is refused naming the key (the verb's check,
    or the flag's when the state is built directly); nothing is stored."""
    store = MemoryStateStore()
    svc = service(store, 10)
    with pytest.raises(InvalidRequest, match="unknown variant"):
        await svc.set_user_override("ops", "typo", 0, "u", "canry")
    bad = svc.snapshot().state.with_override("u", "canry")
    with pytest.raises(FlagError, match=r"user_overrides\[u\]"):
        bad.to_flag(svc.template)
    assert store.commits == 0


def test_a_map_checked_against_other_variants_is_checked_again() -> None:
    """The cached check only holds for the same or more variants: compiled against fewer,
    every key is checked again (and a key sending users to a removed variant is named)."""
    both = Flag.build(
        key="k", variants=["a", "b"], stable="a", weights={"a": 10_000},
        user_overrides={"x": "b"},
    )  # fmt: skip
    assert isinstance(both.user_overrides, Overrides)
    with pytest.raises(FlagError, match=r"user_overrides\[x\]"):
        Flag.compile(key="k", variants=["a"], routing=both.routing.evolve(weights={"a": 10_000}))


def test_overrides_are_read_only_and_copy_like_a_dict() -> None:
    """The map in a state cannot be changed in place; `set` returns a changed copy that
    records the change (also across the compaction of its delta); copies see every entry."""
    base = Overrides({"a": "stable"})
    with pytest.raises(TypeError):
        base["b"] = "canary"  # type: ignore[index]
    changed = base.set("b", "canary")
    assert base == {"a": "stable"} and changed == {"a": "stable", "b": "canary"}
    assert changed.base_serial == base.serial and changed.changes == {"b": [None, "canary"]}
    assert copy.deepcopy(changed) == changed and json.loads(json.dumps(dict(changed))) == changed
    model_map = {"a": "stable"}
    current = base
    for i in range(1000):  # past several compactions, with removals of old and new keys
        key = f"k{i % 300}" if i % 3 else "a"
        variant = None if i % 5 == 0 else ("canary" if i % 2 else "stable")
        before = model_map.get(key)
        if variant is None:
            model_map.pop(key, None)
        else:
            model_map[key] = variant
        current = current.set(key, variant)
        assert current.changes == ({key: [before, variant]} if before != variant else {})
        assert len(current) == len(model_map) and current.get(key) == model_map.get(key)
    assert current == model_map and sorted(current) == sorted(model_map)


class SlowStore(MemoryStateStore):
    """Commits wait until `release` is set (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def commit(self, state: DesiredState, entry: AuditEntry) -> None:
        self.entered.set()
        assert self.release.wait(10.0)
        super().commit(state, entry)


async def test_a_caller_cancelled_mid_commit_leaves_served_and_stored_state_equal() -> None:
    """A client that goes away while its write is being committed: the commit finishes,
    the committed state is the one served, and the next write continues the revisions."""
    store = SlowStore()
    svc = service(store)
    write = asyncio.create_task(svc.set_kill_switch("ops", "incident", 0, True))
    assert await asyncio.to_thread(store.entered.wait, 10.0)
    write.cancel()
    store.release.set()
    with pytest.raises(asyncio.CancelledError):
        await write
    assert store.state is not None and svc.snapshot().state == store.state
    assert svc.snapshot().state.kill_switch and svc.snapshot().revision == 2
    after = await svc.set_kill_switch("ops", "over", 0, False)
    assert [e.revision_after for e in store.entries] == [2, after.revision] == [2, 3]

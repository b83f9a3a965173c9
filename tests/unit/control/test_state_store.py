"""Durable state: the SQLite store (state and audit in one transaction), the state
document, corrupt storage, audit paging, and what the sidecar starts with (stored state
wins; unreadable state stops start-up unless safe mode, which keeps revisions monotonic)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sidecar.adapters.store.memory import MemoryStateStore
from sidecar.adapters.store.sqlite import SqliteStore
from sidecar.app.ports import AuditEntry, StateFileError
from sidecar.config import ConfigError, parse_config
from sidecar.core.routing import Flag, RoutingState, SegmentRule
from sidecar.core.state import DesiredState, Promotion, StateFormatError, diff
from sidecar.testing.credentials import control_section
from sidecar.wiring import StartupError, initial_snapshot


def flag() -> Flag:
    return Flag.build(
        key="k", variants=["stable", "canary"], stable="stable", canary="canary",
        weights={"stable": 9000, "canary": 1000}, segments=["beta"],
    )  # fmt: skip


def a_state() -> DesiredState:
    return DesiredState.from_flag(flag(), revision=7).evolve(
        kill_switch=True,
        kill_switch_reason="incident 42",
        user_overrides={"qa": "canary"},
        segment_rules=(SegmentRule("beta", "canary"),),
        promotions=(Promotion(1.5, "ops", "a", "b", "why"),),
    )


def entry(after: int, reason: str = "r", diff: dict[str, Any] | None = None) -> AuditEntry:
    return AuditEntry(float(after), "ops", "SetWeights", reason, after - 1, after, diff or {})


def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    """A committed state loads back equal (also from a new store on the same file), with
    its audit entry; the database is in WAL mode with synchronous=FULL."""
    store = SqliteStore(tmp_path / "var" / "sidecar.db")
    assert store.load() is None and store.audit_count() == 0
    store.commit(a_state(), entry(7))
    assert store.load() == a_state()
    reopened = SqliteStore(tmp_path / "var" / "sidecar.db")
    assert reopened.load() == a_state()
    assert reopened.audit_count() == 1 and reopened.read_audit(0, 10, 1 << 20) == [entry(7)]
    assert reopened.last_revision() == 7
    with sqlite3.connect(tmp_path / "var" / "sidecar.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store._conn is not None
    assert store._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_a_failed_commit_changes_neither_state_nor_audit(tmp_path: Path) -> None:
    """An audit insert that fails (a trigger raising, as an unwritable audit would) rolls
    the state row back too: after reopening, the previous state and log are there."""
    path = tmp_path / "sidecar.db"
    store = SqliteStore(path)
    store.commit(a_state(), entry(7))
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit "
            "BEGIN SELECT RAISE(ABORT, 'audit is read-only'); END"
        )
    changed = a_state().evolve(revision=8, kill_switch=False).with_override("new", "stable")
    with pytest.raises(OSError, match="audit is read-only"):
        store.commit(changed, entry(8))
    assert store.load() == a_state()
    reopened = SqliteStore(path)
    assert reopened.load() == a_state() and reopened.audit_count() == 1


def test_override_writes_touch_only_the_changed_rows(tmp_path: Path) -> None:
    """Setting and clearing an override through `with_override` writes three rows (state,
    one override, audit); the rows always equal the state's map, also when a write chains
    changes or starts from a plain dict (a full rewrite)."""
    path = tmp_path / "sidecar.db"
    store = SqliteStore(path)
    base = a_state().evolve(user_overrides={f"u{i}": "stable" for i in range(1000)})
    store.commit(base, entry(7))
    states = [base.evolve(revision=8).with_override("u5", "canary")]
    states.append(states[-1].evolve(revision=9).with_override("u6", None))
    states.append(
        states[-1].evolve(revision=10).with_override("vip", "x").with_override("u7", None)
    )
    written = []
    for state in states:
        before = store._conn.total_changes if store._conn else 0
        store.commit(state, entry(state.revision))
        written.append(store._conn.total_changes - before if store._conn else 0)
    assert written[:2] == [3, 3]
    assert diff(states[0], states[1]) == {"user_overrides": {"u6": ["stable", None]}}
    assert SqliteStore(path).load() == states[-1]
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT key, variant FROM overrides"))
    assert rows == dict(states[-1].user_overrides) and rows["vip"] == "x" and "u6" not in rows


def test_audit_pages_by_count_and_bytes(tmp_path: Path) -> None:
    """Pages stop at the count or the byte budget, whichever comes first, and always
    carry at least one entry (so paging advances)."""
    for store in (SqliteStore(tmp_path / "s.db"), MemoryStateStore()):
        for i in range(1, 6):
            store.commit(a_state().evolve(revision=i), entry(i, "x" * 100 * i))
        sizes = [e.size for e in store.read_audit(0, 10, 1 << 20)]
        assert len(sizes) == 5
        assert [e.reason for e in store.read_audit(1, 2, 1 << 20)] == ["x" * 200, "x" * 300]
        page = store.read_audit(0, 10, sizes[0] + sizes[1])
        assert [e.revision_after for e in page] == [1, 2]
        assert [e.revision_after for e in store.read_audit(4, 10, 1)] == [5]
        assert store.read_audit(5, 10, 1 << 20) == []
        assert store.audit_count() == 5


# Written by the sidecar before the routing rules became one `RoutingState` (a_state()).
STATE_FILE_V1 = """{
  "schema_version": 1,
  "state": {
    "canary": "canary",
    "default": "stable",
    "held_full_since": {},
    "kill_switch": true,
    "kill_switch_reason": "incident 42",
    "promotions": [
      {"from_variant": "a", "principal": "ops", "reason": "why", "reverted": false,
       "to_variant": "b", "unix_time": 1.5}
    ],
    "revision": 7,
    "rollout": null,
    "segment_rules": [["beta", "canary"]],
    "stable": "stable",
    "update_reason": "initial state from configuration",
    "updated_by": "config",
    "updated_unix_time": 0.0,
    "user_overrides": {"qa": "canary"},
    "weights": {"canary": 1000, "stable": 9000}
  }
}"""


def test_existing_state_files_load_and_the_written_shape_is_unchanged() -> None:
    """A state file written before the shared rule model loads into the same state, and
    saving writes every field back in the same shape (rules flat, segment rules as pairs;
    a rule type added later adds a key, so the old ones are compared)."""
    state = DesiredState.from_json(STATE_FILE_V1)
    assert state == a_state()
    assert state.segment_rules == (SegmentRule("beta", "canary"),)
    old = json.loads(STATE_FILE_V1)
    written = json.loads(state.to_json())
    assert written["schema_version"] == old["schema_version"] == 1
    assert {k: written["state"][k] for k in old["state"]} == old["state"]


def test_diff_names_changed_rules_and_overrides_per_key() -> None:
    """The audit diff: {field: [before, after]} with JSON values, and per key for the
    override map and the segment rules (None: absent), never the whole map."""
    before = a_state()
    after = before.evolve(
        weights={"stable": 10_000, "canary": 0},
        segment_rules=(),
        kill_switch_reason="over",
        revision=8,
    ).with_override("qa-user", "canary")
    assert diff(before, after) == {
        "weights": [{"canary": 1000, "stable": 9000}, {"canary": 0, "stable": 10_000}],
        "segment_rules": {"beta": ["canary", None]},
        "kill_switch_reason": ["incident 42", "over"],
        "user_overrides": {"qa-user": [None, "canary"]},
    }
    unrelated = before.evolve(user_overrides={"qa": "stable", "b": "canary"})
    assert diff(before, unrelated) == {
        "user_overrides": {"b": [None, "canary"], "qa": ["canary", "stable"]}
    }


CORRUPT = [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 99, "state": {}}', "schema_version 99 is not supported"),
    ('{"schema_version": 1}', "missing 'state'"),
    ('{"schema_version": 1, "state": {"revision": "x"}}', "revision"),
    ('{"schema_version": 1, "state": {"revision": 1}}', "malformed state"),
    (
        STATE_FILE_V1.replace('"canary": 1000', '"canary": "10%"'),
        "weights.canary: expected an integer",
    ),
    (
        STATE_FILE_V1.replace('["beta", "canary"]', '["beta", 7]'),
        "segment_rules: expected a string",
    ),
    (
        STATE_FILE_V1.replace('"kill_switch": true', '"kill_switch": 1'),
        "kill_switch: expected true or false",
    ),
    ("[]", "top level"),
]


@pytest.mark.parametrize(("text", "message"), CORRUPT)
def test_corrupt_state_documents_are_reported(text: str, message: str) -> None:
    """An unreadable state document raises StateFormatError naming the problem."""
    with pytest.raises(StateFormatError) as info:
        DesiredState.from_json(text)
    assert message in str(info.value)


def test_deeply_nested_state_is_a_format_error_not_a_recursion_error(tmp_path: Path) -> None:
    """A 200,000-deep nested document is refused as invalid, with no RecursionError."""
    with pytest.raises(StateFormatError, match="not valid JSON"):
        DesiredState.from_json("[" * 200_000 + "]" * 200_000)
    path = tmp_path / "s.db"
    SqliteStore(path).commit(a_state(), entry(7))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET doc = ?", ("[" * 200_000 + "]" * 200_000,))
    with pytest.raises(StateFileError, match="table state, row 1"):
        SqliteStore(path).load()


def damage_page(path: Path, from_end: int | None = None) -> None:
    """Overwrite the second page of the database (a table's b-tree root) with junk, or
    part of the page `from_end` pages before the last (quick_check then names it)."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (pages,) = db.execute("PRAGMA page_count").fetchone()
    with open(path, "r+b") as handle:
        if from_end is None:
            handle.seek(page_size)
            handle.write(b"\xff" * page_size)
        else:
            handle.seek((pages - 1 - from_end) * page_size + 100)
            handle.write(b"\x07" * 200)


def test_damaged_storage_is_reported_naming_the_file(tmp_path: Path) -> None:
    """Not a database, a folder, a damaged page: each is a StateFileError naming the
    file and what SQLite says (the offset for a bad header)."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"{not a database at all")
    with pytest.raises(StateFileError) as info:
        SqliteStore(junk).load()
    assert info.value.where == str(junk) and "offset 0" in info.value.reason
    folder = tmp_path / "folder.db"
    folder.mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        SqliteStore(folder).load()
    many = a_state().evolve(user_overrides={f"u{i}": "canary" for i in range(3000)})
    for from_end in (None, 2):
        damaged = tmp_path / f"damaged-{from_end}.db"
        store = SqliteStore(damaged)
        store.commit(many, entry(7))
        store.close()
        damage_page(damaged, from_end)
        with pytest.raises(StateFileError) as info:
            SqliteStore(damaged).load()
        assert info.value.where == str(damaged) and "\n" not in str(info.value)
        assert "damaged" in info.value.reason
    assert "page" in info.value.reason  # quick_check names the page


def config(tmp_path: Path) -> Any:
    raw = {
        "model": "m",
        "variants": {
            "stable": {"address": "127.0.0.1:1", "model_name": "m"},
            "canary": {"address": "127.0.0.1:1", "model_name": "m"},
        },
        "flag": {"key": "k", "stable": "stable", "canary": "canary",
                 "weights": {"stable": 9000, "canary": 1000}},
        "control": control_section(),
        "state": {"path": str(tmp_path / "sidecar.db")},
    }  # fmt: skip
    return parse_config(raw)


def store_at(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "sidecar.db")


def test_first_start_saves_config_state_then_stored_state_wins(tmp_path: Path) -> None:
    """First start persists the configured flag; later starts use the stored state, so a
    kill switch that was on stays on."""
    cfg = config(tmp_path)
    first = initial_snapshot(cfg, store_at(tmp_path), safe_mode=False)
    assert first.revision == 1 and not first.flag.kill_switch
    store = store_at(tmp_path)
    on = first.state.evolve(revision=5, kill_switch=True, kill_switch_reason="incident")
    store.commit(on, entry(5))
    again = initial_snapshot(cfg, store_at(tmp_path), safe_mode=False)
    assert again.revision == 5 and again.flag.kill_switch
    assert again.state.kill_switch_reason == "incident"
    assert store.audit_count() == 2 and store.read_audit(0, 1, 1 << 20)[0].method == "Initialize"


def test_unreadable_state_stops_startup_naming_the_file(tmp_path: Path) -> None:
    """A file that is not a database is a start-up error that names the file and the way
    out, and is left untouched."""
    (tmp_path / "sidecar.db").write_text("{garbage")
    with pytest.raises(StartupError) as info:
        initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=False)
    text = str(info.value)
    assert str(tmp_path / "sidecar.db") in text and "--safe-mode" in text
    assert "\n" not in text
    assert (tmp_path / "sidecar.db").read_text() == "{garbage"  # untouched


def test_unwritable_state_folder_is_one_line_startup_error(tmp_path: Path) -> None:
    """A state path whose folder cannot be created is a StartupError naming the path."""
    (tmp_path / "file").write_text("x")
    cfg = config(tmp_path)
    with pytest.raises(StartupError) as info:
        initial_snapshot(cfg, SqliteStore(tmp_path / "file" / "sidecar.db"), safe_mode=False)
    assert str(tmp_path / "file" / "sidecar.db") in str(info.value)


def test_state_that_does_not_fit_config_is_unreadable(tmp_path: Path) -> None:
    """A stored state naming a variant the configuration no longer has stops start-up."""
    store = store_at(tmp_path)
    store.commit(DesiredState(3, RoutingState("gone", None, "gone", {"gone": 10_000})), entry(3))
    with pytest.raises(StartupError, match="does not fit the configuration"):
        initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=False)


def test_safe_mode_starts_stable_only_with_kill_switch_on(tmp_path: Path) -> None:
    """--safe-mode: the bad file is kept aside, the kill switch is on and persisted, and
    the event is audited."""
    (tmp_path / "sidecar.db").write_text("{garbage")
    snap = initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=True)
    assert snap.safe_mode and snap.flag.kill_switch
    assert "safe mode" in snap.state.kill_switch_reason
    kept = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and kept[0].read_text() == "{garbage"
    store = store_at(tmp_path)
    reloaded = store.load()
    assert reloaded is not None and reloaded.kill_switch
    assert store.read_audit(0, 5, 1 << 20)[-1].method == "SafeMode"


def test_safe_mode_continues_the_revisions(tmp_path: Path) -> None:
    """Safe mode over a damaged database starts above the highest revision it had seen,
    so revisions never repeat and an old expected_revision cannot match again."""
    store = store_at(tmp_path)
    for revision in range(1, 13):
        store.commit(a_state().evolve(revision=revision), entry(revision))
    with sqlite3.connect(tmp_path / "sidecar.db") as db:
        db.execute("UPDATE state SET doc = '{\"revision\": 12}'")  # unreadable state
    with pytest.raises(StartupError):
        initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=False)
    snap = initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=True)
    assert snap.safe_mode and snap.revision == 13
    again = store_at(tmp_path)
    assert again.load() == snap.state and again.read_audit(0, 5, 1 << 20)[0].revision_after == 13


@pytest.mark.parametrize(
    "state", [{"backend": "file"}, {"path": "var/state.json", "audit_path": "var/audit.jsonl"}]
)
def test_old_file_backend_config_is_refused_saying_what_to_use(state: dict[str, str]) -> None:
    """A configuration written for the file store is refused naming `state` and the
    settings to use instead (no silent fallback)."""
    cfg: dict[str, Any] = {
        "model": "m",
        "variants": {"stable": {"address": "127.0.0.1:1", "model_name": "m"}},
        "flag": {"key": "k", "stable": "stable", "weights": {"stable": 10_000}},
        "control": control_section(),
        "state": state,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(cfg)
    text = str(info.value)
    assert "state" in text and "backend: sqlite" in text and "remove `audit_path`" in text


def test_safe_mode_continues_the_revisions_of_a_file_sqlite_cannot_open(tmp_path: Path) -> None:
    """Even when the header is destroyed (not an SQLite database any more), safe mode
    starts above the highest revision found in the file's audit rows."""
    store = store_at(tmp_path)
    for revision in range(1, 41):
        store.commit(a_state().evolve(revision=revision), entry(revision))
    store.close()
    with sqlite3.connect(tmp_path / "sidecar.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(tmp_path / "sidecar.db", "r+b") as handle:
        handle.write(b"\x00" * 100)
    with pytest.raises(StartupError, match="not an SQLite database"):
        initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=False)
    snap = initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=True)
    assert snap.safe_mode and snap.revision == 41


def test_first_start_migrates_the_old_file_store_state_once(tmp_path: Path) -> None:
    """An old `state.json` next to the new database is committed as it was (kill switch,
    overrides and revision kept) with a Migrate entry; temporary files are removed; a
    damaged one stops start-up naming it."""
    old = a_state().evolve(revision=9, segment_rules=())
    (tmp_path / "state.json").write_text(old.to_json())
    (tmp_path / ".state.json.123.tmp").write_text("{")
    snap = initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=False)
    assert snap.state == old and snap.flag.kill_switch and snap.revision == 9
    assert not (tmp_path / ".state.json.123.tmp").exists()
    store = store_at(tmp_path)
    assert [e.method for e in store.read_audit(0, 5, 1 << 20)] == ["Migrate"]
    (tmp_path / "state.json").write_text("{garbage")  # read once only: the database wins
    assert initial_snapshot(config(tmp_path), store_at(tmp_path), safe_mode=False) == snap
    other = tmp_path / "other"
    other.mkdir()
    (other / "state.json").write_text("{garbage")
    with pytest.raises(StartupError, match=r"old state file .*state\.json"):
        initial_snapshot(config(other), store_at(other), safe_mode=False)

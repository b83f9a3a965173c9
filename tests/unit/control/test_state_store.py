"""Durable state: file store round trip, atomic replace, corrupt files, audit log, and
what the sidecar starts with (stored state wins; unreadable state stops start-up unless
safe mode)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.adapters.store.file import FileAuditLog, FileStateStore
from sidecar.app.ports import AuditEntry, StateFileError
from sidecar.config import parse_config
from sidecar.core.routing import Flag, RoutingState, SegmentRule
from sidecar.core.state import DesiredState, Promotion, diff
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


def test_file_store_round_trip(tmp_path: Path) -> None:
    """Saved state loads back equal, with the schema version in the file."""
    store = FileStateStore(tmp_path / "var" / "state.json")
    assert store.load() is None
    store.save(a_state())
    assert store.load() == a_state()
    doc = json.loads((tmp_path / "var" / "state.json").read_text())
    assert doc["schema_version"] == 1 and doc["state"]["kill_switch"] is True
    assert not [p for p in (tmp_path / "var").iterdir() if p.name.endswith(".tmp")]


def test_save_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash before the rename leaves the previous state intact, never a torn file."""
    store = FileStateStore(tmp_path / "state.json")
    store.save(a_state())

    def crash(*args: Any) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(a_state().evolve(revision=8, kill_switch=False))
    monkeypatch.undo()
    assert store.load() == a_state()


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


def test_diff_names_changed_rules_in_the_file_shape() -> None:
    """The audit diff keeps its shape: {field: [before, after]} with JSON values."""
    before = a_state()
    after = before.evolve(
        weights={"stable": 10_000, "canary": 0},
        segment_rules=(),
        kill_switch_reason="over",
        revision=8,
    )
    assert diff(before, after) == {
        "weights": [{"canary": 1000, "stable": 9000}, {"canary": 0, "stable": 10_000}],
        "segment_rules": [[["beta", "canary"]], []],
        "kill_switch_reason": ["incident 42", "over"],
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
def test_corrupt_state_files_are_reported(tmp_path: Path, text: str, message: str) -> None:
    """Unreadable content raises StateFileError naming the file and the problem."""
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateFileError) as info:
        FileStateStore(path).load()
    assert info.value.where == str(path)
    assert message in info.value.reason


def test_audit_log_appends_pages_and_survives_reopen(tmp_path: Path) -> None:
    """Entries append as JSON lines, page in order, and are there after reopening; a torn
    last line (crash mid-append) is skipped."""
    path = tmp_path / "audit.jsonl"
    log = FileAuditLog(path)
    for i in range(5):
        log.append(AuditEntry(float(i), "ops", "SetWeights", f"r{i}", i, i + 1, {"x": [i, i + 1]}))
    with open(path, "ab") as handle:
        handle.write(b'{"unix_time": 9, "princ')
    reopened = FileAuditLog(path)
    assert reopened.count() == 5 and reopened.skipped == 1
    assert [e.reason for e in reopened.read(1, 2)] == ["r1", "r2"]
    assert reopened.read(5, 10) == []
    line = json.loads(path.read_text().splitlines()[0])
    assert {"time", "principal", "method", "reason", "diff", "revision_after"} <= set(line)


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
        "state": {"path": str(tmp_path / "state.json"), "audit_path": str(tmp_path / "a.jsonl")},
    }  # fmt: skip
    return parse_config(raw)


def stores(tmp_path: Path) -> tuple[FileStateStore, FileAuditLog]:
    return FileStateStore(tmp_path / "state.json"), FileAuditLog(tmp_path / "a.jsonl")


def test_first_start_saves_config_state_then_stored_state_wins(tmp_path: Path) -> None:
    """First start persists the configured flag; later starts use the stored state, so a
    kill switch that was on stays on."""
    cfg = config(tmp_path)
    first = initial_snapshot(cfg, *stores(tmp_path), safe_mode=False)
    assert first.revision == 1 and not first.flag.kill_switch
    store, audit = stores(tmp_path)
    store.save(first.state.evolve(revision=5, kill_switch=True, kill_switch_reason="incident"))
    again = initial_snapshot(cfg, store, audit, safe_mode=False)
    assert again.revision == 5 and again.flag.kill_switch
    assert again.state.kill_switch_reason == "incident"
    assert audit.count() == 1 and audit.read(0, 1)[0].method == "Initialize"


def test_unreadable_state_stops_startup_naming_the_file(tmp_path: Path) -> None:
    """A corrupted state file is a start-up error that names the file and the way out."""
    (tmp_path / "state.json").write_text("{garbage")
    with pytest.raises(StartupError) as info:
        initial_snapshot(config(tmp_path), *stores(tmp_path), safe_mode=False)
    text = str(info.value)
    assert str(tmp_path / "state.json") in text and "--safe-mode" in text
    assert (tmp_path / "state.json").read_text() == "{garbage"  # untouched


def test_state_that_does_not_fit_config_is_unreadable(tmp_path: Path) -> None:
    """A stored state naming a variant the configuration no longer has stops start-up."""
    store, audit = stores(tmp_path)
    store.save(DesiredState(3, RoutingState("gone", None, "gone", {"gone": 10_000})))
    with pytest.raises(StartupError, match="does not fit the configuration"):
        initial_snapshot(config(tmp_path), store, audit, safe_mode=False)


def test_safe_mode_starts_stable_only_with_kill_switch_on(tmp_path: Path) -> None:
    """--safe-mode: the bad file is kept aside, the kill switch is on and persisted, and
    the event is audited."""
    (tmp_path / "state.json").write_text("{garbage")
    store, audit = stores(tmp_path)
    snap = initial_snapshot(config(tmp_path), store, audit, safe_mode=True)
    assert snap.safe_mode and snap.flag.kill_switch
    assert "safe mode" in snap.state.kill_switch_reason
    kept = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(kept) == 1 and kept[0].read_text() == "{garbage"
    reloaded = FileStateStore(tmp_path / "state.json").load()
    assert reloaded is not None and reloaded.kill_switch
    assert audit.read(0, 5)[-1].method == "SafeMode"

"""The desired routing state: what operators set through Control, persisted and versioned.

Pure data and JSON (de)serialisation. Static parts (the flag key, salt, variants and
declared segments) come from configuration; the routing rules that change at run time are
one `RoutingState` (the routing core's type, which a `Flag` is compiled from), held here
with the revision, promotions and rollout progress. `to_flag` validates a state against the
static parts (it is how every write is checked).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sidecar.core.rollout import RolloutProgress
from sidecar.core.routing import (
    ROUTING_FIELDS,
    Flag,
    FlagError,
    Overrides,
    RoutingState,
    RoutingView,
)

SCHEMA_VERSION = 1


class StateFormatError(ValueError):
    """A serialised state is not valid (bad JSON, wrong schema version, bad field)."""


@dataclass(frozen=True)
class Promotion:
    unix_time: float
    principal: str
    from_variant: str
    to_variant: str
    reason: str
    reverted: bool = False


@dataclass(frozen=True)
class DesiredState(RoutingView):
    """The routing rules in force (`routing`) and the record of how they got there.

    The rules are readable as attributes (`state.weights`, `state.stable`, ...) and
    `evolve` accepts them by name, alongside this class's own fields.
    """

    revision: int
    routing: RoutingState
    kill_switch_reason: str = ""
    promotions: tuple[Promotion, ...] = ()
    updated_unix_time: float = 0.0
    updated_by: str = "config"
    update_reason: str = "initial state from configuration"
    rollout: RolloutProgress | None = None
    # Non-stable variant -> since when it has held 100% of the traffic (flag lifecycle).
    held_full_since: Mapping[str, float] = field(default_factory=dict)
    # Why the rules are suspended ("Rollback by health-checker: <reason>"); "" when not.
    rules_suspended_reason: str = ""

    @staticmethod
    def from_flag(flag: Flag, *, revision: int = 1, unix_time: float = 0.0) -> DesiredState:
        return DesiredState(revision=revision, routing=flag.routing, updated_unix_time=unix_time)

    def to_flag(self, template: Flag) -> Flag:
        """The routing flag for this state on `template`'s static parts (raises FlagError)."""
        routing = self.routing
        if routing.default not in template.variants:
            routing = routing.evolve(default=routing.stable)
        return template.with_routing(routing)

    def evolve(self, **changes: Any) -> DesiredState:
        """A copy with fields changed; routing rules (`weights=...`) may be named directly."""
        rules = {k: changes.pop(k) for k in list(changes) if k in ROUTING_FIELDS}
        if rules:
            changes["routing"] = changes.get("routing", self.routing).evolve(**rules)
        return replace(self, **changes)

    def suspend_rules(self, why: str) -> DesiredState:
        """A copy whose user overrides and segment rules are kept but not applied (a
        rollback); an earlier suspension's reason is kept."""
        if self.rules_suspended:
            return self
        return self.evolve(rules_suspended=True, rules_suspended_reason=why)

    def restore_rules(self) -> DesiredState:
        """A copy whose user overrides and segment rules apply again."""
        return self.evolve(rules_suspended=False, rules_suspended_reason="")

    def with_override(self, key: str, variant: str | None) -> DesiredState:
        """A copy with one user override set (None: removed), in time proportional to the
        change: the new map records it, so validation, diff and store touch one key."""
        overrides = Overrides.of(self.routing.user_overrides).set(key, variant)
        return replace(self, routing=self.routing.evolve(user_overrides=overrides))

    def to_dict(self, *, overrides: bool = True) -> dict[str, Any]:
        """JSON-ready: the routing rules flat beside the other fields (the file's shape).
        `overrides=False` leaves out `user_overrides` (a store keeping them as rows)."""
        routing = self.routing.to_dict() if overrides else self._rules_without_overrides()
        return {
            "revision": self.revision,
            **routing,
            "kill_switch_reason": self.kill_switch_reason,
            "promotions": [asdict(p) for p in self.promotions],
            "updated_unix_time": self.updated_unix_time,
            "updated_by": self.updated_by,
            "update_reason": self.update_reason,
            "rollout": self.rollout.to_dict() if self.rollout else None,
            "held_full_since": dict(self.held_full_since),
            "rules_suspended_reason": self.rules_suspended_reason,
        }

    def _rules_without_overrides(self) -> dict[str, Any]:
        empty = self.routing.evolve(user_overrides={}).to_dict()
        del empty["user_overrides"]
        return empty

    def to_json(self) -> str:
        return json.dumps(
            {"schema_version": SCHEMA_VERSION, "state": self.to_dict()}, indent=2, sort_keys=True
        )

    @staticmethod
    def from_json(text: str) -> DesiredState:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise StateFormatError(f"not valid JSON: {type(exc).__name__}: {exc}") from None
        if not isinstance(doc, dict):
            raise StateFormatError("top level must be an object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StateFormatError(
                f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        data = doc.get("state")
        if not isinstance(data, dict):
            raise StateFormatError("missing 'state' object")
        return DesiredState.from_dict(data)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> DesiredState:
        """The state of a `to_dict` document (StateFormatError naming what is wrong)."""
        try:
            state = DesiredState._from_dict(data)
        except FlagError as exc:
            raise StateFormatError(str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise StateFormatError(f"malformed state: {type(exc).__name__}: {exc}") from None
        if state.revision < 1:
            raise StateFormatError("revision must be >= 1")
        return state

    @staticmethod
    def _from_dict(data: Mapping[str, Any]) -> DesiredState:
        return DesiredState(
            revision=_int(data["revision"], "revision"),
            routing=RoutingState.from_dict(data),
            kill_switch_reason=_str(data.get("kill_switch_reason", ""), "kill_switch_reason"),
            promotions=tuple(Promotion(**p) for p in data.get("promotions", [])),
            updated_unix_time=float(data.get("updated_unix_time", 0.0)),
            updated_by=_str(data.get("updated_by", ""), "updated_by"),
            update_reason=_str(data.get("update_reason", ""), "update_reason"),
            rollout=RolloutProgress.from_dict(data["rollout"]) if data.get("rollout") else None,
            held_full_since={
                _str(k, "held_full_since"): float(v)
                for k, v in data.get("held_full_since", {}).items()
            },
            rules_suspended_reason=_str(
                data.get("rules_suspended_reason", ""), "rules_suspended_reason"
            ),
        )


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateFormatError(f"{name}: expected an integer, got {value!r}")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise StateFormatError(f"{name}: expected a string, got {value!r}")
    return value


def diff(before: DesiredState, after: DesiredState, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """Fields that changed, as {field: [before, after]} (JSON-ready); the override map and
    the segment rules per key: {"user_overrides": {"qa-user": [None, "canary"]}} (None:
    absent). Proportional to the change when `after`'s overrides derive from `before`'s."""
    skip = {"revision", "updated_unix_time", "updated_by", "update_reason", *ignore}
    a, b = before.to_dict(overrides=False), after.to_dict(overrides=False)
    out: dict[str, Any] = {}
    for k in a:
        if k in skip or a[k] == b[k]:
            continue
        if k == "segment_rules":
            out[k] = _changed_keys(dict(a[k]), dict(b[k]))
        else:
            out[k] = [a[k], b[k]]
    if "user_overrides" not in skip:
        changed = override_changes(before.user_overrides, after.user_overrides)
        if changed:
            out["user_overrides"] = changed
    return out


def override_changes(
    before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, list[str | None]]:
    """{key: [before, after]} for each override that differs (None: absent)."""
    if after is before:
        return {}
    if (
        isinstance(after, Overrides)
        and isinstance(before, Overrides)
        and after.base_serial == before.serial
    ):
        return {k: list(v) for k, v in after.changes.items()}
    return _changed_keys(before, after)


def _changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    keys = [k for k in before if after.get(k) != before[k]]
    keys += [k for k in after if k not in before]
    return {k: [before.get(k), after.get(k)] for k in sorted(keys)}

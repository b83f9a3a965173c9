"""The desired routing state: what operators set through Control, persisted and versioned.

Pure data and JSON (de)serialisation. Static parts (the flag key, salt, variants and
declared segments) come from configuration; this holds the parts that change at run time.
`to_flag` validates a state against the static parts (it is how every write is checked).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sidecar.core.rollout import RolloutProgress
from sidecar.core.routing import Flag, SegmentRule

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
class DesiredState:
    revision: int
    stable: str
    canary: str | None
    default: str
    weights: Mapping[str, int]
    kill_switch: bool = False
    kill_switch_reason: str = ""
    user_overrides: Mapping[str, str] = field(default_factory=dict)
    segment_rules: tuple[tuple[str, str], ...] = ()
    promotions: tuple[Promotion, ...] = ()
    updated_unix_time: float = 0.0
    updated_by: str = "config"
    update_reason: str = "initial state from configuration"
    rollout: RolloutProgress | None = None
    # Non-stable variant -> since when it has held 100% of the traffic (flag lifecycle).
    held_full_since: Mapping[str, float] = field(default_factory=dict)

    @staticmethod
    def from_flag(flag: Flag, *, revision: int = 1, unix_time: float = 0.0) -> DesiredState:
        return DesiredState(
            revision=revision,
            stable=flag.stable,
            canary=flag.canary,
            default=flag.default,
            weights=dict(flag.weights),
            kill_switch=flag.kill_switch,
            user_overrides=dict(flag.user_overrides),
            segment_rules=tuple((r.segment, r.variant) for r in flag.segment_rules),
            updated_unix_time=unix_time,
        )

    def to_flag(self, template: Flag) -> Flag:
        """The routing flag for this state on `template`'s static parts (raises FlagError)."""
        default = self.default if self.default in template.variants else self.stable
        return Flag.build(
            key=template.key,
            salt=template.salt,
            variants=template.variants,
            segments=template.segments,
            stable=self.stable,
            canary=self.canary,
            default=default,
            weights=dict(self.weights),
            kill_switch=self.kill_switch,
            user_overrides=dict(self.user_overrides),
            segment_rules=[SegmentRule(s, v) for s, v in self.segment_rules],
        )

    def evolve(self, **changes: Any) -> DesiredState:
        return replace(self, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["rollout"] = self.rollout.to_dict() if self.rollout else None
        data["held_full_since"] = dict(self.held_full_since)
        data["weights"] = dict(self.weights)
        data["user_overrides"] = dict(self.user_overrides)
        data["segment_rules"] = [list(r) for r in self.segment_rules]
        return json.dumps(
            {"schema_version": SCHEMA_VERSION, "state": data}, indent=2, sort_keys=True
        )

    @staticmethod
    def from_json(text: str) -> DesiredState:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise StateFormatError(f"not valid JSON: {exc}") from None
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
        try:
            promotions = tuple(Promotion(**p) for p in data.get("promotions", []))
            state = DesiredState(
                revision=_int(data["revision"], "revision"),
                stable=_str(data["stable"], "stable"),
                canary=None if data.get("canary") is None else _str(data["canary"], "canary"),
                default=_str(data["default"], "default"),
                weights={
                    _str(k, "weights"): _int(v, f"weights.{k}") for k, v in data["weights"].items()
                },
                kill_switch=_bool(data.get("kill_switch", False), "kill_switch"),
                kill_switch_reason=_str(data.get("kill_switch_reason", ""), "kill_switch_reason"),
                user_overrides={
                    _str(k, "user_overrides"): _str(v, f"user_overrides.{k}")
                    for k, v in data.get("user_overrides", {}).items()
                },
                segment_rules=tuple(
                    (_str(r[0], "segment_rules"), _str(r[1], "segment_rules"))
                    for r in data.get("segment_rules", [])
                ),
                promotions=promotions,
                updated_unix_time=float(data.get("updated_unix_time", 0.0)),
                updated_by=_str(data.get("updated_by", ""), "updated_by"),
                update_reason=_str(data.get("update_reason", ""), "update_reason"),
                rollout=RolloutProgress.from_dict(data["rollout"]) if data.get("rollout") else None,
                held_full_since={
                    _str(k, "held_full_since"): float(v)
                    for k, v in data.get("held_full_since", {}).items()
                },
            )
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise StateFormatError(f"malformed state: {type(exc).__name__}: {exc}") from None
        if state.revision < 1:
            raise StateFormatError("revision must be >= 1")
        return state


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StateFormatError(f"{name}: expected an integer, got {value!r}")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise StateFormatError(f"{name}: expected a string, got {value!r}")
    return value


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise StateFormatError(f"{name}: expected true or false, got {value!r}")
    return value


def diff(before: DesiredState, after: DesiredState, ignore: Iterable[str] = ()) -> dict[str, Any]:
    """Fields that changed, as {field: [before, after]} (JSON-ready)."""
    skip = {"revision", "updated_unix_time", "updated_by", "update_reason", *ignore}
    a, b = json.loads(before.to_json())["state"], json.loads(after.to_json())["state"]
    return {k: [a[k], b[k]] for k in a if k not in skip and a[k] != b[k]}

"""The flag model: the routing rules, and the flag compiled from them, validated when built.

Two parts, one shape each:

- `RoutingState` holds the run-time rules operators change (stable, canary, default,
  weights, kill switch, user overrides, segment rules, and whether those rules are
  suspended since a rollback). `DesiredState` persists it; it is
  plain data and only trusted once compiled into a `Flag`.
- `Flag` is the routing flag a request is evaluated against: the static parts from
  configuration (key, salt, variants, declared segments) plus a validated `RoutingState`
  and the lookups derived from it. `Flag.build` / `Flag.compile` reject bad input with a
  `FlagError` naming the field, so request-time evaluation (`evaluate.py`) can assume a
  well-formed flag and never fail.

Adding a rule type: a field on `RoutingState` with a default (its JSON in `to_dict` and
`from_dict`, read with `.get(name, default)` so older state files still load), its check
in `_check_routing`, a `Flag.build` keyword if configuration sets it, and its step in
`evaluate.py`. `DesiredState` persists, diffs and evolves it without a change.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, TypeVar

BASIS_POINTS = 10_000
"""Weights and sample rates are integers in basis points; 10,000 is 100%."""


class Reason(enum.Enum):
    """Why a variant was chosen (OpenFeature's `reason`, with the sidecar's own values)."""

    KILL_SWITCH = "KILL_SWITCH"
    USER_OVERRIDE = "USER_OVERRIDE"
    SEGMENT_RULE = "SEGMENT_RULE"
    SPLIT = "SPLIT"
    SPLIT_NO_KEY = "SPLIT_NO_KEY"
    DEFAULT = "DEFAULT"
    ERROR = "ERROR"
    VERSION_REQUESTED = "VERSION_REQUESTED"  # the request named a served variant's version


class FlagError(ValueError):
    """A flag definition is invalid. `field` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_serials = itertools.count(1)
_ABSENT: Any = object()


class Overrides(Mapping[str, str]):
    """Read-only targeting key -> variant map that changes one key at a time, in time
    proportional to the change.

    A shared `base` dict plus a small `delta` (key -> variant, None for removed): `set`
    returns a new map sharing the base and copying only the delta; when the delta grows
    past `compact_at` (1/64 of the map, at least 256 keys) the next `set` folds it into
    a new base (one dict copy, a memcpy, every few thousand writes at 100,000 keys).
    Each map records its change: `changes` (key -> [before, after], None for absent)
    relative to the map whose `serial` is `base_serial`, so the audit diff and the store
    touch only the changed keys. The validation is cached: entries checked against a set
    of variants are not checked again, only the keys changed since (`_check_overrides`).
    """

    __slots__ = (
        "_base",
        "_delta",
        "_len",
        "_merged",
        "_pending",
        "base_serial",
        "changes",
        "checked_against",
        "serial",
    )

    def __init__(self, data: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._base: dict[str, str] = dict(data)
        self._delta: dict[str, str | None] = {}
        self._len = len(self._base)
        self._merged: dict[str, str] | None = self._base
        self.serial = next(_serials)
        self.base_serial = 0
        self.changes: Mapping[str, list[str | None]] = MappingProxyType({})
        self.checked_against: frozenset[str] | None = None  # every value is one of these ...
        self._pending: frozenset[str] = frozenset()  # ... except these keys'

    def get(self, key: str, default: Any = None) -> Any:  # the request path's lookup
        value = self._delta.get(key, _ABSENT)
        if value is _ABSENT:
            return self._base.get(key, default)
        return default if value is None else value

    def __getitem__(self, key: str) -> str:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return str(value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key, _ABSENT) is not _ABSENT

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def as_dict(self) -> dict[str, str]:
        """Every entry as a plain dict (built once per map, then shared: do not modify)."""
        if self._merged is None:
            merged = self._base.copy()
            for key, value in self._delta.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            self._merged = merged
        return self._merged

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Overrides):
            return self.as_dict() == other.as_dict()
        if isinstance(other, Mapping):
            return self.as_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Overrides({self._len} keys)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Overrides, (self.as_dict(),))

    @property
    def compact_at(self) -> int:
        return max(256, self._len // 64)

    def set(self, key: str, variant: str | None) -> Overrides:
        """A new map with `key` sent to `variant` (None: the override removed)."""
        before = self.get(key)
        out = Overrides.__new__(Overrides)
        if len(self._delta) >= self.compact_at:
            out._base, out._delta = self.as_dict(), {}  # bases are never modified
        else:
            out._base, out._delta = self._base, self._delta.copy()
        if variant is None:
            if key in out._base:
                out._delta[key] = None
            else:
                out._delta.pop(key, None)
        else:
            out._delta[key] = variant
        out._len = (
            self._len
            + (before is None and variant is not None)
            - (before is not None and variant is None)
        )
        out._merged = None
        out.serial = next(_serials)
        out.base_serial = self.serial
        out.changes = MappingProxyType({key: [before, variant]} if before != variant else {})
        out.checked_against = self.checked_against
        out._pending = self._pending | {key} if variant is not None else self._pending - {key}
        return out

    @staticmethod
    def of(overrides: Mapping[str, str]) -> Overrides:
        """`overrides` as an `Overrides` (itself when it is one)."""
        return overrides if isinstance(overrides, Overrides) else Overrides(overrides)


@dataclass(frozen=True)
class SegmentRule:
    """Requests of `segment` go to `variant`."""

    segment: str
    variant: str


@dataclass(frozen=True)
class RoutingState:
    """The routing rules that change at run time, as set (not yet validated).

    `Flag.compile` validates them against the static parts; `DesiredState` persists them.
    """

    stable: str
    canary: str | None
    default: str
    weights: Mapping[str, int]
    kill_switch: bool = False
    user_overrides: Mapping[str, str] = field(default_factory=dict)
    segment_rules: tuple[SegmentRule, ...] = ()
    # Rollback / abort suspend the user overrides and segment rules (kept, not applied)
    # until an operator restores them (Control.RestoreRules).
    rules_suspended: bool = False

    def __post_init__(self) -> None:
        # One `Overrides` per state, so that changes to it are tracked (see `Overrides`).
        object.__setattr__(self, "user_overrides", Overrides.of(self.user_overrides))

    def evolve(self, **changes: Any) -> RoutingState:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in the state file's shape (segment rules as [segment, variant])."""
        return {
            "stable": self.stable,
            "canary": self.canary,
            "default": self.default,
            "weights": dict(self.weights),
            "kill_switch": self.kill_switch,
            "user_overrides": dict(Overrides.of(self.user_overrides).as_dict()),
            "segment_rules": [[r.segment, r.variant] for r in self.segment_rules],
            "rules_suspended": self.rules_suspended,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RoutingState:
        """The inverse of `to_dict`; a value of the wrong JSON type raises `FlagError`
        naming it (a missing required key raises KeyError)."""
        canary = data.get("canary")
        return RoutingState(
            stable=_json(str, data["stable"], "stable"),
            canary=None if canary is None else _json(str, canary, "canary"),
            default=_json(str, data["default"], "default"),
            weights={
                _json(str, k, "weights"): _json(int, v, f"weights.{k}")
                for k, v in data["weights"].items()
            },
            kill_switch=_json(bool, data.get("kill_switch", False), "kill_switch"),
            user_overrides={
                _json(str, k, "user_overrides"): _json(str, v, f"user_overrides.{k}")
                for k, v in data.get("user_overrides", {}).items()
            },
            segment_rules=tuple(
                SegmentRule(_json(str, r[0], "segment_rules"), _json(str, r[1], "segment_rules"))
                for r in data.get("segment_rules", [])
            ),
            rules_suspended=_json(bool, data.get("rules_suspended", False), "rules_suspended"),
        )


ROUTING_FIELDS = frozenset(f.name for f in fields(RoutingState))
"""The names of the run-time routing rules (the fields of `RoutingState`)."""

_T = TypeVar("_T", str, int, bool)
_EXPECTED = {str: "a string", int: "an integer", bool: "true or false"}


def _json(kind: type[_T], value: object, name: str) -> _T:
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise FlagError(name, f"expected {_EXPECTED[kind]}, got {value!r}")


class RoutingView:
    """The run-time rules read through `self.routing`: what `Flag` (routing) and
    `DesiredState` (the persisted state) both expose, declared once."""

    routing: RoutingState

    @property
    def stable(self) -> str:
        return self.routing.stable

    @property
    def canary(self) -> str | None:
        return self.routing.canary

    @property
    def default(self) -> str:
        return self.routing.default

    @property
    def weights(self) -> Mapping[str, int]:
        return self.routing.weights

    @property
    def kill_switch(self) -> bool:
        return self.routing.kill_switch

    @property
    def user_overrides(self) -> Mapping[str, str]:
        return self.routing.user_overrides

    @property
    def segment_rules(self) -> tuple[SegmentRule, ...]:
        return self.routing.segment_rules

    @property
    def rules_suspended(self) -> bool:
        return self.routing.rules_suspended


@dataclass(frozen=True)
class Flag(RoutingView):
    """A validated routing flag. Build it with `Flag.build` or `Flag.compile`."""

    key: str
    salt: str
    variants: tuple[str, ...]
    segments: frozenset[str]
    routing: RoutingState
    # Derived: (exclusive upper bucket, variant) in bucket order; see `bucket_order`.
    split: tuple[tuple[int, str], ...] = ()
    rule_by_segment: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def build(
        *,
        key: str,
        variants: Iterable[str],
        stable: str,
        weights: Mapping[str, int],
        canary: str | None = None,
        default: str | None = None,
        salt: str | None = None,
        kill_switch: bool = False,
        user_overrides: Mapping[str, str] | None = None,
        segments: Iterable[str] = (),
        segment_rules: Iterable[SegmentRule] = (),
        rules_suspended: bool = False,
    ) -> Flag:
        """Validate every field and return the flag, or raise `FlagError` naming the field."""
        routing = RoutingState(
            stable=stable,
            canary=canary,
            default=default or stable,
            weights=weights,
            kill_switch=kill_switch,
            user_overrides=user_overrides or {},
            segment_rules=tuple(segment_rules),
            rules_suspended=rules_suspended,
        )
        return Flag.compile(
            key=key, salt=salt, variants=variants, segments=segments, routing=routing
        )

    @staticmethod
    def compile(
        *,
        key: str,
        variants: Iterable[str],
        routing: RoutingState,
        salt: str | None = None,
        segments: Iterable[str] = (),
    ) -> Flag:
        """The flag for `routing` on these static parts, or `FlagError` naming the field."""
        if not isinstance(key, str) or not key.strip():
            raise FlagError("key", "must be a non-empty string")
        names = _check_variants(variants)
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise FlagError("salt", "must be a non-empty string when set")
        segment_set = _check_segments(segments)
        checked = _check_routing(routing, set(names), segment_set)
        return Flag(
            key=key,
            salt=salt or key,
            variants=names,
            segments=segment_set,
            routing=checked,
            split=_split(checked, names),
            rule_by_segment=MappingProxyType({r.segment: r.variant for r in checked.segment_rules}),
        )

    def with_routing(self, routing: RoutingState) -> Flag:
        """This flag's static parts with other rules (validated; raises `FlagError`)."""
        return Flag.compile(
            key=self.key,
            salt=self.salt,
            variants=self.variants,
            segments=self.segments,
            routing=routing,
        )

    def replace(self, **changes: Any) -> Flag:
        """A new validated flag with some fields changed (derived fields are rebuilt)."""
        static = {"key", "salt", "variants", "segments"}
        unknown = set(changes) - static - ROUTING_FIELDS
        if unknown:
            raise FlagError(sorted(unknown)[0], "not a flag field")
        parts: dict[str, Any] = {name: getattr(self, name) for name in static}
        parts.update((k, v) for k, v in changes.items() if k in static)
        routing = self.routing.evolve(**{k: v for k, v in changes.items() if k in ROUTING_FIELDS})
        return Flag.compile(routing=routing, **parts)


def _check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    names = tuple(variants)
    if not names:
        raise FlagError("variants", "at least one variant is required")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise FlagError("variants", f"variant names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        raise FlagError("variants", "variant names must be unique")
    return names


def _check_segments(segments: Iterable[str]) -> frozenset[str]:
    names = tuple(segments)
    for seg in names:
        if not isinstance(seg, str) or not seg.strip():
            raise FlagError("segments", f"segment names must be non-empty strings, got {seg!r}")
    return frozenset(names)


def _need_variant(field_name: str, value: object, known: set[str]) -> str:
    if not isinstance(value, str) or value not in known:
        raise FlagError(field_name, f"unknown variant {value!r}; known: {sorted(known)}")
    return value


def _check_routing(r: RoutingState, known: set[str], segments: frozenset[str]) -> RoutingState:
    """`r` with every rule checked against the variants and segments, normalised
    (no canary is None, no default is the stable variant), read-only."""
    stable = _need_variant("stable", r.stable, known)
    canary = None
    if r.canary is not None and r.canary != "":
        canary = _need_variant("canary", r.canary, known)
        if canary == stable:
            raise FlagError("canary", "must differ from the stable variant")
    default = stable if r.default in (None, "") else _need_variant("default", r.default, known)
    if not isinstance(r.kill_switch, bool):
        raise FlagError("kill_switch", f"must be true or false, got {r.kill_switch!r}")
    if not isinstance(r.rules_suspended, bool):
        raise FlagError("rules_suspended", f"must be true or false, got {r.rules_suspended!r}")
    return RoutingState(
        stable=stable,
        canary=canary,
        default=default,
        weights=MappingProxyType(_check_weights(r.weights, known)),
        kill_switch=r.kill_switch,
        user_overrides=_check_overrides(r.user_overrides, known),
        segment_rules=_check_segment_rules(r.segment_rules, known, segments),
        rules_suspended=r.rules_suspended,
    )


def _check_weights(weights: Mapping[str, int], known: set[str]) -> dict[str, int]:
    if not isinstance(weights, Mapping) or not weights:
        raise FlagError("weights", "must map variant names to basis points")
    out: dict[str, int] = {}
    for name, weight in weights.items():
        if name not in known:
            raise FlagError(f"weights[{name}]", f"unknown variant {name!r}; known: {sorted(known)}")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise FlagError(
                f"weights[{name}]", f"must be an integer in basis points, got {weight!r}"
            )
        if not 0 <= weight <= BASIS_POINTS:
            raise FlagError(f"weights[{name}]", f"must be within 0..{BASIS_POINTS}, got {weight}")
        out[name] = weight
    total = sum(out.values())
    if total != BASIS_POINTS:
        raise FlagError("weights", f"must sum to {BASIS_POINTS} basis points, got {total}")
    return out


def _check_overrides(overrides: Mapping[str, str], known: set[str]) -> Overrides:
    """The overrides checked against the variants: only the keys changed since the last
    check when the map was checked against a subset of `known`, every key otherwise. The
    result is `overrides` itself when it is an `Overrides` (its check is cached on it)."""
    checked = Overrides.of(overrides)
    if checked.checked_against is not None and checked.checked_against <= known:
        keys: Iterable[str] = checked._pending
    else:
        keys = checked
    for user in keys:
        if not isinstance(user, str) or not user.strip():
            raise FlagError("user_overrides", "targeting key must be a non-empty string")
        _need_variant(f"user_overrides[{user}]", checked[user], known)
    checked.checked_against = frozenset(known)
    checked._pending = frozenset()
    return checked


def _check_segment_rules(
    rules: Iterable[SegmentRule], known: set[str], segments: frozenset[str]
) -> tuple[SegmentRule, ...]:
    out: dict[str, SegmentRule] = {}
    for i, rule in enumerate(rules):
        if rule.segment not in segments:
            raise FlagError(
                f"segment_rules[{i}].segment",
                f"unknown segment {rule.segment!r}; declared: {sorted(segments)}",
            )
        if rule.segment in out:
            raise FlagError(
                f"segment_rules[{i}].segment", f"duplicate rule for segment {rule.segment!r}"
            )
        variant = _need_variant(f"segment_rules[{i}].variant", rule.variant, known)
        out[rule.segment] = SegmentRule(rule.segment, variant)
    return tuple(out.values())


def _split(routing: RoutingState, variants: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    """(exclusive upper bucket, variant) for each variant with traffic, in bucket order."""
    split: list[tuple[int, str]] = []
    upper = 0
    for name in bucket_order(variants, routing.stable, routing.canary):
        weight = routing.weights.get(name, 0)
        if weight:
            upper += weight
            split.append((upper, name))
    return tuple(split)


def bucket_order(variants: Iterable[str], stable: str, canary: str | None) -> tuple[str, ...]:
    """Order in which variants own consecutive bucket ranges, starting at bucket 0.

    The canary comes first, so that raising its weight (taking from the others) only adds
    buckets at its upper end: a user already in the canary stays there. Other variants
    follow in name order; the stable variant owns the top range.
    """
    others = sorted(v for v in variants if v not in (stable, canary))
    head = [canary] if canary is not None else []
    return (*head, *others, stable)

"""The flag model: variants, weights, rules, kill switch; validated when built.

A `Flag` is immutable and only ever built through `Flag.build`, which rejects bad input
with a `FlagError` naming the field. Request-time evaluation (`evaluate.py`) can then
assume a well-formed flag and never fail.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


class FlagError(ValueError):
    """A flag definition is invalid. `field` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SegmentRule:
    """Requests of `segment` go to `variant`."""

    segment: str
    variant: str


def _frozen(mapping: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Flag:
    """A validated routing flag. Build it with `Flag.build`."""

    key: str
    salt: str
    variants: tuple[str, ...]
    stable: str
    canary: str | None
    default: str
    weights: Mapping[str, int]
    kill_switch: bool = False
    user_overrides: Mapping[str, str] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    segment_rules: tuple[SegmentRule, ...] = ()
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
    ) -> Flag:
        """Validate every field and return the flag, or raise `FlagError` naming the field."""
        names = tuple(variants)
        known = set(names)
        if not isinstance(key, str) or not key.strip():
            raise FlagError("key", "must be a non-empty string")
        if not names:
            raise FlagError("variants", "at least one variant is required")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise FlagError(
                    "variants", f"variant names must be non-empty strings, got {name!r}"
                )
        if len(known) != len(names):
            raise FlagError("variants", "variant names must be unique")

        def need_variant(field_name: str, value: object) -> str:
            if not isinstance(value, str) or value not in known:
                raise FlagError(field_name, f"unknown variant {value!r}; known: {sorted(known)}")
            return value

        stable = need_variant("stable", stable)
        if canary is not None and canary != "":
            canary = need_variant("canary", canary)
            if canary == stable:
                raise FlagError("canary", "must differ from the stable variant")
        else:
            canary = None
        default = stable if default in (None, "") else need_variant("default", default)
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise FlagError("salt", "must be a non-empty string when set")
        if not isinstance(kill_switch, bool):
            raise FlagError("kill_switch", f"must be true or false, got {kill_switch!r}")

        checked_weights = _check_weights(weights, known)

        overrides: dict[str, str] = {}
        for user, variant in (user_overrides or {}).items():
            if not isinstance(user, str) or not user.strip():
                raise FlagError("user_overrides", "targeting key must be a non-empty string")
            overrides[user] = need_variant(f"user_overrides[{user}]", variant)

        segment_set: set[str] = set()
        for seg in segments:
            if not isinstance(seg, str) or not seg.strip():
                raise FlagError("segments", f"segment names must be non-empty strings, got {seg!r}")
            segment_set.add(seg)
        rules: list[SegmentRule] = []
        rule_map: dict[str, str] = {}
        for i, rule in enumerate(segment_rules):
            if rule.segment not in segment_set:
                raise FlagError(
                    f"segment_rules[{i}].segment",
                    f"unknown segment {rule.segment!r}; declared: {sorted(segment_set)}",
                )
            if rule.segment in rule_map:
                raise FlagError(
                    f"segment_rules[{i}].segment", f"duplicate rule for segment {rule.segment!r}"
                )
            variant = need_variant(f"segment_rules[{i}].variant", rule.variant)
            rule_map[rule.segment] = variant
            rules.append(SegmentRule(rule.segment, variant))

        order = bucket_order(names, stable, canary)
        split: list[tuple[int, str]] = []
        upper = 0
        for name in order:
            weight = checked_weights.get(name, 0)
            if weight:
                upper += weight
                split.append((upper, name))

        return Flag(
            key=key,
            salt=salt or key,
            variants=names,
            stable=stable,
            canary=canary,
            default=default,
            weights=MappingProxyType(checked_weights),
            kill_switch=kill_switch,
            user_overrides=MappingProxyType(overrides),
            segments=frozenset(segment_set),
            segment_rules=tuple(rules),
            split=tuple(split),
            rule_by_segment=MappingProxyType(rule_map),
        )

    def replace(self, **changes: object) -> Flag:
        """A new validated flag with some fields changed (derived fields are rebuilt)."""
        fields: dict[str, object] = {
            "key": self.key,
            "variants": self.variants,
            "stable": self.stable,
            "weights": self.weights,
            "canary": self.canary,
            "default": self.default,
            "salt": self.salt,
            "kill_switch": self.kill_switch,
            "user_overrides": self.user_overrides,
            "segments": self.segments,
            "segment_rules": self.segment_rules,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise FlagError(sorted(unknown)[0], "not a flag field")
        fields.update(changes)
        return Flag.build(**fields)  # type: ignore[arg-type]


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


def bucket_order(variants: Iterable[str], stable: str, canary: str | None) -> tuple[str, ...]:
    """Order in which variants own consecutive bucket ranges, starting at bucket 0.

    The canary comes first, so that raising its weight (taking from the others) only adds
    buckets at its upper end: a user already in the canary stays there. Other variants
    follow in name order; the stable variant owns the top range.
    """
    others = sorted(v for v in variants if v not in (stable, canary))
    head = [canary] if canary is not None else []
    return (*head, *others, stable)

"""Explicit versions in routing: which variants can serve, a version's variant, and the
VERSION_REQUESTED step (after the kill switch, before overrides and segment rules)."""

from __future__ import annotations

from typing import Any

from sidecar.core.routing import (
    Flag,
    Reason,
    RoutingContext,
    SegmentRule,
    evaluate,
    served_variants,
    variants_for_version,
)

VERSIONS = {"stable": "v1", "canary": "v2", "blue": "v3", "shadow": "v4"}


def make_flag(**changes: Any) -> Flag:
    fields: dict[str, Any] = {
        "key": "classifier-rollout",
        "variants": ["stable", "canary", "blue", "shadow"],
        "stable": "stable",
        "canary": "canary",
        "weights": {"stable": 9_000, "canary": 1_000, "blue": 0, "shadow": 0},
        "user_overrides": {"vip": "stable"},
        "segments": ["beta"],
        "segment_rules": [SegmentRule("beta", "stable")],
    }
    fields.update(changes)
    return Flag.build(**fields)


def test_served_variants_are_stable_canary_and_weighted_never_the_shadow() -> None:
    """Stable and canary serve (the canary at weight 0 too), a weighted variant serves,
    a variant at weight 0 that is neither does not, and the shadow never does."""
    assert served_variants(make_flag(), shadow="shadow") == ("stable", "canary")
    weighted = make_flag(weights={"stable": 8_000, "canary": 0, "blue": 1_000, "shadow": 1_000})
    assert served_variants(weighted, shadow="shadow") == ("stable", "canary", "blue")
    no_canary = make_flag(canary=None, weights={"stable": 10_000, "canary": 0})
    assert served_variants(no_canary, shadow="shadow") == ("stable",)


def test_a_version_names_its_served_variant_or_none() -> None:
    """Versions match `model_version`; an unknown, unserved, shadow's or empty version
    names no variant."""
    flag = make_flag()
    assert variants_for_version(flag, VERSIONS, "v1", "shadow") == ("stable",)
    assert variants_for_version(flag, VERSIONS, "v2", "shadow") == ("canary",)
    for version in ("v3", "v4", "v9", ""):
        assert variants_for_version(flag, VERSIONS, version, "shadow") == ()


def test_requested_version_beats_overrides_segments_and_split() -> None:
    """A requested variant is served with reason VERSION_REQUESTED even for a key with an
    override to another variant, in a segment with a rule."""
    flag = make_flag()
    got = evaluate(flag, RoutingContext("vip", "beta", "req-1", requested="canary"))
    assert (got.variant, got.reason) == ("canary", Reason.VERSION_REQUESTED)
    assert "version requested" in got.detail(flag)


def test_kill_switch_beats_a_requested_version() -> None:
    """Kill switch on: stable serves, whatever version was asked for."""
    got = evaluate(make_flag(kill_switch=True), RoutingContext("u", "", "r", requested="canary"))
    assert (got.variant, got.reason) == ("stable", Reason.KILL_SWITCH)


def test_no_requested_version_evaluates_as_before() -> None:
    """Without `requested` the override still wins (the step is skipped)."""
    got = evaluate(make_flag(), RoutingContext("vip", "", "req-1"))
    assert (got.variant, got.reason) == ("stable", Reason.USER_OVERRIDE)

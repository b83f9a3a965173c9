"""Flag evaluation order, reasons, validation, and that evaluation never raises."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.routing import (
    Flag,
    FlagError,
    Reason,
    RoutingContext,
    SegmentRule,
    evaluate,
)


def make_flag(**changes: Any) -> Flag:
    fields: dict[str, Any] = {
        "key": "classifier-rollout",
        "variants": ["stable", "canary", "blue"],
        "stable": "stable",
        "canary": "canary",
        "weights": {"stable": 0, "canary": 10_000},  # split alone would say canary
        "user_overrides": {"vip": "blue"},
        "segments": ["beta", "internal"],
        "segment_rules": [SegmentRule("beta", "blue")],
    }
    fields.update(changes)
    return Flag.build(**fields)


PRECEDENCE = [
    # kill_switch, targeting key, segment, expected variant, expected reason
    (True, "vip", "beta", "stable", Reason.KILL_SWITCH),
    (True, "someone", "", "stable", Reason.KILL_SWITCH),
    (False, "vip", "beta", "blue", Reason.USER_OVERRIDE),
    (False, "vip", "", "blue", Reason.USER_OVERRIDE),
    (False, "someone", "beta", "blue", Reason.SEGMENT_RULE),
    (False, "", "beta", "blue", Reason.SEGMENT_RULE),
    (False, "someone", "internal", "canary", Reason.SPLIT),  # declared segment, no rule
    (False, "someone", "undeclared", "canary", Reason.SPLIT),
    (False, "someone", "", "canary", Reason.SPLIT),
]


@pytest.mark.parametrize(("kill", "key", "segment", "variant", "reason"), PRECEDENCE)
def test_rule_precedence_table(
    kill: bool, key: str, segment: str, variant: str, reason: Reason
) -> None:
    """Kill switch beats overrides, which beat segment rules, which beat the split."""
    flag = make_flag(kill_switch=kill)
    got = evaluate(flag, RoutingContext(key, segment, "req-1"))
    assert (got.variant, got.reason) == (variant, reason)
    assert got.detail(flag)  # every reason explains itself


def test_no_key_and_no_bucketing_key_gives_default() -> None:
    """Nothing to bucket on: the default variant, reason DEFAULT."""
    flag = make_flag(default="blue")
    got = evaluate(flag, RoutingContext("", "", ""))
    assert (got.variant, got.reason) == ("blue", Reason.DEFAULT)


def test_split_detail_names_bucket_and_range() -> None:
    """The SPLIT reason says which bucket and which range chose the variant."""
    flag = make_flag(weights={"stable": 9000, "canary": 1000})
    got = evaluate(flag, RoutingContext("someone"))
    text = got.detail(flag)
    assert f"bucket {got.bucket}" in text and repr(got.variant) in text


BAD_FLAGS = [
    ({"weights": {"stable": 5000, "canary": 4000}}, "weights", "sum to 10000"),
    ({"weights": {"stable": 10_001, "canary": -1}}, "weights[stable]", "0..10000"),
    ({"weights": {"stable": 5000.0, "canary": 5000}}, "weights[stable]", "integer"),
    ({"weights": {"stable": True, "canary": 9999}}, "weights[stable]", "integer"),
    ({"weights": {"stable": 5000, "ghost": 5000}}, "weights[ghost]", "unknown variant"),
    ({"weights": {}}, "weights", "basis points"),
    ({"stable": "ghost"}, "stable", "unknown variant"),
    ({"canary": "stable"}, "canary", "must differ"),
    ({"default": "ghost"}, "default", "unknown variant"),
    ({"key": " "}, "key", "non-empty"),
    ({"user_overrides": {"": "canary"}}, "user_overrides", "non-empty"),
    ({"user_overrides": {"bob": "ghost"}}, "user_overrides[bob]", "unknown variant"),
    ({"segment_rules": [SegmentRule("gamma", "blue")]}, "segment_rules[0].segment", "unknown"),
    ({"segment_rules": [SegmentRule("beta", "ghost")]}, "segment_rules[0].variant", "unknown"),
    (
        {"segment_rules": [SegmentRule("beta", "blue"), SegmentRule("beta", "canary")]},
        "segment_rules[1].segment",
        "duplicate",
    ),
    ({"variants": ["stable", "stable"]}, "variants", "unique"),
    ({"kill_switch": "yes"}, "kill_switch", "true or false"),
]


@pytest.mark.parametrize(("changes", "field", "text"), BAD_FLAGS)
def test_invalid_flags_are_rejected_naming_the_field(
    changes: dict[str, Any], field: str, text: str
) -> None:
    """Bad weights, unknown variants and malformed rules are rejected when built."""
    with pytest.raises(FlagError) as info:
        make_flag(**changes)
    assert info.value.field == field
    assert text in str(info.value)


def test_replace_revalidates() -> None:
    """Changing a field rebuilds and revalidates the flag (derived split included)."""
    flag = make_flag()
    moved = flag.replace(weights={"stable": 10_000, "canary": 0})
    assert evaluate(moved, RoutingContext("someone")).variant == "stable"
    with pytest.raises(FlagError):
        flag.replace(weights={"stable": 1})


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=50), segment=st.text(max_size=20), bkey=st.text(max_size=20))
def test_evaluation_never_raises(key: str, segment: str, bkey: str) -> None:
    """Any strings as context give a known variant and a reason, never an exception."""
    flag = make_flag(weights={"stable": 3333, "canary": 3333, "blue": 3334})
    got = evaluate(flag, RoutingContext(key, segment, bkey))
    assert got.variant in flag.variants
    assert isinstance(got.reason, Reason)

"""Suspended rules: evaluation skips user overrides and segment rules (kept, not applied),
and the flag's JSON carries the suspension (older documents load as not suspended)."""

from __future__ import annotations

import json

import pytest
from test_routing_evaluate import make_flag

from sidecar.core.routing import Reason, RoutingContext, RoutingState, SegmentRule, evaluate
from sidecar.core.state import DesiredState, diff

SUSPENDED = [
    # kill switch, targeting key, segment, expected variant, expected reason
    (False, "vip", "beta", "canary", Reason.SPLIT),  # override and rule both skipped
    (False, "vip", "", "canary", Reason.SPLIT),
    (False, "someone", "beta", "canary", Reason.SPLIT),
    (False, "", "beta", "canary", Reason.SPLIT_NO_KEY),  # per request, like everyone's
    (True, "vip", "beta", "stable", Reason.KILL_SWITCH),  # the kill switch stays first
]


@pytest.mark.parametrize(("kill", "key", "segment", "variant", "reason"), SUSPENDED)
def test_suspended_rules_are_skipped(
    kill: bool, key: str, segment: str, variant: str, reason: Reason
) -> None:
    """With the rules suspended, pinned users and ruled segments take the split."""
    flag = make_flag(kill_switch=kill, rules_suspended=True)
    got = evaluate(flag, RoutingContext(key, segment, "req-1"))
    assert (got.variant, got.reason) == (variant, reason)
    assert flag.user_overrides == {"vip": "blue"}  # kept
    assert flag.segment_rules == (SegmentRule("beta", "blue"),)


def test_suspended_rules_after_rollback_send_everyone_to_stable() -> None:
    """Weights all on stable and rules suspended: the pinned user, the ruled segment and
    a keyless request all get stable (reason SPLIT / SPLIT_NO_KEY / DEFAULT)."""
    flag = make_flag(weights={"stable": 10_000, "canary": 0}, rules_suspended=True)
    answers = [
        evaluate(flag, RoutingContext("vip", "beta", "r1")),
        evaluate(flag, RoutingContext("", "beta", "r2")),
        evaluate(flag, RoutingContext("", "beta", "")),
    ]
    assert [(a.variant, a.reason) for a in answers] == [
        ("stable", Reason.SPLIT),
        ("stable", Reason.SPLIT_NO_KEY),
        ("stable", Reason.DEFAULT),
    ]


def test_a_requested_version_is_suspended_with_the_rules() -> None:
    """After a rollback a request naming the canary's version is routed like everyone's
    (to stable: the answer's model version tells which); restored, the version serves."""
    flag = make_flag(weights={"stable": 10_000, "canary": 0}, rules_suspended=True)
    ctx = RoutingContext("vip", "", "r", requested="canary")
    assert (evaluate(flag, ctx).variant, evaluate(flag, ctx).reason) == ("stable", Reason.SPLIT)
    restored = flag.replace(rules_suspended=False)
    assert evaluate(restored, ctx).reason is Reason.VERSION_REQUESTED
    assert evaluate(restored, ctx).variant == "canary"


def test_restored_rules_apply_again() -> None:
    """Clearing the suspension brings back the override and the segment rule."""
    flag = make_flag(rules_suspended=True).replace(rules_suspended=False)
    assert evaluate(flag, RoutingContext("vip", "", "r")).reason is Reason.USER_OVERRIDE
    assert evaluate(flag, RoutingContext("x", "beta", "r")).reason is Reason.SEGMENT_RULE


def test_suspension_round_trips_through_the_json() -> None:
    """`rules_suspended` and its reason survive the state document, both ways."""
    flag = make_flag()
    state = DesiredState.from_flag(flag).suspend_rules("Rollback by ops: p95")
    doc = json.loads(state.to_json())["state"]
    assert doc["rules_suspended"] is True
    assert doc["rules_suspended_reason"] == "Rollback by ops: p95"
    back = DesiredState.from_json(state.to_json())
    assert back.rules_suspended and back.rules_suspended_reason == "Rollback by ops: p95"
    assert back.to_flag(flag).rules_suspended
    restored = DesiredState.from_json(back.restore_rules().to_json())
    assert not restored.rules_suspended and restored.rules_suspended_reason == ""


def test_older_documents_load_as_not_suspended() -> None:
    """A document written before the field existed loads with the rules in force."""
    doc = json.loads(DesiredState.from_flag(make_flag()).to_json())
    del doc["state"]["rules_suspended"], doc["state"]["rules_suspended_reason"]
    state = DesiredState.from_json(json.dumps(doc))
    assert not state.rules_suspended and state.rules_suspended_reason == ""
    assert RoutingState.from_dict(doc["state"]).rules_suspended is False


def test_a_wrong_type_is_refused_naming_the_field() -> None:
    """`rules_suspended: "yes"` is not silently truthy."""
    doc = json.loads(DesiredState.from_flag(make_flag()).to_json())
    doc["state"]["rules_suspended"] = "yes"
    with pytest.raises(ValueError, match="rules_suspended"):
        DesiredState.from_json(json.dumps(doc))


def test_suspending_twice_keeps_the_first_reason_and_diffs_show_it() -> None:
    """A second rollback keeps why the rules were suspended; the diff names the change."""
    state = DesiredState.from_flag(make_flag())
    once = state.suspend_rules("Rollback by health-checker: canary errors")
    twice = once.suspend_rules("AbortRollout by ops: later")
    assert twice.rules_suspended_reason == "Rollback by health-checker: canary errors"
    assert diff(state, once) == {
        "rules_suspended": [False, True],
        "rules_suspended_reason": ["", "Rollback by health-checker: canary errors"],
    }
    assert diff(once, once.restore_rules())["rules_suspended"] == [True, False]

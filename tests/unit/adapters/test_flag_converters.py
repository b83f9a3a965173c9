"""Routing rules <-> Control messages, tested without a server."""

from __future__ import annotations

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.adapters.grpc.flag_converters import (
    flag_state,
    routing_from_flag_state,
    segment_rule_from_proto,
    segment_rule_to_proto,
)
from sidecar.core.routing import Flag, SegmentRule


def a_flag(**changes: object) -> Flag:
    return Flag.build(
        key="classifier",
        variants=["stable", "canary", "blue"],
        stable="stable",
        canary="canary",
        weights={"stable": 9000, "canary": 1000},
        kill_switch=True,
        user_overrides={"qa": "blue"},
        segments=["internal", "beta"],
        segment_rules=[SegmentRule("beta", "canary")],
    ).replace(**changes)


def test_flag_state_carries_every_rule() -> None:
    """Each rule lands in its FlagState field; declared segments are sorted."""
    message = flag_state(a_flag(), "incident 7")
    assert message == cpb.FlagState(
        key="classifier",
        stable_variant="stable",
        canary_variant="canary",
        default_variant="stable",
        weights={"stable": 9000, "canary": 1000},
        kill_switch=True,
        kill_switch_reason="incident 7",
        user_overrides={"qa": "blue"},
        user_override_count=1,
        segment_rules=[cpb.SegmentRule(segment="beta", variant="canary")],
        segments=["beta", "internal"],
    )


def test_rules_round_trip_through_the_proto() -> None:
    """flag_state and routing_from_flag_state are inverse on the routing rules, also with
    no canary (None <-> "")."""
    for flag in (a_flag(), a_flag(canary=None, weights={"stable": 10_000}, kill_switch=False)):
        message = flag_state(flag)
        assert routing_from_flag_state(message) == flag.routing
        assert flag.with_routing(routing_from_flag_state(message)) == flag
    assert flag_state(a_flag(canary=None, weights={"stable": 10_000})).canary_variant == ""


def test_segment_rule_converters() -> None:
    """A segment rule converts both ways, and the SetSegmentRule request reads as one."""
    rule = SegmentRule("beta", "canary")
    assert segment_rule_from_proto(segment_rule_to_proto(rule)) == rule
    request = cpb.SetSegmentRuleRequest(reason="r", segment="beta", variant="canary")
    assert segment_rule_from_proto(request) == rule

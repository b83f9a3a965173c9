"""Pure converters between the routing rules and sidecar.v1 Control messages.

One converter pair per structured rule (a scalar or map rule is one field assignment in
`flag_state` and its inverse), so that a new rule type adds its lines here and nothing
else in the gRPC adapter changes. `flag_state` builds the `FlagState` every State message carries;
`routing_from_flag_state` is its inverse (the routing rules as the client sees them).
Tested without a server (tests/unit/adapters/test_flag_converters.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.core.routing import Flag, Overrides, RoutingState, SegmentRule

__all__ = [
    "flag_state",
    "routing_from_flag_state",
    "segment_rule_from_proto",
    "segment_rule_to_proto",
]


# ---- one converter pair per structured rule ---------------------------------------------


def segment_rule_to_proto(rule: SegmentRule) -> cpb.SegmentRule:
    return cpb.SegmentRule(segment=rule.segment, variant=rule.variant)


def segment_rule_from_proto(message: cpb.SegmentRule | cpb.SetSegmentRuleRequest) -> SegmentRule:
    """From a listed rule or from the SetSegmentRule request (same field names)."""
    return SegmentRule(segment=message.segment, variant=message.variant)


# ---- the routing rules as one message --------------------------------------------------


def flag_state(
    flag: Flag,
    kill_switch_reason: str = "",
    user_overrides: Mapping[str, str] | None = None,
    rules_suspended_reason: str = "",
) -> cpb.FlagState:
    """The flag in force: its static parts and every routing rule; `user_overrides`, when
    given, is the part of the overrides to list (`user_override_count` counts them all)."""
    routing = flag.routing
    return cpb.FlagState(
        key=flag.key,
        stable_variant=routing.stable,
        canary_variant=routing.canary or "",
        default_variant=routing.default,
        weights=dict(routing.weights),
        kill_switch=routing.kill_switch,
        kill_switch_reason=kill_switch_reason,
        user_overrides=(
            Overrides.of(routing.user_overrides).as_dict()  # C-speed copy
            if user_overrides is None
            else dict(user_overrides)
        ),
        user_override_count=len(routing.user_overrides),
        segment_rules=[segment_rule_to_proto(r) for r in routing.segment_rules],
        segments=sorted(flag.segments),
        rules_suspended=routing.rules_suspended,
        rules_suspended_reason=rules_suspended_reason,
    )


def routing_from_flag_state(message: cpb.FlagState) -> RoutingState:
    """The routing rules of a `FlagState` (not validated: compile them into a `Flag`)."""
    return RoutingState(
        stable=message.stable_variant,
        canary=message.canary_variant or None,
        default=message.default_variant,
        weights=dict(message.weights),
        kill_switch=message.kill_switch,
        user_overrides=dict(message.user_overrides),
        segment_rules=tuple(segment_rule_from_proto(r) for r in message.segment_rules),
        rules_suspended=message.rules_suspended,
    )

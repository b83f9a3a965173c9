"""One rule model: the flag is compiled from the same `RoutingState` the desired state
holds and persists; validation happens once, when compiling."""

from __future__ import annotations

import pytest

from sidecar.core.routing import Flag, FlagError, RoutingState, SegmentRule
from sidecar.core.state import DesiredState

VARIANTS = ("stable", "canary", "blue")
RULES = RoutingState(
    stable="stable",
    canary="canary",
    default="stable",
    weights={"stable": 9000, "canary": 1000},
    user_overrides={"qa": "blue"},
    segment_rules=(SegmentRule("beta", "canary"),),
)


def compile_on_static_parts(routing: RoutingState) -> Flag:
    return Flag.compile(key="k", variants=VARIANTS, segments=["beta"], routing=routing)


def test_build_keywords_and_compile_give_the_same_flag() -> None:
    """`Flag.build(...)` (the configuration's keyword API) is `Flag.compile` of one
    `RoutingState`; the flag reads its rules from it."""
    built = Flag.build(
        key="k",
        variants=VARIANTS,
        segments=["beta"],
        stable="stable",
        canary="canary",
        weights={"stable": 9000, "canary": 1000},
        user_overrides={"qa": "blue"},
        segment_rules=[SegmentRule("beta", "canary")],
    )
    compiled = compile_on_static_parts(RULES)
    assert built == compiled
    assert built.routing == RULES
    assert (built.stable, built.canary, built.default) == ("stable", "canary", "stable")
    assert built.rule_by_segment == {"beta": "canary"}


def test_compiling_normalises_the_rules() -> None:
    """No canary ("" or None) is None; no default is the stable variant."""
    flag = compile_on_static_parts(RULES.evolve(canary="", default=""))
    assert flag.canary is None and flag.default == "stable"


def test_desired_state_holds_the_flags_rules() -> None:
    """The desired state holds the flag's `RoutingState` (no copy in another shape) and
    compiles back to the same flag; rule names work in `evolve` and as attributes."""
    flag = compile_on_static_parts(RULES)
    state = DesiredState.from_flag(flag, revision=3)
    assert state.routing is flag.routing
    assert state.to_flag(flag) == flag
    moved = state.evolve(weights={"stable": 10_000}, kill_switch=True, revision=4)
    assert moved.routing == flag.routing.evolve(weights={"stable": 10_000}, kill_switch=True)
    assert moved.revision == 4 and moved.kill_switch and moved.weights == {"stable": 10_000}
    assert moved.segment_rules == (SegmentRule("beta", "canary"),)


def test_state_rules_are_validated_when_compiled() -> None:
    """A state's rules are checked against the static parts by `to_flag`, naming the field;
    a default the configuration no longer has falls back to the stable variant."""
    flag = compile_on_static_parts(RULES)
    state = DesiredState.from_flag(flag)
    with pytest.raises(FlagError) as info:
        state.evolve(segment_rules=(SegmentRule("beta", "ghost"),)).to_flag(flag)
    assert info.value.field == "segment_rules[0].variant"
    assert state.evolve(default="retired").to_flag(flag).default == "stable"


def test_rules_round_trip_through_their_json() -> None:
    """`to_dict` / `from_dict` are inverse; segment rules travel as [segment, variant]."""
    data = RULES.to_dict()
    assert data["segment_rules"] == [["beta", "canary"]]
    assert RoutingState.from_dict(data) == RULES
    with pytest.raises(FlagError, match=r"weights\.canary: expected an integer"):
        RoutingState.from_dict({**data, "weights": {"canary": 1.5}})

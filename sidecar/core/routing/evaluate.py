"""Flag evaluation: kill switch -> requested version -> user overrides -> segment rules ->
weighted split -> default.

A requested version (`RoutingContext.requested`: the served variant whose `model_version`
the request named, resolved by the data plane) is served by that variant unless the kill
switch is on. It is a rule like a user override: whatever suspends the overrides suspends
it too.

While the rules are suspended (after a rollback or an aborted rollout, until an operator
restores them), user overrides and segment rules are skipped: those requests take the
split or the default like everyone else's.

`evaluate` never raises: whatever goes wrong, it answers the flag's default variant with
reason ERROR (OpenFeature's contract: a value and a reason, never an exception).
"""

from __future__ import annotations

from typing import NamedTuple

from sidecar.core.routing.bucketing import bucket
from sidecar.core.routing.model import BASIS_POINTS, Flag, Reason


class RoutingContext(NamedTuple):
    """Who is asking. `bucketing_key` is used only when `targeting_key` is empty: the
    caller passes a per-request value (the request id), so such requests are split per
    request."""

    targeting_key: str = ""
    segment: str = ""
    bucketing_key: str = ""
    requested: str = ""  # a served variant the request asked for by its version ("": none)


class Resolution(NamedTuple):
    """The evaluated variant and why."""

    variant: str
    reason: Reason
    bucket: int = -1
    rule: str = ""

    def detail(self, flag: Flag) -> str:
        """Human-readable reason, for spans, logs and the Predict response."""
        if self.reason is Reason.KILL_SWITCH:
            return f"kill switch on: all traffic to stable variant {self.variant!r}"
        if self.reason is Reason.VERSION_REQUESTED:
            return f"version requested: served by variant {self.variant!r}"
        if self.reason is Reason.USER_OVERRIDE:
            return f"user override for targeting key -> {self.variant!r}"
        if self.reason is Reason.SEGMENT_RULE:
            return f"segment rule {self.rule!r} -> {self.variant!r}"
        if self.reason in (Reason.SPLIT, Reason.SPLIT_NO_KEY):
            lower = 0
            for upper, name in flag.split:
                if name == self.variant:
                    break
                lower = upper
            else:
                upper = lower
            per = (
                "per request (no targeting key)" if self.reason is Reason.SPLIT_NO_KEY else "by key"
            )
            return (
                f"split {per}: bucket {self.bucket} in [{lower}, {upper}) of {BASIS_POINTS} "
                f"-> {self.variant!r}"
            )
        if self.reason is Reason.ERROR:
            return f"evaluation error ({self.rule}); default variant {self.variant!r}"
        return f"default variant {self.variant!r}"


def _ruled(flag: Flag, ctx: RoutingContext) -> Resolution | None:
    """The requested version, the user override or the segment rule that applies; None
    when none does (and always while the rules are suspended)."""
    if flag.routing.rules_suspended:  # after a rollback: every request to the split (stable)
        return None
    if ctx.requested:
        return Resolution(ctx.requested, Reason.VERSION_REQUESTED)
    if ctx.targeting_key:
        override = flag.routing.user_overrides.get(ctx.targeting_key)
        if override is not None:
            return Resolution(override, Reason.USER_OVERRIDE)
    if ctx.segment:
        ruled = flag.rule_by_segment.get(ctx.segment)
        if ruled is not None:
            return Resolution(ruled, Reason.SEGMENT_RULE, rule=ctx.segment)
    return None


def evaluate(flag: Flag, ctx: RoutingContext) -> Resolution:
    """Choose the variant for one request. Pure, deterministic, never raises."""
    try:
        rules = flag.routing
        if rules.kill_switch:
            return Resolution(rules.stable, Reason.KILL_SWITCH)
        ruled = _ruled(flag, ctx)
        if ruled is not None:
            return ruled
        key = ctx.targeting_key
        if key:
            reason = Reason.SPLIT
        elif ctx.bucketing_key:
            key, reason = ctx.bucketing_key, Reason.SPLIT_NO_KEY
        else:
            return Resolution(rules.default, Reason.DEFAULT)
        b = bucket(flag.salt, key)
        for upper, name in flag.split:
            if b < upper:  # the common case: the C constructor (see `wire._new`)
                return tuple.__new__(Resolution, (name, reason, b, ""))
        return Resolution(rules.default, Reason.DEFAULT, bucket=b)
    except Exception as exc:  # evaluation must never fail a request
        return Resolution(flag.default, Reason.ERROR, rule=type(exc).__name__)

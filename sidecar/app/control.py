"""Control writes: validate, persist, audit, apply, acknowledge.

Every write runs under one lock, in this order:
1. the reason is required and `expected_revision` (when non-zero) must match, or the
   write is refused (ABORTED) with nothing changed;
2. the new desired state is computed and validated against the static flag parts
   (INVALID_ARGUMENT / FAILED_PRECONDITION naming the field, nothing changed);
3. the new state and its audit entry are committed together (`StateStore.commit`: one
   SQLite transaction, in a worker thread): both are durable or neither is;
4. the routing snapshot is swapped: the next request sees it;
5. the new state is returned (the acknowledgement).
A failing commit leaves the previous state in force, stored and served, and the write is
answered UNAVAILABLE: a write answered with an error has changed nothing, after any crash.

Before any of it, each verb checks its inputs against `sidecar.core.limits.ControlLimits`
(`_check_reason`, `_check_name`, ...): INVALID_ARGUMENT naming the field and the limit.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from sidecar.app.ports import AuditEntry, NotLeader, RevisionConflict, StateStore
from sidecar.app.state import Snapshot, StateHolder
from sidecar.core.limits import (
    CONTROL_LIMITS,
    ControlLimits,
    LimitError,
    check_count,
    check_text,
)
from sidecar.core.rollout import (
    DEFAULT_PLAN,
    Baseline,
    Phase,
    PlanError,
    RolloutProgress,
    Stage,
    StageKind,
    validate_plan,
)
from sidecar.core.routing import BASIS_POINTS, Flag, FlagError, Overrides, SegmentRule
from sidecar.core.state import DesiredState, Promotion, diff
from sidecar.errors import (
    ErrorCode,
    FailedPrecondition,
    InvalidRequest,
    SidecarError,
    StaleRevision,
)

log = structlog.get_logger("sidecar.control")

AUDIT_PAGE_BYTES = 1 << 20
"""Default bound on the serialised entries of one audit page (the servicer passes its own,
below the message limit)."""

Readiness = Callable[[str], Awaitable[bool]]
Mutation = Callable[[DesiredState], DesiredState]


class ControlService:
    def __init__(
        self,
        *,
        holder: StateHolder,
        template: Flag,
        store: StateStore,
        ready: Readiness,
        served: Callable[[], Mapping[str, int]],
        clock: Callable[[], float] = time.time,
        rollouts: RolloutSetup | None = None,
        limits: ControlLimits = CONTROL_LIMITS,
    ) -> None:
        self.holder = holder
        self.template = template
        self.store = store
        self._ready = ready
        self._served = served
        self._clock = clock
        self._lock = asyncio.Lock()
        self._rollouts = rollouts or RolloutSetup()
        self.limits = limits
        # The targeting keys in order, for the overrides mapping they were sorted from:
        # sorted once, then kept up to date by Set/ClearUserOverride (other writes keep
        # the same mapping), so that State answers and pages stay cheap at 100,000.
        self._override_keys: tuple[Mapping[str, str] | None, list[str]] = (None, [])

    # ---- reads -----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return self.holder.current

    def audit_page(
        self, start: int, limit: int, max_bytes: int = AUDIT_PAGE_BYTES
    ) -> tuple[list[AuditEntry], int]:
        """Entries from `start`: at most `limit`, and at most `max_bytes` of serialised
        entries (at least one), with the total count."""
        return self.store.read_audit(start, limit, max_bytes), self.store.audit_count()

    def sorted_override_keys(self, state: DesiredState) -> list[str]:
        """The targeting keys of `state`'s user overrides in order (sorted once; the state
        in force keeps them)."""
        overrides = state.user_overrides
        cached_for, keys = self._override_keys
        if cached_for is overrides:
            return keys
        keys = sorted(overrides)
        if state is self.holder.current.state:
            self._override_keys = (overrides, keys)
        return keys

    def first_override_keys(self, state: DesiredState, count: int) -> list[str]:
        """The first `count` targeting keys in order: from the sorted keys when they are
        kept for `state` (or it is the state in force), else by a linear-time selection."""
        if self._override_keys[0] is state.user_overrides or state is self.holder.current.state:
            return self.sorted_override_keys(state)[:count]
        return heapq.nsmallest(count, state.user_overrides)

    def _follow_override(
        self, before: Mapping[str, str], after: Mapping[str, str], key: str
    ) -> None:
        """Keep the sorted keys in step with a change of one key (O(n) copy, no sort)."""
        cached_for, keys = self._override_keys
        if cached_for is not before:
            return
        keys = list(keys)
        i = bisect.bisect_left(keys, key)
        present = i < len(keys) and keys[i] == key
        if key in after and not present:
            keys.insert(i, key)
        elif key not in after and present:
            del keys[i]
        self._override_keys = (after, keys)

    def override_page(self, prefix: str, after: str, limit: int) -> OverridePage:
        """Up to `limit` user overrides whose key starts with `prefix`, after the key
        `after` (empty: from the first), in key order, from the state in force."""
        self.check_input(lambda: check_text("prefix", prefix, self.limits.key_bytes))
        snapshot = self.snapshot()
        overrides = snapshot.state.user_overrides
        keys = self.sorted_override_keys(snapshot.state)
        first = bisect.bisect_left(keys, prefix)
        start = max(first, bisect.bisect_right(keys, after)) if after else first
        items: list[tuple[str, str]] = []
        i = start
        while i < len(keys) and len(items) < limit and keys[i].startswith(prefix):
            items.append((keys[i], overrides[keys[i]]))
            i += 1
        more = i < len(keys) and keys[i].startswith(prefix)
        if not prefix:
            total = len(keys)
        else:
            end = first
            while end < len(keys) and keys[end].startswith(prefix):
                end += 1
            total = end - first
        return OverridePage(tuple(items), total, more, snapshot.revision)

    # ---- input bounds (checked before anything changes) -------------------------------

    @staticmethod
    def check_input(check: Callable[[], object]) -> None:
        """Run a `sidecar.core.limits` check; its LimitError becomes InvalidRequest."""
        try:
            check()
        except LimitError as exc:
            raise InvalidRequest(str(exc)) from None

    def check_reason(self, reason: str) -> None:
        self.check_input(lambda: check_text("reason", reason, self.limits.reason_bytes))

    def _check_name(self, field: str, name: str) -> None:
        self.check_input(lambda: check_text(field, name, self.limits.name_bytes))

    def _check_key(self, key: str) -> None:
        self.check_input(lambda: check_text("targeting_key", key, self.limits.key_bytes))

    # ---- writes ----------------------------------------------------------------------

    async def apply(
        self,
        *,
        principal: str,
        method: str,
        reason: str,
        expected_revision: int,
        mutate: Mutation | Callable[[DesiredState], Awaitable[DesiredState]],
    ) -> Snapshot:
        if not reason.strip():
            raise InvalidRequest("reason: must not be empty; say why (it goes to the audit log)")
        if expected_revision < 0:
            raise InvalidRequest("expected_revision: must be >= 0 (0 = do not check)")
        async with self._lock:
            current = self.holder.current
            if expected_revision and expected_revision != current.revision:
                raise StaleRevision(
                    f"expected_revision: the state is at revision {current.revision}, not "
                    f"{expected_revision}; re-read the state and retry"
                )
            result = mutate(current.state)
            proposed = await result if isinstance(result, Awaitable) else result
            now = self._clock()
            new_state = proposed.evolve(
                revision=current.revision + 1,
                updated_unix_time=now,
                updated_by=principal,
                update_reason=reason,
                held_full_since=_held_full(proposed, now),
            )
            try:
                flag = new_state.to_flag(self.template)
            except FlagError as exc:
                raise InvalidRequest(f"{exc.field}: {exc.message}") from None
            changes = diff(current.state, new_state)
            entry = AuditEntry(
                unix_time=now,
                principal=principal,
                method=method,
                reason=reason,
                revision_before=current.revision,
                revision_after=new_state.revision,
                diff=changes,
            )
            commit = asyncio.ensure_future(asyncio.to_thread(self.store.commit, new_state, entry))
            try:
                cancelled = await _outlive_cancellation(commit)
            except RevisionConflict as exc:
                raise StaleRevision(f"{exc}; nothing changed") from None
            except NotLeader as exc:
                raise SidecarError(f"{exc}; nothing changed", ErrorCode.ABORTED) from None
            except OSError as exc:
                log.error("control.persist_failed", method=method, error=str(exc))
                raise SidecarError(
                    f"state could not be persisted ({exc}); nothing changed", ErrorCode.UNAVAILABLE
                ) from None
            snapshot = Snapshot(flag, new_state, safe_mode=False)
            self.holder.follow(snapshot)  # unless a fleet notice already brought a newer one
        if cancelled:  # committed and in force; the caller just did not wait for the answer
            raise asyncio.CancelledError
        log.info(
            "control.changed",
            principal=principal,
            method=method,
            reason=reason,
            revision=new_state.revision,
            changes=changes,
        )
        return snapshot

    async def set_weights(
        self, principal: str, reason: str, expected_revision: int, weights: Mapping[str, int]
    ) -> Snapshot:
        self.check_reason(reason)
        self.check_input(lambda: check_count("weights", len(weights), self.limits.weights))
        for name in weights:
            self._check_name("weights", name)
        if not weights:
            raise InvalidRequest("weights: give at least one variant=basis points")
        return await self.apply(
            principal=principal,
            method="SetWeights",
            reason=reason,
            expected_revision=expected_revision,
            mutate=lambda s: s.evolve(weights=dict(weights)),
        )

    async def set_kill_switch(
        self, principal: str, reason: str, expected_revision: int, on: bool
    ) -> Snapshot:
        self.check_reason(reason)
        return await self.apply(
            principal=principal,
            method="SetKillSwitch",
            reason=reason,
            expected_revision=expected_revision,
            mutate=lambda s: s.evolve(kill_switch=on, kill_switch_reason=reason),
        )

    def _known_variant(self, field: str, variant: str) -> str:
        if variant not in self.template.variants:
            raise InvalidRequest(
                f"{field}: unknown variant {variant!r}; known: {sorted(self.template.variants)}"
            )
        return variant

    async def set_user_override(
        self, principal: str, reason: str, expected_revision: int, key: str, variant: str
    ) -> Snapshot:
        self.check_reason(reason)
        self._check_key(key)
        self._check_name("variant", variant)
        if not key.strip():
            raise InvalidRequest("targeting_key: must not be empty")
        self._known_variant("variant", variant)
        most = self.limits.user_overrides
        seen: list[Mapping[str, str]] = []

        def mutate(s: DesiredState) -> DesiredState:
            if key not in s.user_overrides and len(s.user_overrides) >= most:
                raise FailedPrecondition(
                    f"user_overrides: at most {most} overrides; clear some before adding "
                    "another (or use a segment rule)"
                )
            seen.append(s.user_overrides)
            return s.with_override(key, variant)

        snapshot = await self.apply(
            principal=principal,
            method="SetUserOverride",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )
        self._follow_override(seen[-1], snapshot.state.user_overrides, key)
        return snapshot

    async def clear_user_override(
        self, principal: str, reason: str, expected_revision: int, key: str
    ) -> Snapshot:
        self.check_reason(reason)
        self._check_key(key)
        if not key.strip():
            raise InvalidRequest("targeting_key: must not be empty")

        seen: list[Mapping[str, str]] = []

        def mutate(s: DesiredState) -> DesiredState:
            if key not in s.user_overrides:
                raise FailedPrecondition(f"targeting_key: no override for {key!r}")
            seen.append(s.user_overrides)
            return s.with_override(key, None)

        snapshot = await self.apply(
            principal=principal,
            method="ClearUserOverride",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )
        self._follow_override(seen[-1], snapshot.state.user_overrides, key)
        return snapshot

    def _known_segment(self, segment: str) -> str:
        if segment not in self.template.segments:
            raise InvalidRequest(
                f"segment: unknown segment {segment!r}; declared: {sorted(self.template.segments)}"
            )
        return segment

    async def set_segment_rule(
        self, principal: str, reason: str, expected_revision: int, rule: SegmentRule
    ) -> Snapshot:
        self.check_reason(reason)
        self._check_name("segment", rule.segment)
        self._check_name("variant", rule.variant)
        self._known_segment(rule.segment)
        self._known_variant("variant", rule.variant)
        most = self.limits.segment_rules

        def mutate(s: DesiredState) -> DesiredState:
            rules = [r for r in s.segment_rules if r.segment != rule.segment] + [rule]
            if len(rules) > most:
                raise FailedPrecondition(f"segment_rules: at most {most} rules")
            return s.evolve(segment_rules=tuple(rules))

        return await self.apply(
            principal=principal,
            method="SetSegmentRule",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    async def clear_segment_rule(
        self, principal: str, reason: str, expected_revision: int, segment: str
    ) -> Snapshot:
        self.check_reason(reason)
        self._check_name("segment", segment)
        self._known_segment(segment)

        def mutate(s: DesiredState) -> DesiredState:
            if not any(r.segment == segment for r in s.segment_rules):
                raise FailedPrecondition(f"segment: no rule for segment {segment!r}")
            kept = tuple(r for r in s.segment_rules if r.segment != segment)
            return s.evolve(segment_rules=kept)

        return await self.apply(
            principal=principal,
            method="ClearSegmentRule",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    async def promote(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        self.check_reason(reason)

        async def mutate(s: DesiredState) -> DesiredState:
            canary = s.canary
            if canary is None:
                raise FailedPrecondition("canary: there is no canary variant to promote")
            if s.kill_switch:
                raise FailedPrecondition("kill_switch: is on; turn it off before promoting")
            served = self._served().get(canary, 0)
            if served <= 0:
                raise FailedPrecondition(
                    f"canary: variant {canary!r} has served no traffic since this sidecar "
                    "started; give it traffic before promoting"
                )
            if not await self._ready(canary):
                raise FailedPrecondition(f"canary: variant {canary!r} is not ready (ModelReady)")
            return _swap_roles(s, Promotion(self._clock(), principal, s.stable, canary, reason))

        return await self.apply(
            principal=principal,
            method="Promote",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    async def rollback(
        self,
        principal: str,
        reason: str,
        expected_revision: int,
        *,
        end_rollout: Phase = Phase.ROLLED_BACK,
    ) -> Snapshot:
        """All traffic to stable (ending a running plan); with no traffic elsewhere and no
        plan running, revert the last promotion."""
        self.check_reason(reason)

        method = "AbortRollout" if end_rollout is Phase.ABORTED else "Rollback"
        why = f"{method} by {principal}: {reason}"

        async def mutate(s: DesiredState) -> DesiredState:
            elsewhere = {n: w for n, w in s.weights.items() if n != s.stable and w > 0}
            active = s.rollout is not None and s.rollout.phase.active
            if elsewhere or active or rules_elsewhere(s):
                weights = all_traffic_to(s.weights, s.stable)
                rollout = (
                    s.rollout.evolve(phase=end_rollout, message=reason)
                    if s.rollout is not None and active
                    else s.rollout
                )
                return s.evolve(weights=weights, rollout=rollout).suspend_rules(why)
            return (await self._revert_promotion(s, principal, reason)).suspend_rules(why)

        return await self.apply(
            principal=principal,
            method="Rollback",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    async def _revert_promotion(self, s: DesiredState, principal: str, reason: str) -> DesiredState:
        """The previous stable back in the stable role with all traffic (FailedPrecondition
        when there is no promotion to revert or that variant is not ready)."""
        last = s.promotions[-1] if s.promotions else None
        if last is None or last.reverted or last.to_variant != s.stable:
            raise FailedPrecondition(
                "weights: all traffic is already on the stable variant and there is no "
                "promotion to revert"
            )
        previous = last.from_variant
        if not await self._ready(previous):
            raise FailedPrecondition(
                f"stable: previous stable variant {previous!r} is not ready (ModelReady)"
            )
        record = Promotion(self._clock(), principal, s.stable, previous, reason, reverted=True)
        return _swap_roles(s, record)

    async def restore_rules(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        """Apply the user overrides and segment rules again after a rollback suspended
        them (FailedPrecondition when they are not suspended)."""
        self.check_reason(reason)

        def mutate(s: DesiredState) -> DesiredState:
            if not s.rules_suspended:
                raise FailedPrecondition(
                    "rules_suspended: the user overrides and segment rules are not suspended; "
                    "nothing to restore"
                )
            return s.restore_rules()

        return await self.apply(
            principal=principal,
            method="RestoreRules",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    # ---- rollout verbs (the plan is driven by sidecar.app.rollout.RolloutController) ---

    async def start_rollout(
        self,
        principal: str,
        reason: str,
        expected_revision: int,
        stages: tuple[Stage, ...],
        force: bool,
    ) -> Snapshot:
        """Start a plan (the default ladder when `stages` is empty): refused when it is
        malformed, skips stages without `force`, or the stable, canary, kill switch or a
        running plan forbid it. Records the stable's baseline; all traffic to stable."""
        self.check_reason(reason)
        setup = self._rollouts
        stages, skips = self._plan(stages, force)
        if not await self._ready(self.snapshot().flag.stable):
            raise FailedPrecondition("stable: the stable variant is not ready; no rollout starts")
        snap = self.snapshot()
        if snap.flag.canary is None:
            raise FailedPrecondition("canary: no canary variant configured")
        if snap.state.kill_switch:
            raise FailedPrecondition("kill_switch: is on; turn it off before a rollout")
        if snap.state.rollout is not None and snap.state.rollout.phase.active:
            raise FailedPrecondition("rollout: one is already running; abort it first")
        now = self._clock()
        baseline = setup.baseline(snap.flag.stable, now)
        progress = RolloutProgress(
            stages=stages,
            phase=Phase.RUNNING,
            stage_index=0,
            started_unix=now,
            stage_started_unix=now,
            baseline=baseline,
            message="started",
            forced=tuple(skips),
        )
        weights = all_traffic_to(snap.state.weights, snap.flag.stable)
        log.info("rollout.baseline", requests=baseline.requests, error_rate=baseline.error_rate)
        return await self.apply(
            principal=principal,
            method="StartRollout",
            reason=reason + (f" [FORCED, skips: {'; '.join(skips)}]" if skips else ""),
            expected_revision=expected_revision,
            mutate=lambda s: s.evolve(rollout=progress, weights=weights),
        )

    def _plan(self, stages: tuple[Stage, ...], force: bool) -> tuple[tuple[Stage, ...], list[str]]:
        """The plan to run (the default ladder fitted to the setup when none is given)
        and the stages it skips; InvalidRequest / FailedPrecondition when refused."""
        setup = self._rollouts
        stages = stages or tuple(
            replace(s, ab_gate=s.ab_gate and setup.has_experiment)
            for s in DEFAULT_PLAN
            if setup.has_shadow or s.kind is not StageKind.SHADOW
        )
        try:
            skips = validate_plan(
                stages, has_shadow=setup.has_shadow, has_experiment=setup.has_experiment
            )
        except PlanError as exc:
            raise InvalidRequest(f"{exc.field}: {exc.message}") from None
        if skips and not force:
            raise FailedPrecondition(
                "plan skips stages: " + "; ".join(skips) + ". Pass force with a reason to do it"
            )
        return stages, skips

    async def pause_rollout(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        self.check_reason(reason)
        now = self._clock()

        def mutate(s: DesiredState) -> DesiredState:
            if s.rollout is None or s.rollout.phase is not Phase.RUNNING:
                raise FailedPrecondition("rollout: none is running")
            return s.evolve(
                rollout=s.rollout.evolve(phase=Phase.PAUSED, paused_at=now, message=reason)
            )

        return await self.apply(
            principal=principal,
            method="PauseRollout",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    async def resume_rollout(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        self.check_reason(reason)
        now = self._clock()

        def mutate(s: DesiredState) -> DesiredState:
            r = s.rollout
            if r is None or r.phase is not Phase.PAUSED:
                raise FailedPrecondition("rollout: none is paused")
            return s.evolve(
                rollout=r.evolve(
                    phase=Phase.RUNNING,
                    paused_seconds=r.paused_seconds + (now - r.paused_at),
                    paused_at=0.0,
                    message=reason,
                )
            )

        return await self.apply(
            principal=principal,
            method="ResumeRollout",
            reason=reason,
            expected_revision=expected_revision,
            mutate=mutate,
        )

    async def abort_rollout(self, principal: str, reason: str, expected_revision: int) -> Snapshot:
        self.check_reason(reason)
        snap = self.snapshot()
        if snap.state.rollout is None or not snap.state.rollout.phase.active:
            raise FailedPrecondition("rollout: none is running or paused")
        return await self.rollback(principal, reason, expected_revision, end_rollout=Phase.ABORTED)


@dataclass(frozen=True)
class OverridePage:
    """One page of user overrides: (targeting key, variant) in key order, how many match
    the prefix, whether more follow, and the revision it was read from."""

    items: tuple[tuple[str, str], ...]
    total: int
    more: bool
    revision: int


async def _outlive_cancellation(commit: asyncio.Future[None]) -> bool:
    """Wait for `commit` to end even when the caller is cancelled meanwhile (a client that
    goes away mid-write), so that what is served always follows what is stored: a commit
    under way is never abandoned. Returns whether the caller was cancelled; raises the
    commit's error."""
    cancelled = False
    while not commit.done():
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            cancelled = True
    commit.result()
    return cancelled


def _no_baseline(variant: str, now: float) -> Baseline:
    return Baseline()


@dataclass(frozen=True)
class RolloutSetup:
    """What starting a rollout needs besides the state, from the composition root: is a
    shadow variant configured, are outcome metrics (the A/B gate), and the stable's
    baseline at a time (`sidecar.app.rollout.stable_baseline`)."""

    has_shadow: bool = False
    has_experiment: bool = False
    baseline: Callable[[str, float], Baseline] = _no_baseline


def rules_elsewhere(s: DesiredState) -> bool:
    """Whether a user override or segment rule in force sends requests off the stable
    variant (a rollback has something to take away even with every weight on stable)."""
    if s.rules_suspended:
        return False
    if any(r.variant != s.stable for r in s.segment_rules):
        return True
    return any(v != s.stable for v in Overrides.of(s.user_overrides).as_dict().values())


def all_traffic_to(weights: Mapping[str, int], variant: str) -> dict[str, int]:
    """Weights giving `variant` 100% and every other variant 0."""
    return {name: 0 for name in weights} | {variant: BASIS_POINTS}


def _swap_roles(s: DesiredState, record: Promotion) -> DesiredState:
    """Blue-green switch: `record.to_variant` becomes stable with all traffic; the old
    stable stays configured (warm) in the canary slot at 0%."""
    new_stable = record.to_variant
    return s.evolve(
        stable=new_stable,
        canary=s.stable,
        default=new_stable,
        weights=all_traffic_to(s.weights, new_stable),
        promotions=(*s.promotions, record),
    )


def _held_full(state: DesiredState, now: float) -> dict[str, float]:
    """Non-stable variants at 100%, with since when (kept from the previous state)."""
    full = [v for v, w in state.weights.items() if w == BASIS_POINTS and v != state.stable]
    return {v: state.held_full_since.get(v, now) for v in full}


def describe(snapshot: Snapshot) -> dict[str, Any]:
    """A log-friendly summary of a snapshot."""
    s = snapshot.state
    return {
        "revision": s.revision,
        "stable": s.stable,
        "canary": s.canary,
        "weights": dict(s.weights),
        "kill_switch": s.kill_switch,
        "rules_suspended": s.rules_suspended,
        "safe_mode": snapshot.safe_mode,
    }

"""sidecar.v1.Control servicer: translate, await one application call.

Authentication and roles are `auth.AuthInterceptor`'s (one method -> role table); a
method reads its caller with `current_principal()`.

Every answer fits the message limit by construction (`sidecar.core.limits`): a State lists
the first user overrides and the newest promotions with their counts, free texts are
clipped with a marker, and paged lists (audit, overrides) stop before the byte budget
(`server.max_message_bytes` minus headroom) as well as at their page size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence

import grpc

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.adapters.grpc.auth import current_principal
from sidecar.adapters.grpc.errors import abort
from sidecar.adapters.grpc.flag_converters import flag_state, segment_rule_from_proto
from sidecar.adapters.grpc.report import (
    drift_report,
    experiment_report,
    fit_experiment_report,
    fit_shadow_report,
    shadow_report,
)
from sidecar.app.control import ControlService
from sidecar.app.experiment import Insights
from sidecar.app.ports import AuditEntry, Fleet
from sidecar.app.rollout import RolloutController, run_drill
from sidecar.app.state import Snapshot
from sidecar.config import Config
from sidecar.core.gates import GateStatus
from sidecar.core.limits import (
    CONTROL_LIMITS,
    ControlLimits,
    check_count,
    check_text,
    clip,
    excerpt,
    utf8_len,
)
from sidecar.core.rollout import Stage, StageKind
from sidecar.errors import InvalidRequest

Context = grpc.aio.ServicerContext[object, object]
#: Request metadata a Control write may carry: wait up to this many seconds for the fleet.
FLEET_WAIT_HEADER = "x-fleet-wait-seconds"
FLEET_WAIT_MAX = 300.0
#: GetState's fleet counts do not wait longer than this for Redis (a warning instead).
FLEET_READ_TIMEOUT = 1.0
#: Bytes a repeated field's entry adds besides its own size (tag and length prefix).
_FRAMING = 6


def fleet_wait_seconds(metadata: Iterable[tuple[str, str | bytes]]) -> float | None:
    """The `x-fleet-wait-seconds` header's value (None: absent); InvalidRequest unless a
    finite number in (0, FLEET_WAIT_MAX]."""
    values = [v for k, v in metadata if k == FLEET_WAIT_HEADER]
    if not values:
        return None
    raw = values[-1]
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    try:
        seconds = float(text[:32])
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= FLEET_WAIT_MAX):  # NaN and infinity fail this too
        raise InvalidRequest(
            f"{FLEET_WAIT_HEADER}: must be a number of seconds in (0, {FLEET_WAIT_MAX:g}]"
        )
    return seconds


def answer_budget(max_message_bytes: int, limits: ControlLimits = CONTROL_LIMITS) -> int:
    """The bytes a paged list may fill in one answer of at most `max_message_bytes`."""
    return max(max_message_bytes // 2, max_message_bytes - limits.answer_headroom_bytes)


def first_overrides(
    overrides: Mapping[str, str], shown: int, first_keys: list[str] | None = None
) -> dict[str, str]:
    """The first `shown` user overrides by targeting key: `first_keys` when the caller
    has them in order, else a linear-time selection (about 13 ms at 100,000)."""
    keys = first_keys[:shown] if first_keys is not None else heapq.nsmallest(shown, overrides)
    return {k: overrides[k] for k in keys}


def state_message(
    snapshot: Snapshot,
    config: Config,
    served: Mapping[str, int],
    limits: ControlLimits = CONTROL_LIMITS,
    first_keys: list[str] | None = None,
) -> cpb.State:
    """The State answer, bounded: the first user overrides, the newest promotions, free
    texts clipped (`limits`); counts say how many there are."""
    flag, s = snapshot.flag, snapshot.state
    shadow = config.shadow
    text = limits.shown_text_bytes
    shown = first_overrides(s.user_overrides, limits.state_overrides_shown, first_keys)
    promotions = s.promotions[-limits.state_promotions_shown :]
    return cpb.State(
        model=config.model,
        variants=[
            cpb.Variant(
                name=v.name,
                address=v.address,
                model_name=v.model_name,
                model_version=v.model_version,
                served=served.get(v.name, 0),
            )
            for v in config.variants.values()
        ],
        flag=flag_state(
            flag, clip(s.kill_switch_reason, text), shown, clip(s.rules_suspended_reason, text)
        ),
        shadow=cpb.ShadowSettings(
            variant=shadow.variant,
            sample_bp=shadow.sample_bp,
            max_in_flight=shadow.max_in_flight,
            deadline_seconds=shadow.deadline,
            comparator=shadow.comparator,
        )
        if shadow
        else None,
        revision=s.revision,
        updated_unix_time=s.updated_unix_time,
        updated_by=s.updated_by,
        update_reason=clip(s.update_reason, text),
        promotions=[
            cpb.Promotion(
                unix_time=p.unix_time,
                principal=p.principal,
                from_variant=p.from_variant,
                to_variant=p.to_variant,
                reason=clip(p.reason, text),
                reverted=p.reverted,
            )
            for p in promotions
        ],
        promotion_count=len(s.promotions),
        safe_mode=snapshot.safe_mode,
    )


def fit_state(message: cpb.State, budget: int) -> cpb.State:
    """`message` within `budget` bytes: a worst-case State (long texts everywhere) is about
    350 KiB, so only a small `server.max_message_bytes` gets here; then the listed
    promotions, and if need be the listed overrides, are left out (counts stay)."""
    if message.ByteSize() <= budget:
        return message
    del message.promotions[:]
    if message.ByteSize() > budget:
        message.flag.user_overrides.clear()
    message.warnings.append(
        "promotions and user overrides are not listed: the answer would exceed the message "
        "limit (server.max_message_bytes); see ListUserOverrides"
    )
    return message


def audit_entry_message(entry: AuditEntry, max_bytes: int, text_bytes: int) -> cpb.AuditEntry:
    """One audit entry in at most about `max_bytes`: a longer reason or diff is clipped
    (the diff to `{"truncated": "<its start>…[truncated]"}`) and `truncated` set."""
    reason = clip(entry.reason, text_bytes)
    message = cpb.AuditEntry(
        unix_time=entry.unix_time,
        principal=clip(entry.principal, text_bytes),
        method=clip(entry.method, text_bytes),
        reason=reason,
        revision_before=entry.revision_before,
        revision_after=entry.revision_after,
        truncated=reason != entry.reason,
    )
    diff_json = json.dumps(dict(entry.diff), sort_keys=True)
    room = max_bytes - message.ByteSize() - _FRAMING
    if utf8_len(diff_json) > room:
        head = max(0, room // 2)
        while True:
            clipped = json.dumps({"truncated": clip(diff_json, head)}, ensure_ascii=False)
            if utf8_len(clipped) <= room or head == 0:
                break
            head //= 2
        diff_json = clipped
        message.truncated = True
    message.diff_json = diff_json
    return message


def fitted_count(messages: Sequence[cpb.UserOverride], budget: int) -> int:
    """How many of `messages`, from the first, fit in `budget` bytes together (at least
    one when there is one)."""
    used = 0
    for n, message in enumerate(messages):
        used += message.ByteSize() + _FRAMING
        if n and used > budget:
            return n
    return len(messages)


def encode_page_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii")


def decode_page_token(token: str) -> str:
    try:
        key = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        if encode_page_token(key.decode("utf-8")) == token:
            return key.decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        pass
    raise InvalidRequest("page_token: not a token this server gave out")


_KINDS = {
    StageKind.SHADOW: cpb.STAGE_KIND_SHADOW,
    StageKind.CANARY: cpb.STAGE_KIND_CANARY,
    StageKind.PROMOTE: cpb.STAGE_KIND_PROMOTE,
}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}
_GATES = {
    GateStatus.PASS: cpb.GATE_PASS,
    GateStatus.FAIL: cpb.GATE_FAIL,
    GateStatus.WAIT: cpb.GATE_WAIT,
}


def stages_from_proto(plan: cpb.RolloutPlan) -> tuple[Stage, ...]:
    out = []
    for i, stage in enumerate(plan.stages):
        kind = _KINDS_BACK.get(stage.kind)
        if kind is None:
            raise InvalidRequest(f"plan.stages[{i}].kind: must be SHADOW, CANARY or PROMOTE")
        out.append(
            Stage(
                stage.name,
                kind,
                stage.canary_bp,
                stage.min_duration_seconds,
                stage.min_samples,
                stage.ab_gate,
                stage.max_drift_psi,
                stage.progress_deadline_seconds,
            )
        )
    return tuple(out)


def rollout_message(snapshot: Snapshot, controller: RolloutController, now: float) -> cpb.Rollout:
    r = snapshot.state.rollout
    if r is None:
        return cpb.Rollout(
            phase="NONE", revision=snapshot.revision, verdict=controller.last_verdict
        )
    stage = r.stage
    active = r.phase.active
    return cpb.Rollout(
        phase=r.phase.value,
        plan=cpb.RolloutPlan(
            stages=[
                cpb.RolloutStage(
                    name=s.name,
                    kind=_KINDS[s.kind],
                    canary_bp=s.canary_bp,
                    min_duration_seconds=s.min_duration_s,
                    min_samples=s.min_samples,
                    ab_gate=s.ab_gate,
                    max_drift_psi=s.max_drift_psi,
                    progress_deadline_seconds=s.progress_deadline_s,
                )
                for s in r.stages
            ]
        ),
        stage_index=r.stage_index,
        stage_name=stage.name if stage else "",
        started_unix_time=r.started_unix,
        stage_started_unix_time=r.stage_started_unix,
        stage_elapsed_seconds=r.elapsed(now) if active else 0.0,
        stage_samples=controller.stage_samples if active else 0,
        gates=[
            cpb.Gate(
                name=g.name,
                status=_GATES[g.status],
                value=g.value,
                threshold=g.threshold,
                detail=g.detail,
            )
            for g in (controller.gates if active else ())
        ],
        verdict=clip(controller.last_verdict, CONTROL_LIMITS.shown_text_bytes),
        message=clip(r.message, CONTROL_LIMITS.shown_text_bytes),
        baseline_error_rate=r.baseline.error_rate,
        baseline_p50_seconds=r.baseline.p50_s,
        baseline_p95_seconds=r.baseline.p95_s,
        baseline_requests=r.baseline.requests,
        revision=snapshot.revision,
    )


class ControlServicer:
    def __init__(
        self,
        config: Config,
        service: ControlService,
        served: Callable[[], Mapping[str, int]],
        insights: Insights,
        controller: RolloutController,
        clock: Callable[[], float] = time.time,
        fleet: Fleet | None = None,
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.service = service
        self.controller = controller
        self._clock = clock
        self._served = served
        self.insights = insights
        self.limits = service.limits
        self._budget = answer_budget(config.server.max_message_bytes, self.limits)

    def _state(self, snapshot: Snapshot) -> cpb.State:
        first = self.service.first_override_keys(snapshot.state, self.limits.state_overrides_shown)
        message = state_message(snapshot, self.config, self._served(), self.limits, first)
        text = self.limits.shown_text_bytes
        warnings = [
            *self.controller.warnings(snapshot.state, self._clock()),
            *self.insights.warnings(),
        ]
        message.warnings.extend(clip(w, text) for w in warnings)
        return fit_state(message, self._budget)

    def _shadow_report(self) -> cpb.ShadowReport:
        read = self.insights.shadow_analysis()
        report = shadow_report(*read) if read is not None else cpb.ShadowReport()
        return fit_shadow_report(report, self._budget, self.limits)

    async def _rollout_write(
        self, context: Context, call: Callable[[str], Awaitable[Snapshot]]
    ) -> cpb.Rollout:
        """Run `call` with the caller's name; errors become the call's status."""
        try:
            snapshot = await call(current_principal().name)
        except Exception as exc:
            await abort(context, exc)
            raise
        return rollout_message(snapshot, self.controller, self._clock())

    async def StartRollout(self, request: cpb.StartRolloutRequest, context: Context) -> cpb.Rollout:
        async def start(who: str) -> Snapshot:
            stages = stages_from_proto(request.plan)
            return await self.service.start_rollout(
                who, request.reason, request.expected_revision, stages, request.force
            )

        return await self._rollout_write(context, start)

    async def PauseRollout(self, request: cpb.PauseRolloutRequest, context: Context) -> cpb.Rollout:
        return await self._rollout_write(
            context,
            lambda who: self.service.pause_rollout(who, request.reason, request.expected_revision),
        )

    async def ResumeRollout(
        self, request: cpb.ResumeRolloutRequest, context: Context
    ) -> cpb.Rollout:
        return await self._rollout_write(
            context,
            lambda who: self.service.resume_rollout(who, request.reason, request.expected_revision),
        )

    async def AbortRollout(self, request: cpb.AbortRolloutRequest, context: Context) -> cpb.Rollout:
        return await self._rollout_write(
            context,
            lambda who: self.service.abort_rollout(who, request.reason, request.expected_revision),
        )

    async def GetRollout(self, request: cpb.GetRolloutRequest, context: Context) -> cpb.Rollout:
        return rollout_message(self.service.snapshot(), self.controller, self._clock())

    async def RunDrill(self, request: cpb.RunDrillRequest, context: Context) -> cpb.DrillReport:
        try:
            self.service.check_reason(request.reason)
            result = await run_drill(self.controller, current_principal().name, request.reason)
        except Exception as exc:
            await abort(context, exc)
            raise
        return cpb.DrillReport(
            rolled_back=result.rolled_back,
            detection_seconds=result.detection_seconds,
            revert_seconds=result.revert_seconds,
            verdict_reason=result.verdict_reason,
            restored_revision=result.restored_revision,
        )

    async def _write(
        self, context: Context, call: Callable[[str], Awaitable[Snapshot]]
    ) -> cpb.State:
        """Run `call` with the caller's name; errors become the call's status. With the
        `x-fleet-wait-seconds` header, wait (bounded) until every live member has applied
        the new revision; the answer lists those that had not."""
        try:
            wait = fleet_wait_seconds(context.invocation_metadata() or ())
            snapshot = await call(current_principal().name)
        except Exception as exc:
            await abort(context, exc)
            raise
        message = self._state(snapshot)
        if wait is not None and self.fleet is not None:
            try:
                lagging = await self.fleet.wait_applied(snapshot.revision, wait)
            except OSError as exc:
                message.warnings.append(clip(f"fleet wait: {exc}", self.limits.shown_text_bytes))
            else:
                message.fleet_not_applied.extend(m.member_id for m in lagging)
            await self._fleet_counts(message)
        return message

    async def _fleet_counts(self, message: cpb.State) -> None:
        """Live members and how many hold `message.revision` (a warning when Redis is down)."""
        if self.fleet is None:
            return
        message.fleet = True
        try:
            members = await asyncio.wait_for(self.fleet.members(), FLEET_READ_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            problem = str(exc) or f"no answer from Redis within {FLEET_READ_TIMEOUT:g}s"
            message.warnings.append(clip(f"fleet: {problem}", self.limits.shown_text_bytes))
            return
        live = [m for m in members if m.live]
        message.fleet_members_live = len(live)
        message.fleet_members_applied = sum(m.applied_revision >= message.revision for m in live)

    async def GetState(self, request: cpb.GetStateRequest, context: Context) -> cpb.State:
        message = self._state(self.service.snapshot())
        await self._fleet_counts(message)
        return message

    async def ListFleetMembers(
        self, request: cpb.ListFleetMembersRequest, context: Context
    ) -> cpb.ListFleetMembersResponse:
        revision = self.service.snapshot().revision
        if self.fleet is None:
            return cpb.ListFleetMembersResponse(revision=revision)
        try:
            members = await self.fleet.members()
        except Exception as exc:
            await abort(context, exc)
            raise
        return cpb.ListFleetMembersResponse(
            fleet=self.config.state.redis.fleet,
            revision=revision,
            members=[
                cpb.FleetMember(
                    member_id=m.member_id,
                    host=m.host,
                    version=m.version,
                    applied_revision=m.applied_revision,
                    lag=max(0, revision - m.applied_revision),
                    ready=m.ready,
                    last_seen_unix_time=m.last_seen_unix,
                    live=m.live,
                    control_address=m.control_address,
                )
                for m in members[: self.limits.fleet_members_listed]
            ],
        )

    async def WatchState(
        self, request: cpb.WatchStateRequest, context: Context
    ) -> AsyncIterator[cpb.State]:
        queue = self.service.holder.watch()
        try:
            while True:
                yield self._state(await queue.get())
        finally:
            self.service.holder.unwatch(queue)

    async def SetWeights(self, request: cpb.SetWeightsRequest, context: Context) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.set_weights(
                who, request.reason, request.expected_revision, dict(request.weights)
            ),
        )

    async def SetKillSwitch(self, request: cpb.SetKillSwitchRequest, context: Context) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.set_kill_switch(
                who, request.reason, request.expected_revision, request.on
            ),
        )

    async def SetUserOverride(
        self, request: cpb.SetUserOverrideRequest, context: Context
    ) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.set_user_override(
                who,
                request.reason,
                request.expected_revision,
                request.targeting_key,
                request.variant,
            ),
        )

    async def ClearUserOverride(
        self, request: cpb.ClearUserOverrideRequest, context: Context
    ) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.clear_user_override(
                who, request.reason, request.expected_revision, request.targeting_key
            ),
        )

    async def SetSegmentRule(
        self, request: cpb.SetSegmentRuleRequest, context: Context
    ) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.set_segment_rule(
                who, request.reason, request.expected_revision, segment_rule_from_proto(request)
            ),
        )

    async def ClearSegmentRule(
        self, request: cpb.ClearSegmentRuleRequest, context: Context
    ) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.clear_segment_rule(
                who, request.reason, request.expected_revision, request.segment
            ),
        )

    async def Promote(self, request: cpb.PromoteRequest, context: Context) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.promote(who, request.reason, request.expected_revision),
        )

    async def Rollback(self, request: cpb.RollbackRequest, context: Context) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.rollback(who, request.reason, request.expected_revision),
        )

    async def RestoreRules(self, request: cpb.RestoreRulesRequest, context: Context) -> cpb.State:
        return await self._write(
            context,
            lambda who: self.service.restore_rules(who, request.reason, request.expected_revision),
        )

    async def GetAuditLog(
        self, request: cpb.GetAuditLogRequest, context: Context
    ) -> cpb.GetAuditLogResponse:
        limits = self.limits
        try:
            size = request.page_size or limits.audit_page_default
            if not 0 < size <= limits.audit_page:
                raise InvalidRequest(
                    f"page_size: must be within 1..{limits.audit_page}, got {size}"
                )
            token = request.page_token or "0"
            if len(token) > 20 or not token.isdigit():
                raise InvalidRequest("page_token: not a token this server gave out")
            start = int(token)
            entries, total = self.service.audit_page(start, size, self._budget)
        except Exception as exc:
            await abort(context, exc)
            raise
        budget, used = self._budget, 0
        text = min(limits.shown_text_bytes, budget // 4)
        messages: list[cpb.AuditEntry] = []
        for entry in entries:  # built one by one: the page stops at the first misfit
            message = audit_entry_message(entry, budget, text)
            used += message.ByteSize() + _FRAMING
            if messages and used > budget:
                break
            messages.append(message)
        end = start + len(messages)
        return cpb.GetAuditLogResponse(
            entries=messages,
            next_page_token=str(end) if end < total else "",
            total=total,
        )

    async def ListUserOverrides(
        self, request: cpb.ListUserOverridesRequest, context: Context
    ) -> cpb.ListUserOverridesResponse:
        limits = self.limits
        try:
            size = request.page_size or limits.overrides_page_default
            if not 0 < size <= limits.overrides_page:
                raise InvalidRequest(
                    f"page_size: must be within 1..{limits.overrides_page}, got {size}"
                )
            ControlService.check_input(
                lambda: check_text("page_token", request.page_token, limits.page_token_bytes)
            )
            after = decode_page_token(request.page_token) if request.page_token else ""
            page = self.service.override_page(request.prefix, after, size)
        except Exception as exc:
            await abort(context, exc)
            raise
        messages = [cpb.UserOverride(targeting_key=k, variant=v) for k, v in page.items]
        fitted = fitted_count(messages, self._budget)
        more = page.more or fitted < len(messages)
        return cpb.ListUserOverridesResponse(
            overrides=messages[:fitted],
            next_page_token=encode_page_token(messages[fitted - 1].targeting_key)
            if more and fitted
            else "",
            total=page.total,
            revision=page.revision,
        )

    async def GetShadowReport(
        self, request: cpb.GetShadowReportRequest, context: Context
    ) -> cpb.ShadowReport:
        return self._shadow_report()

    async def GetExperimentReport(
        self, request: cpb.GetExperimentReportRequest, context: Context
    ) -> cpb.ExperimentReport:
        limits = self.limits
        try:
            ControlService.check_input(
                lambda: check_count("metrics", len(request.metrics), limits.report_metrics)
            )
            known = [m.name for m in self.insights.experiment.tracker.settings.metrics]
            unknown = sorted(set(request.metrics) - set(known))
            if unknown:
                raise InvalidRequest(
                    f"metrics: unknown metric(s) {', '.join(map(excerpt, unknown[:5]))}"
                    f"{' and more' if len(unknown) > 5 else ''}; "
                    f"configured: {', '.join(known) or 'none'}"
                )
            result = self.insights.experiment.report(
                tuple(request.metrics), history=not request.omit_history
            )
            monitor = self.insights.drift_report()
            drift = (
                drift_report(monitor.drift, monitor.sampled, monitor.dropped)
                if monitor is not None
                else drift_report(None)
            )
            report = experiment_report(
                result,
                revision=self.service.snapshot().revision,
                shadow=self._shadow_report(),
                drift=drift,
            )
            report.model = self.config.model
            return fit_experiment_report(report, self._budget)
        except Exception as exc:
            await abort(context, exc)
            raise

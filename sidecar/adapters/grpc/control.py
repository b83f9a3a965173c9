"""sidecar.v1.Control servicer: translate, await one application call.

Authentication and roles are `auth.AuthInterceptor`'s (one method -> role table); a
method reads its caller with `current_principal()`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import grpc

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.adapters.grpc.auth import current_principal
from sidecar.adapters.grpc.errors import abort
from sidecar.adapters.grpc.flag_converters import flag_state, segment_rule_from_proto
from sidecar.adapters.grpc.report import drift_report, experiment_report, shadow_report
from sidecar.app.control import ControlService
from sidecar.app.experiment import Insights
from sidecar.app.rollout import RolloutController, run_drill
from sidecar.app.state import Snapshot
from sidecar.config import Config
from sidecar.core.gates import GateStatus
from sidecar.core.rollout import Stage, StageKind
from sidecar.errors import InvalidRequest

Context = grpc.aio.ServicerContext[object, object]
MAX_PAGE = 1000


def state_message(snapshot: Snapshot, config: Config, served: Mapping[str, int]) -> cpb.State:
    flag, s = snapshot.flag, snapshot.state
    shadow = config.shadow
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
        flag=flag_state(flag, s.kill_switch_reason),
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
        update_reason=s.update_reason,
        promotions=[
            cpb.Promotion(
                unix_time=p.unix_time,
                principal=p.principal,
                from_variant=p.from_variant,
                to_variant=p.to_variant,
                reason=p.reason,
                reverted=p.reverted,
            )
            for p in s.promotions
        ],
        safe_mode=snapshot.safe_mode,
    )


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
        verdict=controller.last_verdict,
        message=r.message,
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
    ) -> None:
        self.config = config
        self.service = service
        self.controller = controller
        self._clock = clock
        self._served = served
        self.insights = insights

    def _state(self, snapshot: Snapshot) -> cpb.State:
        message = state_message(snapshot, self.config, self._served())
        message.warnings.extend(self.controller.warnings(snapshot.state, self._clock()))
        message.warnings.extend(self.insights.warnings())
        return message

    def _shadow_report(self) -> cpb.ShadowReport:
        read = self.insights.shadow_analysis()
        return shadow_report(*read) if read is not None else cpb.ShadowReport()

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
        """Run `call` with the caller's name; errors become the call's status."""
        try:
            snapshot = await call(current_principal().name)
        except Exception as exc:
            await abort(context, exc)
            raise
        return self._state(snapshot)

    async def GetState(self, request: cpb.GetStateRequest, context: Context) -> cpb.State:
        return self._state(self.service.snapshot())

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

    async def GetAuditLog(
        self, request: cpb.GetAuditLogRequest, context: Context
    ) -> cpb.GetAuditLogResponse:
        try:
            size = request.page_size or 50
            if not 0 < size <= MAX_PAGE:
                raise InvalidRequest(f"page_size: must be within 1..{MAX_PAGE}, got {size}")
            token = request.page_token or "0"
            if not token.isdigit():
                raise InvalidRequest("page_token: not a token this server gave out")
            start = int(token)
            entries, total = self.service.audit_page(start, size)
        except Exception as exc:
            await abort(context, exc)
            raise
        end = start + len(entries)
        return cpb.GetAuditLogResponse(
            entries=[
                cpb.AuditEntry(
                    unix_time=e.unix_time,
                    principal=e.principal,
                    method=e.method,
                    reason=e.reason,
                    revision_before=e.revision_before,
                    revision_after=e.revision_after,
                    diff_json=json.dumps(dict(e.diff), sort_keys=True),
                )
                for e in entries
            ],
            next_page_token=str(end) if end < total else "",
            total=total,
        )

    async def GetShadowReport(
        self, request: cpb.GetShadowReportRequest, context: Context
    ) -> cpb.ShadowReport:
        return self._shadow_report()

    async def GetExperimentReport(
        self, request: cpb.GetExperimentReportRequest, context: Context
    ) -> cpb.ExperimentReport:
        try:
            known = [m.name for m in self.insights.experiment.tracker.settings.metrics]
            unknown = sorted(set(request.metrics) - set(known))
            if unknown:
                raise InvalidRequest(
                    f"metrics: unknown metric(s) {', '.join(map(repr, unknown))}; "
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
            return experiment_report(
                result,
                revision=self.service.snapshot().revision,
                shadow=self._shadow_report(),
                drift=drift,
            )
        except Exception as exc:
            await abort(context, exc)
            raise

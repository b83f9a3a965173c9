"""Operator client for the sidecar's Control API (`sidecar.v1.Control`).

    from clients.control import ControlClient
    from clients.render_text import render_state
    with ControlClient("127.0.0.1:8501", token=token) as control:
        state = control.get_state()
        print(render_state(state))
        state = control.set_weights({"stable": 9500, "canary": 500}, reason="canary 5%",
                                    expected_revision=state.revision)

Experiments: `experiment_report` returns the A/B report (sample-ratio check, anytime-valid
verdict per metric, segments, shadow, drift); print it with
`clients.render_text.render_experiment`, or as a self-contained HTML page with plots with
`clients.report_html.render_html` (needs the `report` extra: matplotlib).

User overrides: a State lists only the first ones (`flag.user_override_count` counts them
all); `list_user_overrides` pages through them (by targeting key, optionally by prefix),
`iter_user_overrides` follows the pages to the end.

Rollouts: `start_rollout` (the server's default plan, or a `RolloutPlan`), `pause_rollout`,
`resume_rollout`, `abort_rollout`, `get_rollout` (print it with `render_rollout`), and
`run_drill` to rehearse an automatic rollback.

Several routed models: every call addresses one, named by `model` (sent as the `x-model`
header; None: the sidecar's primary model); `list_models` lists them.

Every call carries `authorization: Bearer <token>` when a token is set. Server refusals and
transport failures are raised as `ControlError(code, message)` (code is the gRPC status
name, e.g. "ABORTED" for a stale `expected_revision`). This module is the client only: the
protos as JSON-ready dicts are in `clients.views`, as tables in `clients.render_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc

__all__ = [
    "UNREACHABLE_CODES",
    "ControlClient",
    "ControlError",
    "StateWatch",
]

_M = TypeVar("_M", bound=Message)

#: Status codes meaning "the sidecar could not be reached" rather than "it said no".
UNREACHABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


class ControlError(Exception):
    """A Control call failed: `code` is the gRPC status name, `message` the server's details."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def unreachable(self) -> bool:
        """True when the sidecar could not be reached (as opposed to refusing the call)."""
        return self.code in UNREACHABLE_CODES


def _control_error(exc: grpc.RpcError) -> ControlError:
    if isinstance(exc, grpc.Call):
        code = exc.code()
        name = code.name if code is not None else "UNKNOWN"
        return ControlError(name, exc.details() or "")
    return ControlError("UNKNOWN", str(exc))


class StateWatch(Iterator[cpb.State]):
    """The stream of a WatchState call: iterate for states; `cancel()` ends it cleanly.

    Iteration stops when the server ends the stream or after `cancel()` (from any thread);
    other failures are raised as `ControlError`. Also a context manager that cancels on exit.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> StateWatch:
        return self

    def __next__(self) -> cpb.State:
        try:
            state = next(self._call)
        except grpc.RpcError as exc:
            error = _control_error(exc)
            if self._cancelled and error.code == "CANCELLED":
                raise StopIteration from None
            raise error from exc
        if not isinstance(state, cpb.State):
            raise TypeError(f"WatchState yielded {type(state).__name__}, expected State")
        return state

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> StateWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class ControlClient:
    """Blocking client for `sidecar.v1.Control` over one channel; safe to share between threads.

    TLS: `ca_file` (PEM roots to verify the sidecar; system roots when omitted) and, for
    mTLS, `cert_file` + `key_file` (the client certificate). Any of them switches to a TLS
    channel; with none the channel is plaintext (the control port listens on loopback by
    default). Raises `OSError` if a file cannot be read, `ValueError` for a lone cert/key.
    `max_receive_bytes` bounds an answer (the sidecar keeps its answers within its own
    `server.max_message_bytes`; this only needs to be at least that).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        timeout: float = 5.0,
        max_receive_bytes: int = 64 * 1024 * 1024,
        model: str | None = None,
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        self.target = target
        self.timeout = timeout
        #: Seconds a routing write waits for every live fleet member to apply it (the
        #: `x-fleet-wait-seconds` header; None: answered once stored). `State.
        #: fleet_not_applied` lists the members that had not when the wait ended.
        self.fleet_wait: float | None = None
        #: The routed model every call addresses (`x-model`; None: the primary).
        self.model = model
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        ) + ((("x-model", model),) if model else ())
        options = [("grpc.max_receive_message_length", max_receive_bytes)]
        if ca_file is not None or cert_file is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file),
                private_key=_read(key_file),
                certificate_chain=_read(cert_file),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = cpb_grpc.ControlStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------

    def _unary(self, rpc: Callable[..., Any], request: Message, response_type: type[_M]) -> _M:
        metadata, timeout = self._metadata, self.timeout
        if self.fleet_wait is not None:
            metadata = (*metadata, ("x-fleet-wait-seconds", f"{self.fleet_wait:g}"))
            timeout += self.fleet_wait
        try:
            response = rpc(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise _control_error(exc) from exc
        if not isinstance(response, response_type):
            raise TypeError(f"expected {response_type.__name__}, got {type(response).__name__}")
        return response

    # -- reads ----------------------------------------------------------------------------

    def get_state(self) -> cpb.State:
        """The routing state in force."""
        return self._unary(self._stub.GetState, cpb.GetStateRequest(), cpb.State)

    def fleet_members(self) -> cpb.ListFleetMembersResponse:
        """The fleet's members with their applied revision, lag and readiness."""
        return self._unary(
            self._stub.ListFleetMembers,
            cpb.ListFleetMembersRequest(),
            cpb.ListFleetMembersResponse,
        )

    def list_models(self) -> cpb.ListModelsResponse:
        """Every routed model of the sidecar with its flag in force (the primary first)."""
        return self._unary(self._stub.ListModels, cpb.ListModelsRequest(), cpb.ListModelsResponse)

    def watch_state(self) -> StateWatch:
        """The current state, then every change (no deadline; `cancel()` the watch to stop)."""
        call = self._stub.WatchState(cpb.WatchStateRequest(), metadata=self._metadata)
        return StateWatch(call)

    def audit_log(self, page_size: int = 50, page_token: str = "") -> cpb.GetAuditLogResponse:
        """One page of the audit log, oldest first."""
        request = cpb.GetAuditLogRequest(page_size=page_size, page_token=page_token)
        return self._unary(self._stub.GetAuditLog, request, cpb.GetAuditLogResponse)

    def iter_audit(self, page_size: int = 200) -> Iterator[cpb.AuditEntry]:
        """Every audit entry, oldest first, following page tokens to the end."""
        token = ""
        seen: set[str] = set()
        while True:
            page = self.audit_log(page_size=page_size, page_token=token)
            yield from page.entries
            token = page.next_page_token
            if not token or token in seen:  # a repeated token would loop forever
                return
            seen.add(token)

    def list_user_overrides(
        self, page_size: int = 0, page_token: str = "", prefix: str = ""
    ) -> cpb.ListUserOverridesResponse:
        """One page of user overrides in targeting-key order (page_size 0: the server's
        default, 100); `prefix` keeps only keys starting with it."""
        request = cpb.ListUserOverridesRequest(
            page_size=page_size, page_token=page_token, prefix=prefix
        )
        return self._unary(self._stub.ListUserOverrides, request, cpb.ListUserOverridesResponse)

    def iter_user_overrides(
        self, prefix: str = "", page_size: int = 1000
    ) -> Iterator[cpb.UserOverride]:
        """Every user override (with `prefix`), in key order, following page tokens."""
        token = ""
        seen: set[str] = set()
        while True:
            page = self.list_user_overrides(page_size=page_size, page_token=token, prefix=prefix)
            yield from page.overrides
            token = page.next_page_token
            if not token or token in seen:  # a repeated token would loop forever
                return
            seen.add(token)

    def shadow_report(self) -> cpb.ShadowReport:
        """What the shadow comparison has recorded so far."""
        return self._unary(
            self._stub.GetShadowReport, cpb.GetShadowReportRequest(), cpb.ShadowReport
        )

    def experiment_report(
        self, metrics: Sequence[str] = (), omit_history: bool = False
    ) -> cpb.ExperimentReport:
        """The experiment between stable (A) and canary (B): SRM check, anytime-valid verdict
        per metric, segments, shadow and drift. `metrics` limits it to those metrics (empty:
        all configured); `omit_history` leaves out the per-look history (a smaller answer)."""
        request = cpb.GetExperimentReportRequest(metrics=list(metrics), omit_history=omit_history)
        return self._unary(self._stub.GetExperimentReport, request, cpb.ExperimentReport)

    # -- writes (each returns the new State) ----------------------------------------------

    def set_weights(
        self, weights: Mapping[str, int], *, reason: str, expected_revision: int = 0
    ) -> cpb.State:
        """Set variant weights in basis points (summing to 10,000)."""
        request = cpb.SetWeightsRequest(
            reason=reason, expected_revision=expected_revision, weights=dict(weights)
        )
        return self._unary(self._stub.SetWeights, request, cpb.State)

    def set_kill_switch(self, on: bool, *, reason: str, expected_revision: int = 0) -> cpb.State:
        """Kill switch on: every request goes to the stable variant from the next request on."""
        request = cpb.SetKillSwitchRequest(
            reason=reason, expected_revision=expected_revision, on=on
        )
        return self._unary(self._stub.SetKillSwitch, request, cpb.State)

    def set_user_override(
        self, targeting_key: str, variant: str, *, reason: str, expected_revision: int = 0
    ) -> cpb.State:
        """Pin one targeting key to a variant."""
        request = cpb.SetUserOverrideRequest(
            reason=reason,
            expected_revision=expected_revision,
            targeting_key=targeting_key,
            variant=variant,
        )
        return self._unary(self._stub.SetUserOverride, request, cpb.State)

    def clear_user_override(
        self, targeting_key: str, *, reason: str, expected_revision: int = 0
    ) -> cpb.State:
        """Remove a targeting key's pin."""
        request = cpb.ClearUserOverrideRequest(
            reason=reason, expected_revision=expected_revision, targeting_key=targeting_key
        )
        return self._unary(self._stub.ClearUserOverride, request, cpb.State)

    def set_segment_rule(
        self, segment: str, variant: str, *, reason: str, expected_revision: int = 0
    ) -> cpb.State:
        """Route a whole segment to a variant."""
        request = cpb.SetSegmentRuleRequest(
            reason=reason, expected_revision=expected_revision, segment=segment, variant=variant
        )
        return self._unary(self._stub.SetSegmentRule, request, cpb.State)

    def clear_segment_rule(
        self, segment: str, *, reason: str, expected_revision: int = 0
    ) -> cpb.State:
        """Remove a segment's rule."""
        request = cpb.ClearSegmentRuleRequest(
            reason=reason, expected_revision=expected_revision, segment=segment
        )
        return self._unary(self._stub.ClearSegmentRule, request, cpb.State)

    def promote(self, *, reason: str, expected_revision: int = 0) -> cpb.State:
        """The canary becomes stable with all traffic; the old stable stays warm at weight 0."""
        request = cpb.PromoteRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.Promote, request, cpb.State)

    def rollback(self, *, reason: str, expected_revision: int = 0) -> cpb.State:
        """All traffic to stable, user overrides and segment rules suspended; with no canary
        traffic, revert the last promotion."""
        request = cpb.RollbackRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.Rollback, request, cpb.State)

    def restore_rules(self, *, reason: str, expected_revision: int = 0) -> cpb.State:
        """Apply the user overrides and segment rules a rollback suspended again."""
        request = cpb.RestoreRulesRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.RestoreRules, request, cpb.State)

    # -- rollouts (each write returns the Rollout after it) --------------------------------

    def get_rollout(self) -> cpb.Rollout:
        """The plan, the current stage, its gates with their current values, and progress."""
        return self._unary(self._stub.GetRollout, cpb.GetRolloutRequest(), cpb.Rollout)

    def start_rollout(
        self,
        *,
        reason: str,
        plan: cpb.RolloutPlan | None = None,
        force: bool = False,
        expected_revision: int = 0,
    ) -> cpb.Rollout:
        """Start a plan (None: the server's default plan); `force` allows skipping stages."""
        request = cpb.StartRolloutRequest(
            reason=reason, expected_revision=expected_revision, force=force
        )
        if plan is not None:
            request.plan.CopyFrom(plan)
        return self._unary(self._stub.StartRollout, request, cpb.Rollout)

    def pause_rollout(self, *, reason: str, expected_revision: int = 0) -> cpb.Rollout:
        """Hold at the current stage (paused time does not count towards its minimum)."""
        request = cpb.PauseRolloutRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.PauseRollout, request, cpb.Rollout)

    def resume_rollout(self, *, reason: str, expected_revision: int = 0) -> cpb.Rollout:
        """Continue a paused rollout from its current stage."""
        request = cpb.ResumeRolloutRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.ResumeRollout, request, cpb.Rollout)

    def abort_rollout(self, *, reason: str, expected_revision: int = 0) -> cpb.Rollout:
        """Stop the plan and send all traffic to stable (the Rollback path)."""
        request = cpb.AbortRolloutRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.AbortRollout, request, cpb.Rollout)

    def run_drill(self, *, reason: str) -> cpb.DrillReport:
        """Rehearse an automatic rollback end to end; the state is restored afterwards."""
        request = cpb.RunDrillRequest(reason=reason)
        return self._unary(self._stub.RunDrill, request, cpb.DrillReport)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

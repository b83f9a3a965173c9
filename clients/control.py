"""Operator client for the sidecar's Control API (`sidecar.v1.Control`).

    from clients.control import ControlClient, render_state
    with ControlClient("127.0.0.1:8501", token=token) as control:
        state = control.get_state()
        print(render_state(state))
        state = control.set_weights({"stable": 9500, "canary": 500}, reason="canary 5%",
                                    expected_revision=state.revision)

Experiments: `experiment_report` returns the A/B report (sample-ratio check, anytime-valid
verdict per metric, segments, shadow, drift); print it with `render_experiment`, or as a
self-contained HTML page with plots with `clients.report_html.render_html`.

Rollouts: `start_rollout` (the server's default plan, or a `RolloutPlan`), `pause_rollout`,
`resume_rollout`, `abort_rollout`, `get_rollout` (print it with `render_rollout`), and
`run_drill` to rehearse an automatic rollback.

Every call carries `authorization: Bearer <token>` when a token is set. Server refusals and
transport failures are raised as `ControlError(code, message)` (code is the gRPC status
name, e.g. "ABORTED" for a stale `expected_revision`). The `render_*` / `*_to_dict`
helpers are pure and format protos for people (tables) and for scripts (JSON-ready dicts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar._proto.sidecar.v1 import control_pb2_grpc as cpb_grpc

__all__ = [
    "ACTIVE_PHASES",
    "UNREACHABLE_CODES",
    "ControlClient",
    "ControlError",
    "StateWatch",
    "audit_entry_to_dict",
    "drill_to_dict",
    "estimate_to_dict",
    "experiment_to_dict",
    "format_percent",
    "gate_status_name",
    "metric_effect_text",
    "metric_to_dict",
    "metric_value_text",
    "p_value_text",
    "progress_bar",
    "recommendation_name",
    "recommendation_text",
    "render_audit",
    "render_drill",
    "render_experiment",
    "render_rollout",
    "render_shadow",
    "render_state",
    "rollout_to_dict",
    "shadow_to_dict",
    "stage_kind_name",
    "state_to_dict",
    "verdict_label",
    "verdict_name",
    "verdict_text",
]

_M = TypeVar("_M", bound=Message)

#: Status codes meaning "the sidecar could not be reached" rather than "it said no".
UNREACHABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})

_NONE = "—"


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
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        self.target = target
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if ca_file is not None or cert_file is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file),
                private_key=_read(key_file),
                certificate_chain=_read(cert_file),
            )
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = cpb_grpc.ControlStub(self._channel)

    # -- plumbing -------------------------------------------------------------------------

    def _unary(self, rpc: Callable[..., Any], request: Message, response_type: type[_M]) -> _M:
        try:
            response = rpc(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _control_error(exc) from exc
        if not isinstance(response, response_type):
            raise TypeError(f"expected {response_type.__name__}, got {type(response).__name__}")
        return response

    # -- reads ----------------------------------------------------------------------------

    def get_state(self) -> cpb.State:
        """The routing state in force."""
        return self._unary(self._stub.GetState, cpb.GetStateRequest(), cpb.State)

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
        """All traffic to stable; with no canary traffic, revert the last promotion."""
        request = cpb.RollbackRequest(reason=reason, expected_revision=expected_revision)
        return self._unary(self._stub.Rollback, request, cpb.State)

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


# ---------------------------------------------------------------------------------------
# Pure helpers: JSON-ready dicts and human-readable tables.
# ---------------------------------------------------------------------------------------


def format_percent(bp: int) -> str:
    """Basis points as a percentage without needless zeros: 500 -> "5%", 50 -> "0.5%"."""
    text = f"{bp / 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _iso(unix_time: float) -> str | None:
    if unix_time <= 0:
        return None
    return (
        datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def _when(unix_time: float) -> str:
    return _iso(unix_time) or _NONE


def _clean(text: str) -> str:
    """Text safe to print on a terminal: control characters shown as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _role(flag: cpb.FlagState, variant: str) -> str | None:
    if variant and variant == flag.stable_variant:
        return "stable"
    if variant and variant == flag.canary_variant:
        return "canary"
    return None


def _promotion_to_dict(p: cpb.Promotion) -> dict[str, Any]:
    return {
        "at": _iso(p.unix_time),
        "unix_time": p.unix_time,
        "principal": p.principal,
        "from_variant": p.from_variant,
        "to_variant": p.to_variant,
        "reason": p.reason,
        "reverted": p.reverted,
    }


def state_to_dict(state: cpb.State) -> dict[str, Any]:
    """The state as plain JSON-ready data (integers stay integers, times also as ISO 8601)."""
    flag = state.flag
    shadow: dict[str, Any] | None = None
    if state.HasField("shadow") and state.shadow.variant:
        shadow = {
            "variant": state.shadow.variant,
            "sample_bp": state.shadow.sample_bp,
            "max_in_flight": state.shadow.max_in_flight,
            "deadline_seconds": state.shadow.deadline_seconds,
            "comparator": state.shadow.comparator,
        }
    return {
        "model": state.model,
        "revision": state.revision,
        "updated_at": _iso(state.updated_unix_time),
        "updated_unix_time": state.updated_unix_time,
        "updated_by": state.updated_by,
        "update_reason": state.update_reason,
        "safe_mode": state.safe_mode,
        "flag_key": flag.key,
        "stable_variant": flag.stable_variant,
        "canary_variant": flag.canary_variant or None,
        "default_variant": flag.default_variant,
        "kill_switch": flag.kill_switch,
        "kill_switch_reason": flag.kill_switch_reason,
        "weights": dict(sorted(flag.weights.items())),
        "variants": [
            {
                "name": v.name,
                "role": _role(flag, v.name),
                "weight_bp": flag.weights.get(v.name, 0),
                "weight_percent": flag.weights.get(v.name, 0) / 100,
                "served": v.served,
                "address": v.address,
                "model_name": v.model_name,
                "model_version": v.model_version,
            }
            for v in state.variants
        ],
        "user_overrides": dict(sorted(flag.user_overrides.items())),
        "segment_rules": [{"segment": r.segment, "variant": r.variant} for r in flag.segment_rules],
        "segments": list(flag.segments),
        "shadow": shadow,
        "promotions": [_promotion_to_dict(p) for p in state.promotions],
        "warnings": list(state.warnings),
    }


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; `right` holds indexes of right-aligned columns."""
    grid = [list(headers), *([_clean(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(headers))]
    right_set = set(right)
    lines = []
    for row in grid:
        cells = [
            cell.rjust(widths[i]) if i in right_set else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _kill_switch_line(state: cpb.State) -> str:
    flag = state.flag
    if not flag.kill_switch:
        return "kill switch: off"
    reason = (
        f'reason "{_clean(flag.kill_switch_reason)}"' if flag.kill_switch_reason else "no reason"
    )
    stable = _clean(flag.stable_variant) or "?"
    return (
        f"KILL SWITCH: ON ({reason}): every request goes to stable {stable!r}; "
        "the weights, overrides and segment rules below are not in effect"
    )


def render_state(state: cpb.State) -> str:
    """A table an operator can scan: kill switch first, then variants, rules, last change."""
    flag = state.flag
    lines: list[str] = []
    if state.safe_mode:
        lines.append(
            "SAFE MODE: the state file was unreadable at start; serving stable only with the "
            "kill switch on until an operator writes a new state"
        )
    lines.append(_kill_switch_line(state))
    lines.extend(f"WARNING: {_clean(warning)}" for warning in state.warnings)
    lines.append(
        f"model {_clean(state.model) or _NONE}   flag {_clean(flag.key) or _NONE}   "
        f"default {_clean(flag.default_variant) or _NONE}   revision {state.revision}"
    )
    lines.append("")

    rows = []
    for v in state.variants:
        bp = flag.weights.get(v.name, 0)
        rows.append(
            [
                v.name,
                _role(flag, v.name) or _NONE,
                format_percent(bp),
                f"{bp} bp",
                str(v.served),
                v.address or _NONE,
                v.model_name or _NONE,
                v.model_version or _NONE,
            ]
        )
    known = {v.name for v in state.variants}
    for name, bp in sorted(flag.weights.items()):  # weights naming no listed variant
        if name not in known:
            rows.append(
                [name, _role(flag, name) or _NONE, format_percent(bp), f"{bp} bp"] + [_NONE] * 4
            )
    lines.append(
        _table(
            ["VARIANT", "ROLE", "WEIGHT", "BP", "SERVED", "ADDRESS", "MODEL", "VERSION"],
            rows,
            right=(2, 3, 4),
        )
    )
    lines.append("")

    if flag.user_overrides:
        lines.append("user overrides (targeting key -> variant):")
        lines.extend(
            f"  {_clean(key)} -> {_clean(variant)}"
            for key, variant in sorted(flag.user_overrides.items())
        )
    else:
        lines.append("user overrides: none")
    if flag.segment_rules:
        lines.append("segment rules (segment -> variant):")
        lines.extend(f"  {_clean(r.segment)} -> {_clean(r.variant)}" for r in flag.segment_rules)
    else:
        lines.append("segment rules: none")
    if flag.segments:
        lines.append(f"known segments: {', '.join(_clean(s) for s in flag.segments)}")

    shadow = state.shadow
    if state.HasField("shadow") and shadow.variant:
        lines.append(
            f"shadow: {_clean(shadow.variant)} gets a copy of {format_percent(shadow.sample_bp)} "
            f"({shadow.sample_bp} bp) of requests, at most {shadow.max_in_flight} in flight, "
            f"deadline {shadow.deadline_seconds:g}s, comparator {_clean(shadow.comparator)}"
        )
    else:
        lines.append("shadow: off")

    if state.promotions:
        lines.append("promotions (newest last):")
        for p in state.promotions[-3:]:
            verb = "reverted" if p.reverted else "promoted"
            lines.append(
                f"  {_when(p.unix_time)} {verb} {_clean(p.from_variant)} -> "
                f"{_clean(p.to_variant)} by {_clean(p.principal) or _NONE}: "
                f'"{_clean(p.reason)}"'
            )

    change = f"last change: revision {state.revision}"
    if state.updated_unix_time > 0 or state.updated_by:
        change += f" at {_when(state.updated_unix_time)} by {_clean(state.updated_by) or _NONE}"
    if state.update_reason:
        change += f': "{_clean(state.update_reason)}"'
    lines.append(change)
    return "\n".join(lines)


def _diff(diff_json: str) -> Any:
    try:
        return json.loads(diff_json) if diff_json else {}
    except ValueError:
        return diff_json


def audit_entry_to_dict(entry: cpb.AuditEntry) -> dict[str, Any]:
    """One audit entry as JSON-ready data; `diff` is the parsed {field: [before, after]}."""
    return {
        "at": _iso(entry.unix_time),
        "unix_time": entry.unix_time,
        "principal": entry.principal,
        "method": entry.method,
        "reason": entry.reason,
        "revision_before": entry.revision_before,
        "revision_after": entry.revision_after,
        "diff": _diff(entry.diff_json),
    }


def _diff_text(diff_json: str) -> str:
    diff = _diff(diff_json)
    if not isinstance(diff, dict):
        return str(diff)
    parts = []
    for field, change in diff.items():
        if isinstance(change, list) and len(change) == 2:
            before, after = (json.dumps(v, sort_keys=True) for v in change)
            parts.append(f"{field}: {before} -> {after}")
        else:
            parts.append(f"{field}: {json.dumps(change, sort_keys=True)}")
    return "; ".join(parts) or _NONE


def render_audit(entries: Iterable[cpb.AuditEntry]) -> str:
    """Audit entries as a table, in the order given (the API returns oldest first)."""
    rows = [
        [
            _when(e.unix_time),
            e.principal or _NONE,
            e.method,
            f"{e.revision_before} -> {e.revision_after}",
            e.reason,
            _diff_text(e.diff_json),
        ]
        for e in entries
    ]
    if not rows:
        return "audit log: no entries"
    return _table(["TIME", "WHO", "METHOD", "REVISION", "REASON", "CHANGE"], rows)


_RECOMMENDATIONS: dict[int, tuple[str, str]] = {
    cpb.RECOMMEND_INSUFFICIENT_DATA: ("INSUFFICIENT_DATA", "insufficient data: keep shadowing"),
    cpb.RECOMMEND_FIX_ERRORS: ("FIX_ERRORS", "fix the shadow's errors first"),
    cpb.RECOMMEND_INVESTIGATE_DISAGREEMENT: (
        "INVESTIGATE_DISAGREEMENT",
        "investigate the disagreement before serving it",
    ),
    cpb.RECOMMEND_OPTIMISE_LATENCY: ("OPTIMISE_LATENCY", "optimise its latency first"),
    cpb.RECOMMEND_PROMOTE_TO_CANARY: ("PROMOTE_TO_CANARY", "promote to canary"),
}


def recommendation_name(recommendation: int) -> str | None:
    """PROMOTE_TO_CANARY, INVESTIGATE_DISAGREEMENT, ... (None when unspecified)."""
    entry = _RECOMMENDATIONS.get(recommendation)
    return entry[0] if entry else None


def recommendation_text(recommendation: int) -> str | None:
    """The shadow recommendation in words, e.g. "promote to canary" (None when unspecified)."""
    entry = _RECOMMENDATIONS.get(recommendation)
    return entry[1] if entry else None


def estimate_to_dict(estimate: cpb.Estimate) -> dict[str, Any]:
    """An Estimate as JSON-ready data; infinite or NaN numbers become None."""
    return {
        "value": _finite(estimate.value),
        "lower": _finite(estimate.lower),
        "upper": _finite(estimate.upper),
        "level": _finite(estimate.level),
        "method": estimate.method,
    }


def _optional_estimate(message: Message, name: str) -> dict[str, Any] | None:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    assert isinstance(value, cpb.Estimate)
    return estimate_to_dict(value)


def _noise_to_dict(report: cpb.ShadowReport) -> dict[str, Any] | None:
    if not report.HasField("noise"):
        return None
    noise = report.noise
    return {
        "compared": noise.compared,
        "agreed": noise.agreed,
        "noise_disagreement": _optional_estimate(noise, "noise_disagreement"),
        "candidate_disagreement": _optional_estimate(noise, "candidate_disagreement"),
        "adjusted_disagreement": _optional_estimate(noise, "adjusted_disagreement"),
    }


def shadow_to_dict(report: cpb.ShadowReport) -> dict[str, Any]:
    """The shadow report as JSON-ready data (with its analysis and recommendation)."""
    latency = report.latency
    return {
        "shadow_variant": report.shadow_variant,
        "comparator": report.comparator,
        "sampled": report.sampled,
        "sent": report.sent,
        "dropped": report.dropped,
        "in_flight": report.in_flight,
        "compared": report.compared,
        "agreed": report.agreed,
        "agreement_rate": report.agreement_rate if report.compared else None,
        "agreement": _optional_estimate(report, "agreement"),
        "error_rate": _finite(report.error_rate),
        "primary_error_rate": _finite(report.primary_error_rate),
        "recommendation": recommendation_name(report.recommendation),
        "reasons": list(report.reasons),
        "noise": _noise_to_dict(report),
        "errors_by_status": dict(sorted(report.errors_by_status.items())),
        "latency": {
            "count": latency.count,
            "primary_p50_seconds": latency.primary_p50_seconds,
            "primary_p95_seconds": latency.primary_p95_seconds,
            "shadow_p50_seconds": latency.shadow_p50_seconds,
            "shadow_p95_seconds": latency.shadow_p95_seconds,
            "ratio_p50": latency.ratio_p50,
            "ratio_p95": latency.ratio_p95,
        },
        "latency_outliers": [
            {
                "at": _iso(o.unix_time),
                "unix_time": o.unix_time,
                "request_id": o.request_id,
                "targeting_key": o.targeting_key,
                "primary_seconds": o.primary_seconds,
                "shadow_seconds": o.shadow_seconds,
                "ratio": _finite(o.ratio),
            }
            for o in report.latency_outliers
        ],
        "examples": [
            {
                "at": _iso(d.unix_time),
                "unix_time": d.unix_time,
                "request_id": d.request_id,
                "targeting_key": d.targeting_key,
                "primary_variant": d.primary_variant,
                "detail": d.detail,
                "primary_output": d.primary_output,
                "shadow_output": d.shadow_output,
            }
            for d in report.examples
        ],
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _pct(fraction: float, digits: int = 2) -> str:
    """0.9 -> "90.00%" (— for NaN or infinity)."""
    return f"{fraction * 100:.{digits}f}%" if math.isfinite(fraction) else _NONE


def _level(estimate: cpb.Estimate, default: float = 0.95) -> str:
    """The interval's confidence as "95%"."""
    level = estimate.level if 0 < estimate.level < 1 else default
    return f"{level * 100:g}%"


def _estimate_pct(estimate: cpb.Estimate) -> str:
    """`90.00% [86.12%, 93.01%] (95% wilson)`."""
    method = f" {_clean(estimate.method)}" if estimate.method else ""
    return (
        f"{_pct(estimate.value)} [{_pct(estimate.lower)}, {_pct(estimate.upper)}] "
        f"({_level(estimate)}{method})"
    )


def _noise_lines(report: cpb.ShadowReport) -> list[str]:
    if not report.HasField("noise"):
        return []
    noise = report.noise
    lines = [f"noise mirror (primary vs itself): compared {noise.compared}, agreed {noise.agreed}"]
    if noise.HasField("noise_disagreement"):
        lines.append(f"  own disagreement {_estimate_pct(noise.noise_disagreement)}")
    if noise.HasField("candidate_disagreement"):
        lines.append(f"  candidate disagreement {_estimate_pct(noise.candidate_disagreement)}")
    if noise.HasField("adjusted_disagreement"):
        lines.append(
            "  noise-adjusted disagreement (candidate - noise) "
            f"{_estimate_pct(noise.adjusted_disagreement)}"
        )
    return lines


def _error_rate_line(report: cpb.ShadowReport) -> str | None:
    if not (report.sent or report.error_rate or report.primary_error_rate):
        return None
    return (
        f"error rate: shadow {_pct(report.error_rate)} of calls sent, "
        f"primary {_pct(report.primary_error_rate)} over the same period"
    )


def _outlier_table(outliers: Sequence[cpb.LatencyOutlier]) -> str:
    rows = [
        [
            _when(o.unix_time),
            o.request_id or _NONE,
            o.targeting_key or _NONE,
            _ms(o.primary_seconds),
            _ms(o.shadow_seconds),
            f"{o.ratio:.2f}x" if math.isfinite(o.ratio) else _NONE,
        ]
        for o in outliers
    ]
    return _table(["TIME", "REQUEST", "KEY", "PRIMARY", "SHADOW", "RATIO"], rows, right=(3, 4, 5))


def render_shadow(
    report: cpb.ShadowReport,
    *,
    max_examples: int | None = None,
    max_outliers: int | None = None,
) -> str:
    """The shadow comparison so far: recommendation and reasons, counts, agreement with its
    interval, noise adjustment, error rates, latency, slowest calls, recent disagreements.
    `max_examples` / `max_outliers` keep only the newest disagreements / slowest calls."""
    if not report.shadow_variant:
        return "shadow: no shadow variant configured"
    lines = [
        f"shadow variant {_clean(report.shadow_variant)}   "
        f"comparator {_clean(report.comparator) or _NONE}",
    ]
    advice = recommendation_text(report.recommendation)
    if advice is not None:
        lines.append(f"recommendation: {advice.upper()}")
    lines.extend(f"  - {_clean(reason)}" for reason in report.reasons)
    lines.append(
        f"sampled {report.sampled}   sent {report.sent}   dropped {report.dropped} "
        f"(max in flight reached)   in flight {report.in_flight}"
    )
    if report.compared:
        agreement = f"agreement {report.agreement_rate * 100:.2f}%"
        if report.HasField("agreement"):
            a = report.agreement
            method = f" {_clean(a.method)}" if a.method else ""
            agreement += f" [{_pct(a.lower)}, {_pct(a.upper)}] ({_level(a)}{method} interval)"
        lines.append(f"compared {report.compared}   agreed {report.agreed}   {agreement}")
    else:
        lines.append("compared 0   agreement n/a (nothing compared yet)")
    lines.extend(_noise_lines(report))
    error_rates = _error_rate_line(report)
    if error_rates is not None:
        lines.append(error_rates)
    if report.errors_by_status:
        errors = ", ".join(f"{code} {n}" for code, n in sorted(report.errors_by_status.items()))
        lines.append(f"shadow errors: {_clean(errors)}")
    else:
        lines.append("shadow errors: none")
    lat = report.latency
    if lat.count:
        lines.append(
            f"latency over {lat.count} pairs: primary p50 {_ms(lat.primary_p50_seconds)} "
            f"p95 {_ms(lat.primary_p95_seconds)}; shadow p50 {_ms(lat.shadow_p50_seconds)} "
            f"p95 {_ms(lat.shadow_p95_seconds)}; shadow/primary p50 {lat.ratio_p50:.2f}x "
            f"p95 {lat.ratio_p95:.2f}x"
        )
    outliers = list(report.latency_outliers)
    if max_outliers is not None:
        outliers = outliers[:max_outliers]
    if outliers:
        lines.append("")
        shown = (
            f"{len(outliers)} of {len(report.latency_outliers)}"
            if len(outliers) < len(report.latency_outliers)
            else str(len(outliers))
        )
        lines.append(f"slowest shadow calls relative to the primary ({shown}):")
        lines.append(_outlier_table(outliers))
    examples = list(report.examples)
    if max_examples is not None:
        examples = examples[-max_examples:] if max_examples > 0 else []
    if examples:
        lines.append("")
        shown = (
            f"{len(examples)} of {len(report.examples)}"
            if len(examples) < len(report.examples)
            else str(len(examples))
        )
        lines.append(f"recent disagreements ({shown}, newest last):")
        rows = [
            [
                _when(d.unix_time),
                d.request_id or _NONE,
                d.targeting_key or _NONE,
                d.primary_variant or _NONE,
                d.detail,
            ]
            for d in examples
        ]
        lines.append(_table(["TIME", "REQUEST", "KEY", "PRIMARY", "DETAIL"], rows))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Rollouts and drills.
# ---------------------------------------------------------------------------------------

#: Phases in which a rollout plan is in progress; the others are final (or NONE: never ran).
ACTIVE_PHASES = frozenset({"RUNNING", "PAUSED"})

_STAGE_KINDS: dict[int, str] = {
    cpb.STAGE_KIND_SHADOW: "shadow",
    cpb.STAGE_KIND_CANARY: "canary",
    cpb.STAGE_KIND_PROMOTE: "promote",
}
_GATE_STATUSES: dict[int, str] = {
    cpb.GATE_PASS: "PASS",
    cpb.GATE_FAIL: "FAIL",
    cpb.GATE_WAIT: "WAIT",
}
_BAR_WIDTH = 20
_GATE_DETAIL_WIDTH = 100  # the table's DETAIL column; the full text is in the JSON output


def stage_kind_name(kind: int) -> str:
    """A stage kind as written in plan files: shadow, canary, promote ("unspecified" else)."""
    return _STAGE_KINDS.get(kind, "unspecified")


def gate_status_name(status: int) -> str:
    """PASS, FAIL or WAIT ("UNSPECIFIED" for anything else)."""
    return _GATE_STATUSES.get(status, "UNSPECIFIED")


def _phase(rollout: cpb.Rollout) -> str:
    return rollout.phase or "NONE"


def _current_stage(rollout: cpb.Rollout) -> cpb.RolloutStage | None:
    stages = rollout.plan.stages
    return stages[rollout.stage_index] if 0 <= rollout.stage_index < len(stages) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _stage_to_dict(stage: cpb.RolloutStage) -> dict[str, Any]:
    return {
        "name": stage.name,
        "kind": stage_kind_name(stage.kind),
        "canary_bp": stage.canary_bp,
        "canary_percent": stage.canary_bp / 100,
        "min_duration_seconds": stage.min_duration_seconds,
        "min_samples": stage.min_samples,
    }


def rollout_to_dict(rollout: cpb.Rollout) -> dict[str, Any]:
    """The rollout as JSON-ready data (kinds as in plan files, gate statuses PASS/FAIL/WAIT)."""
    phase = _phase(rollout)
    stage = _current_stage(rollout)
    return {
        "phase": phase,
        "active": phase in ACTIVE_PHASES,
        "revision": rollout.revision,
        "stage_index": rollout.stage_index,
        "stage_name": rollout.stage_name or None,
        "stage_kind": stage_kind_name(stage.kind) if stage is not None else None,
        "started_at": _iso(rollout.started_unix_time),
        "started_unix_time": rollout.started_unix_time,
        "stage_started_at": _iso(rollout.stage_started_unix_time),
        "stage_started_unix_time": rollout.stage_started_unix_time,
        "stage_elapsed_seconds": rollout.stage_elapsed_seconds,
        "stage_min_duration_seconds": stage.min_duration_seconds if stage is not None else None,
        "stage_samples": rollout.stage_samples,
        "stage_min_samples": stage.min_samples if stage is not None else None,
        "plan": [_stage_to_dict(s) for s in rollout.plan.stages],
        "gates": [
            {
                "name": g.name,
                "status": gate_status_name(g.status),
                "value": _finite(g.value),
                "threshold": _finite(g.threshold),
                "detail": g.detail,
            }
            for g in rollout.gates
        ],
        "verdict": rollout.verdict,
        "message": rollout.message,
        "baseline": {
            "requests": rollout.baseline_requests,
            "error_rate": rollout.baseline_error_rate,
            "p50_seconds": rollout.baseline_p50_seconds,
            "p95_seconds": rollout.baseline_p95_seconds,
        },
    }


def progress_bar(done: float, target: float, width: int = _BAR_WIDTH) -> str:
    """`[########------------]  40%`: done / target, floored (100% only once reached), capped."""
    fraction = 1.0 if target <= 0 else min(max(done / target, 0.0), 1.0)
    if not math.isfinite(fraction):
        fraction = 0.0
    filled = math.floor(fraction * width)
    percent = math.floor(fraction * 100)
    return f"[{'#' * filled}{'-' * (width - filled)}] {percent:>3}%"


def _duration(seconds: float) -> str:
    """A human span: 45s, 6m05s, 2h03m."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _number(value: float) -> str:
    if not math.isfinite(value):
        return _NONE
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _stage_detail(stage: cpb.RolloutStage) -> str:
    if stage.kind == cpb.STAGE_KIND_CANARY:
        return f" ({stage.canary_bp} bp)"
    if stage.kind == cpb.STAGE_KIND_SHADOW:
        return " (mirror only, 0 bp served)"
    return ""


def _ladder(rollout: cpb.Rollout, phase: str) -> str:
    """`✓ shadow  ▶ canary-25% (2500 bp)  · canary-50%  · promote`; ✗ marks where it ended."""
    parts = []
    for i, stage in enumerate(rollout.plan.stages):
        current = i == rollout.stage_index and phase != "SUCCEEDED"
        if phase == "SUCCEEDED" or i < rollout.stage_index:
            mark = "✓"
        elif current:
            mark = "▶" if phase in ACTIVE_PHASES else "✗"
        else:
            mark = "·"
        parts.append(f"{mark} {_clean(stage.name)}{_stage_detail(stage) if current else ''}")
    return "  ".join(parts) or "(empty plan)"


def _what_stage_does(stage: cpb.RolloutStage) -> str:
    if stage.kind == cpb.STAGE_KIND_CANARY:
        return f"the canary serves {format_percent(stage.canary_bp)} ({stage.canary_bp} bp)"
    if stage.kind == cpb.STAGE_KIND_SHADOW:
        return "the canary gets mirrored copies as a shadow and serves 0%"
    if stage.kind == cpb.STAGE_KIND_PROMOTE:
        return "the canary is being promoted to stable"
    return "unknown stage kind"


def _headline(rollout: cpb.Rollout, phase: str, stage: cpb.RolloutStage | None) -> str:
    count = len(rollout.plan.stages)
    at = (
        f"stage {rollout.stage_index + 1} of {count}, {_clean(stage.name)}"
        if stage is not None
        else f"the end of its {count} stages"
    )
    if phase == "RUNNING":
        return f"rollout RUNNING at {at}: " + (
            _what_stage_does(stage) if stage is not None else "finishing"
        )
    if phase == "PAUSED":
        return (
            f"rollout PAUSED at {at}: traffic held as it is, stage time stopped; "
            "`sidecarctl rollout resume` continues"
        )
    if phase == "SUCCEEDED":
        return f"rollout SUCCEEDED: all {count} stages done"
    if phase == "ROLLED_BACK":
        return f"rollout ROLLED BACK at {at}: all traffic went to stable"
    if phase == "ABORTED":
        return f"rollout ABORTED at {at}: all traffic went to stable"
    return f"rollout {_clean(phase)} at {at}"


def _progress_lines(rollout: cpb.Rollout, stage: cpb.RolloutStage, paused: bool) -> list[str]:
    elapsed = rollout.stage_elapsed_seconds
    need_time = stage.min_duration_seconds
    if need_time > 0:
        time_line = (
            f"{'time':<8}{progress_bar(elapsed, need_time)}  {elapsed:.0f}s / {need_time:.0f}s"
        )
    else:
        time_line = f"{'time':<8}{elapsed:.0f}s (no minimum)"
    if paused:
        time_line += "  (paused: not counting)"
    samples = rollout.stage_samples
    need = stage.min_samples
    unit = {cpb.STAGE_KIND_SHADOW: " comparisons", cpb.STAGE_KIND_CANARY: " canary requests"}
    if need > 0:
        samples_line = (
            f"{'samples':<8}{progress_bar(samples, need)}  {samples} / {need}"
            f"{unit.get(stage.kind, '')}"
        )
    else:
        samples_line = f"{'samples':<8}{samples} (no minimum)"
    return [time_line, samples_line]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _gate_table(gates: Sequence[cpb.Gate]) -> str:
    if not gates:
        return "gates: none evaluated yet (reported on the health checker's next check)"
    rows = [
        [
            g.name or _NONE,
            gate_status_name(g.status),
            _number(g.value),
            _number(g.threshold),
            _shorten(g.detail, _GATE_DETAIL_WIDTH) or _NONE,
        ]
        for g in gates
    ]
    return _table(["GATE", "STATUS", "VALUE", "THRESHOLD", "DETAIL"], rows, right=(2, 3))


def _baseline_line(rollout: cpb.Rollout) -> str:
    head = "stable baseline (before canary traffic):"
    if rollout.baseline_requests <= 0:
        return f"{head} no stable requests recorded"
    return (
        f"{head} error rate {rollout.baseline_error_rate * 100:.2f}%, "
        f"p50 {_ms(rollout.baseline_p50_seconds)}, p95 {_ms(rollout.baseline_p95_seconds)}, "
        f"over {rollout.baseline_requests} requests"
    )


def render_rollout(rollout: cpb.Rollout, now: float | None = None) -> str:
    """What an operator watches: the phase, the plan as a ladder with the current stage
    marked, the stage's time and sample progress bars and its gates (details shortened to
    100 characters; `rollout_to_dict` has them whole), the last verdict, the stable baseline
    and the last message. `now` (unix time) adds how long ago it started."""
    phase = _phase(rollout)
    if phase == "NONE":
        lines = ["no rollout has run"]
        if rollout.verdict:
            lines.append(f"last verdict: {_clean(rollout.verdict)}")
        return "\n".join(lines)
    stage = _current_stage(rollout)
    started = f"started {_when(rollout.started_unix_time)}"
    if now is not None and rollout.started_unix_time > 0:
        started += f" ({_duration(now - rollout.started_unix_time)} ago)"
    lines = [
        _headline(rollout, phase, stage),
        f"{started}   revision {rollout.revision}",
        f"plan: {_ladder(rollout, phase)}",
    ]
    if phase in ACTIVE_PHASES and stage is not None:
        lines.append("")
        lines.extend(_progress_lines(rollout, stage, paused=phase == "PAUSED"))
        lines.append("")
        lines.append(_gate_table(rollout.gates))
    lines.append("")
    lines.append(f"last verdict: {_clean(rollout.verdict) or 'none yet'}")
    lines.append(_baseline_line(rollout))
    if rollout.message:
        lines.append(f'message: "{_clean(rollout.message)}"')
    return "\n".join(lines)


def drill_to_dict(report: cpb.DrillReport) -> dict[str, Any]:
    """The drill report as JSON-ready data."""
    return {
        "rolled_back": report.rolled_back,
        "detection_seconds": report.detection_seconds,
        "revert_seconds": report.revert_seconds,
        "verdict_reason": report.verdict_reason,
        "restored_revision": report.restored_revision,
    }


def _seconds(seconds: float) -> str:
    return _ms(seconds) if seconds < 1 else f"{seconds:.2f} s"


def render_drill(report: cpb.DrillReport) -> str:
    """The drill's outcome: rolled back or not, detection and revert times, the verdict."""
    if report.rolled_back:
        head = "drill PASSED: the failing canary got a rollback verdict and the Rollback path ran"
        revert = _seconds(report.revert_seconds)
    else:
        head = (
            "drill FAILED: NO automatic rollback: the health checker did not reach a rollback "
            "verdict on a failing canary"
        )
        revert = "n/a"
    return "\n".join(
        [
            head,
            f"detection  {_seconds(report.detection_seconds)}  (injected failure -> verdict)",
            f"revert     {revert}  (verdict -> all traffic on stable)",
            f"verdict    {_clean(report.verdict_reason) or _NONE}",
            f"state restored as revision {report.restored_revision} "
            "(the routing from before the drill)",
        ]
    )


# ---------------------------------------------------------------------------------------
# The experiment report.
# ---------------------------------------------------------------------------------------

_VERDICTS: dict[int, tuple[str, str]] = {
    cpb.VERDICT_SHIP_B: ("SHIP_B", "Ship B"),
    cpb.VERDICT_KEEP_A: ("KEEP_A", "Keep A"),
    cpb.VERDICT_EQUIVALENT: ("EQUIVALENT", "Equivalent"),
    cpb.VERDICT_CONTINUE: ("CONTINUE", "Continue"),
    cpb.VERDICT_BLOCKED: ("BLOCKED", "Blocked"),
}
#: Shadow sections of the experiment tables show this many disagreements and slow calls.
_REPORT_EXAMPLES = 3


def verdict_name(verdict: int) -> str:
    """SHIP_B, KEEP_A, EQUIVALENT, CONTINUE or BLOCKED ("UNSPECIFIED" for anything else)."""
    entry = _VERDICTS.get(verdict)
    return entry[0] if entry else "UNSPECIFIED"


def verdict_text(verdict: int) -> str:
    """The verdict in words: Ship B, Keep A, Equivalent, Continue, Blocked (or "no verdict")."""
    entry = _VERDICTS.get(verdict)
    return entry[1] if entry else "no verdict"


def _verdict_variant(metric: cpb.MetricResult, report: cpb.ExperimentReport) -> str:
    """The variant a verdict names: B's for Ship B, A's for Keep A, else empty."""
    if metric.verdict == cpb.VERDICT_SHIP_B:
        return report.treatment_variant
    if metric.verdict == cpb.VERDICT_KEEP_A:
        return report.control_variant
    return ""


def verdict_label(metric: cpb.MetricResult, report: cpb.ExperimentReport) -> str:
    """The verdict with the variant it names: "Ship B (canary)", "Keep A (stable)", ..."""
    text = verdict_text(metric.verdict)
    variant = _verdict_variant(metric, report)
    return f"{text} ({variant})" if variant else text


def _verdict_headline(report: cpb.ExperimentReport, metric: cpb.MetricResult) -> str:
    """`SHIP B (canary)`: the verdict in capitals, the variant it names as written."""
    text = verdict_text(metric.verdict).upper()
    variant = _verdict_variant(metric, report)
    return f"{text} ({_clean(variant)})" if variant else text


def _arm_to_dict(arm: cpb.ArmResult) -> dict[str, Any]:
    return {
        "variant": arm.variant,
        "n": arm.n,
        "successes": arm.successes,
        "value": _optional_estimate(arm, "value"),
        "std_dev": _finite(arm.std_dev),
    }


def _segment_to_dict(segment: cpb.SegmentResult) -> dict[str, Any]:
    return {
        "segment": segment.segment,
        "control": _arm_to_dict(segment.control),
        "treatment": _arm_to_dict(segment.treatment),
        "difference": _optional_estimate(segment, "difference"),
        "p_value": _finite(segment.p_value),
        "adjusted_p_value": _finite(segment.adjusted_p_value),
        "significant": segment.significant,
        "winner": segment.winner or None,
    }


def _look_to_dict(look: cpb.LookPoint) -> dict[str, Any]:
    return {
        "at": _iso(look.unix_time),
        "unix_time": look.unix_time,
        "n_control": look.n_control,
        "n_treatment": look.n_treatment,
        "difference": _finite(look.difference),
        "lower": _finite(look.lower),
        "upper": _finite(look.upper),
        "p_value": _finite(look.p_value),
    }


def metric_to_dict(metric: cpb.MetricResult) -> dict[str, Any]:
    """One metric's result as JSON-ready data (verdict as SHIP_B / KEEP_A / ...)."""
    return {
        "metric": metric.metric,
        "kind": metric.kind,
        "higher_is_better": metric.higher_is_better,
        "minimum_effect": _finite(metric.minimum_effect),
        "verdict": verdict_name(metric.verdict),
        "verdict_text": verdict_text(metric.verdict),
        "reason": metric.reason,
        "control": _arm_to_dict(metric.control),
        "treatment": _arm_to_dict(metric.treatment),
        "difference": _optional_estimate(metric, "difference"),
        "relative_lift": _optional_estimate(metric, "relative_lift"),
        "p_value": _finite(metric.p_value),
        "fixed_horizon_p_value": _finite(metric.fixed_horizon_p_value),
        "additional_per_arm": metric.additional_per_arm if metric.additional_per_arm >= 0 else None,
        "planned_per_arm": metric.planned_per_arm,
        "correction": metric.correction or None,
        "segments": [_segment_to_dict(s) for s in metric.segments],
        "simpson_warning": metric.simpson_warning or None,
        "history": [_look_to_dict(look) for look in metric.history],
        "tau_squared": _finite(metric.tau_squared),
        "alpha": _finite(metric.alpha),
    }


def _srm_to_dict(report: cpb.ExperimentReport) -> dict[str, Any] | None:
    if not report.HasField("srm"):
        return None
    srm = report.srm
    return {
        "arms": [
            {
                "variant": a.variant,
                "observed": a.observed,
                "observed_share": _finite(a.observed_share),
                "expected_share": _finite(a.expected_share),
            }
            for a in srm.arms
        ],
        "chi_square": _finite(srm.chi_square),
        "p_value": _finite(srm.p_value),
        "threshold": _finite(srm.threshold),
        "mismatch": srm.mismatch,
        "detail": srm.detail,
    }


def _drift_to_dict(report: cpb.ExperimentReport) -> dict[str, Any] | None:
    if not report.HasField("drift"):
        return None
    drift = report.drift
    return {
        "enabled": drift.enabled,
        "moderate_threshold": _finite(drift.moderate_threshold),
        "major_threshold": _finite(drift.major_threshold),
        "sampled": drift.sampled,
        "dropped": drift.dropped,
        "reference": drift.reference,
        "worst_level": drift.worst_level or None,
        "features": [
            {
                "name": f.name,
                "kind": f.kind,
                "variant": f.variant or None,
                "reference_n": f.reference_n,
                "current_n": f.current_n,
                "psi": _finite(f.psi),
                "level": f.level,
                "ks_statistic": _finite(f.ks_statistic),
                "ks_p_value": _finite(f.ks_p_value),
                "categorical": f.categorical,
                "edges": [_finite(e) for e in f.edges],
                "reference_share": [_finite(s) for s in f.reference_share],
                "current_share": [_finite(s) for s in f.current_share],
            }
            for f in drift.features
        ],
    }


def experiment_to_dict(report: cpb.ExperimentReport) -> dict[str, Any]:
    """The experiment report as JSON-ready data: infinite or NaN numbers become None, times
    come also as ISO 8601, verdicts as SHIP_B / KEEP_A / EQUIVALENT / CONTINUE / BLOCKED."""
    shadow = report.shadow
    return {
        "generated_at": _iso(report.generated_unix_time),
        "generated_unix_time": report.generated_unix_time,
        "epoch": report.epoch,
        "started_at": _iso(report.started_unix_time),
        "started_unix_time": report.started_unix_time,
        "revision": report.revision,
        "control_variant": report.control_variant,
        "treatment_variant": report.treatment_variant,
        "unit": report.unit,
        "alpha": _finite(report.alpha),
        "looks": report.looks,
        "last_look_at": _iso(report.last_look_unix_time),
        "last_look_unix_time": report.last_look_unix_time,
        "warnings": list(report.warnings),
        "srm": _srm_to_dict(report),
        "metrics": [metric_to_dict(m) for m in report.metrics],
        "shadow": shadow_to_dict(shadow) if shadow.shadow_variant else None,
        "drift": _drift_to_dict(report),
    }


def p_value_text(p: float) -> str:
    """A p-value for people: 0.0312, 4.9e-07 below 0.0001 (— when missing)."""
    if not math.isfinite(p):
        return _NONE
    return f"{p:.1e}" if 0 < p < 1e-4 else f"{p:.4f}"


def _sig(value: float) -> str:
    if not math.isfinite(value):
        return _NONE
    return f"{value:.0f}" if abs(value) >= 1e5 else f"{value:.4g}"


def metric_value_text(kind: str, value: float) -> str:
    """A rate (bool metrics) as a percentage, a mean (numeric metrics) with 4 digits."""
    return _pct(value) if kind == "bool" else _sig(value)


def metric_effect_text(kind: str, value: float) -> str:
    """A difference with its sign: percentage points for rates, plain for means."""
    if not math.isfinite(value):
        return _NONE
    return f"{value * 100:+.2f} pp" if kind == "bool" else f"{value:+.4g}"


def _effect_interval(kind: str, estimate: cpb.Estimate) -> str:
    lower = metric_effect_text(kind, estimate.lower)
    upper = metric_effect_text(kind, estimate.upper)
    return f"[{lower}, {upper}]"


def _arm_letter(report: cpb.ExperimentReport, variant: str) -> str:
    if variant and variant == report.control_variant:
        return "A"
    if variant and variant == report.treatment_variant:
        return "B"
    return _NONE


def _header_lines(report: cpb.ExperimentReport) -> list[str]:
    control = _clean(report.control_variant) or _NONE
    treatment = _clean(report.treatment_variant) or _NONE
    alpha = f"{report.alpha:g}" if report.alpha > 0 else _NONE
    last = f", last at {_when(report.last_look_unix_time)}" if report.looks else ""
    return [
        f"experiment epoch {report.epoch}: control (A) {control} vs treatment (B) {treatment}",
        f"started {_when(report.started_unix_time)}   unit {_clean(report.unit) or _NONE}   "
        f"alpha {alpha}   looks {report.looks}{last}",
        f"generated {_when(report.generated_unix_time)}   revision {report.revision}",
    ]


def _srm_lines(report: cpb.ExperimentReport) -> list[str]:
    srm = report.srm
    if not report.HasField("srm") or not srm.arms:
        return ["sample ratio check: no data (no assigned requests yet)"]
    stats = (
        f"chi-square {'inf' if math.isinf(srm.chi_square) else _sig(srm.chi_square)}, "
        f"p {p_value_text(srm.p_value)}, "
        f"threshold {srm.threshold:g}"
    )
    if srm.mismatch:
        head = f"sample ratio check: MISMATCH ({stats}): every verdict is blocked"
    else:
        head = f"sample ratio check: ok ({stats})"
    lines = [head]
    if srm.detail:
        lines.append(f"  {_clean(srm.detail)}")
    rows = [
        [
            a.variant or _NONE,
            _arm_letter(report, a.variant),
            str(a.observed),
            _pct(a.observed_share),
            _pct(a.expected_share),
        ]
        for a in srm.arms
    ]
    lines.append(
        _table(["VARIANT", "ARM", "OBSERVED", "OBSERVED SHARE", "EXPECTED SHARE"], rows, (2, 3, 4))
    )
    return lines


def _arm_row(letter: str, kind: str, arm: cpb.ArmResult) -> list[str]:
    has_value = arm.HasField("value")
    value = metric_value_text(kind, arm.value.value) if has_value else _NONE
    interval = (
        f"[{metric_value_text(kind, arm.value.lower)}, {metric_value_text(kind, arm.value.upper)}]"
        if has_value
        else _NONE
    )
    detail = str(arm.successes) if kind == "bool" else _sig(arm.std_dev)
    return [letter, arm.variant or _NONE, str(arm.n), detail, value, interval]


def _segment_rows(kind: str, segments: Sequence[cpb.SegmentResult]) -> list[list[str]]:
    rows = []
    for s in segments:
        c, t = s.control, s.treatment
        values = (
            f"{metric_value_text(kind, c.value.value)} / {metric_value_text(kind, t.value.value)}"
        )
        diff = (
            f"{metric_effect_text(kind, s.difference.value)} {_effect_interval(kind, s.difference)}"
            if s.HasField("difference")
            else _NONE
        )
        rows.append(
            [
                s.segment or _NONE,
                f"{c.n} / {t.n}",
                values,
                diff,
                p_value_text(s.p_value),
                p_value_text(s.adjusted_p_value),
                "YES" if s.significant else "no",
                s.winner or _NONE,
            ]
        )
    return rows


def _metric_lines(report: cpb.ExperimentReport, m: cpb.MetricResult) -> list[str]:
    kind = m.kind or "number"
    direction = "higher is better" if m.higher_is_better else "lower is better"
    effect = metric_effect_text(kind, m.minimum_effect).lstrip("+")
    lines = [
        f"== metric {_clean(m.metric) or _NONE} ({_clean(kind)}, {direction}, "
        f"minimum effect ±{effect}) ==",
        f"verdict: {_verdict_headline(report, m)}" + (f": {_clean(m.reason)}" if m.reason else ""),
    ]
    value_name = "RATE" if kind == "bool" else "MEAN"
    detail_name = "SUCCESSES" if kind == "bool" else "STD DEV"
    level = _level(m.control.value) if m.control.HasField("value") else "95%"
    lines.append(
        _table(
            ["ARM", "VARIANT", "N", detail_name, value_name, f"{level} INTERVAL"],
            [_arm_row("A", kind, m.control), _arm_row("B", kind, m.treatment)],
            right=(2, 3, 4),
        )
    )
    if m.HasField("difference"):
        d = m.difference
        method = f", {_clean(d.method)}" if d.method else ""
        lines.append(
            f"difference B - A: {metric_effect_text(kind, d.value)}, anytime-valid "
            f"{_level(d, 1 - (m.alpha or report.alpha or 0.05))} interval "
            f"{_effect_interval(kind, d)}{method}"
        )
    else:
        lines.append("difference B - A: no data yet")
    if m.HasField("relative_lift"):
        lift = m.relative_lift
        lines.append(
            f"relative lift: {_signed_pct(lift.value)} [{_signed_pct(lift.lower)}, "
            f"{_signed_pct(lift.upper)}] (fixed-horizon interval: for reading, not deciding)"
        )
    lines.append(
        f"always-valid p {p_value_text(m.p_value)}   fixed-horizon p "
        f"{p_value_text(m.fixed_horizon_p_value)} (NOT valid under repeated looks)"
    )
    planned = f"{m.planned_per_arm} per arm" if m.planned_per_arm > 0 else "n/a (no baseline)"
    sizes = f"planned sample size: {planned}"
    if m.verdict == cpb.VERDICT_CONTINUE:
        if m.additional_per_arm >= 0:
            sizes += f"   still needed: about {m.additional_per_arm} more per arm"
        else:
            sizes += "   still needed: cannot be estimated yet"
    lines.append(sizes)
    if m.history:
        first, last = m.history[0], m.history[-1]
        lines.append(
            f"history: {len(m.history)} looks, from n {first.n_control}/{first.n_treatment} "
            f"to {last.n_control}/{last.n_treatment} (A/B)"
        )
    if m.simpson_warning:
        lines.append(f"SIMPSON'S PARADOX WARNING: {_clean(m.simpson_warning)}")
    if m.segments:
        correction = f"{_clean(m.correction)}-adjusted" if m.correction else "adjusted"
        lines.append(
            f"segments ({len(m.segments)}; p {correction} over the segment family; values A / B):"
        )
        lines.append(
            _table(
                [
                    "SEGMENT",
                    "N A / B",
                    "VALUES",
                    "DIFFERENCE [INTERVAL]",
                    "P",
                    "ADJ P",
                    "SIGNIFICANT",
                    "WINNER",
                ],
                _segment_rows(kind, m.segments),
                right=(4, 5),
            )
        )
    return lines


def _signed_pct(fraction: float) -> str:
    return f"{fraction * 100:+.2f}%" if math.isfinite(fraction) else _NONE


def _drift_lines(report: cpb.ExperimentReport) -> list[str]:
    drift = report.drift
    if not report.HasField("drift") or not drift.enabled:
        return ["drift: disabled (no data)"]
    head = (
        f"drift: worst level {_clean(drift.worst_level) or _NONE}   "
        f"PSI moderate >= {drift.moderate_threshold:g}, major >= {drift.major_threshold:g}   "
        f"sampled {drift.sampled}, dropped {drift.dropped}"
    )
    lines = [head]
    if drift.reference:
        lines.append(f"  compared with {_clean(drift.reference)}")
    if not drift.features:
        lines.append("  no features measured yet (no data)")
        return lines
    rows = [
        [
            f.name or _NONE,
            f.kind or _NONE,
            f.variant or _NONE,
            str(f.reference_n),
            str(f.current_n),
            f"{f.psi:.4f}" if math.isfinite(f.psi) else _NONE,
            f.level or _NONE,
            f"{f.ks_statistic:.4f}" if math.isfinite(f.ks_statistic) else _NONE,
            p_value_text(f.ks_p_value),
        ]
        for f in drift.features
    ]
    lines.append(
        _table(
            ["FEATURE", "KIND", "VARIANT", "N REF", "N CUR", "PSI", "LEVEL", "KS D", "KS P"],
            rows,
            right=(3, 4, 5, 7, 8),
        )
    )
    return lines


def render_experiment(report: cpb.ExperimentReport) -> str:
    """The experiment as tables: warnings first, then who is compared, the sample-ratio
    check, each metric (verdict in words and why, arms, the anytime-valid difference, p-values,
    sample sizes, Simpson warning, segments), the shadow report (a few examples) and drift."""
    lines = [f"WARNING: {_clean(w)}" for w in report.warnings]
    lines.extend(_header_lines(report))
    lines.append("")
    lines.extend(_srm_lines(report))
    if report.metrics:
        for metric in report.metrics:
            lines.append("")
            lines.extend(_metric_lines(report, metric))
    else:
        lines.append("")
        lines.append("metrics: no data (no outcome metrics configured or reported)")
    lines.append("")
    lines.append("== shadow ==")
    lines.append(
        render_shadow(report.shadow, max_examples=_REPORT_EXAMPLES, max_outliers=_REPORT_EXAMPLES)
    )
    lines.append("")
    lines.append("== drift ==")
    lines.extend(_drift_lines(report))
    return "\n".join(lines)

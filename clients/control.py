"""Operator client for the sidecar's Control API (`sidecar.v1.Control`).

    from clients.control import ControlClient, render_state
    with ControlClient("127.0.0.1:8501", token=token) as control:
        state = control.get_state()
        print(render_state(state))
        state = control.set_weights({"stable": 9500, "canary": 500}, reason="canary 5%",
                                    expected_revision=state.revision)

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
    "format_percent",
    "gate_status_name",
    "progress_bar",
    "render_audit",
    "render_drill",
    "render_rollout",
    "render_shadow",
    "render_state",
    "rollout_to_dict",
    "shadow_to_dict",
    "stage_kind_name",
    "state_to_dict",
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


def shadow_to_dict(report: cpb.ShadowReport) -> dict[str, Any]:
    """The shadow report as JSON-ready data."""
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


def render_shadow(report: cpb.ShadowReport) -> str:
    """The shadow comparison so far: counts, agreement, errors, latency, recent disagreements."""
    if not report.shadow_variant:
        return "shadow: no shadow variant configured"
    lines = [
        f"shadow variant {_clean(report.shadow_variant)}   "
        f"comparator {_clean(report.comparator) or _NONE}",
        f"sampled {report.sampled}   sent {report.sent}   dropped {report.dropped} "
        f"(max in flight reached)   in flight {report.in_flight}",
    ]
    if report.compared:
        lines.append(
            f"compared {report.compared}   agreed {report.agreed}   "
            f"agreement {report.agreement_rate * 100:.2f}%"
        )
    else:
        lines.append("compared 0   agreement n/a (nothing compared yet)")
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
    if report.examples:
        lines.append("")
        lines.append(f"recent disagreements ({len(report.examples)}, newest last):")
        rows = [
            [
                _when(d.unix_time),
                d.request_id or _NONE,
                d.targeting_key or _NONE,
                d.primary_variant or _NONE,
                d.detail,
            ]
            for d in report.examples
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

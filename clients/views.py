"""Views of the Control API's protos: the one place that names fields and formats numbers.

Two kinds of view, both pure (no I/O, no clock):

- `*_to_dict`: a proto as plain JSON-ready data for scripts (`sidecarctl --output json`):
  integers stay integers, times come also as ISO 8601, infinite or NaN numbers become None,
  enums as names (SHIP_B, PASS, PROMOTE_TO_CANARY, ...).
- text for people: numbers as percentages, p-values, durations and times (`pct`, `when`,
  `p_value_text`, ...), enum names in words (`verdict_text`, `recommendation_text`), and
  the rows of the tables both renderers draw (`arm_cells`, `segment_rows`, `srm_rows`,
  `drift_rows`, `outlier_rows`, `example_rows`).

The renderers draw from these: `clients.render_text` (terminal tables) and
`clients.report_html` (the HTML page). A new field shown to operators is named here once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message

from sidecar._proto.sidecar.v1 import control_pb2 as cpb

__all__ = [
    "ACTIVE_PHASES",
    "NONE",
    "NO_DATA",
    "SegmentRow",
    "arm_cells",
    "arm_headers",
    "arm_letter",
    "audit_entry_to_dict",
    "current_stage",
    "drift_rows",
    "drill_to_dict",
    "duration_text",
    "effect_interval",
    "estimate_pct",
    "estimate_to_dict",
    "example_rows",
    "expected_time_text",
    "experiment_to_dict",
    "finite",
    "format_percent",
    "gate_status_name",
    "iso",
    "level",
    "metric_effect_text",
    "metric_to_dict",
    "metric_value_text",
    "ms",
    "number_text",
    "outlier_rows",
    "p_value_text",
    "parse_diff",
    "pct",
    "per_user_text",
    "plan_text",
    "recommendation_name",
    "recommendation_text",
    "role",
    "rollout_phase",
    "rollout_to_dict",
    "seconds_text",
    "segment_rows",
    "shadow_to_dict",
    "sig",
    "signed_pct",
    "srm_rows",
    "stage_kind_name",
    "state_to_dict",
    "unit_text",
    "users_text",
    "value_interval",
    "verdict_label",
    "verdict_name",
    "verdict_text",
    "verdict_variant",
    "when",
]

#: Shown for a missing value (an empty name, NaN, no time).
NONE = "—"
NO_DATA = "no data"  # a section, segment or arm with nothing counted yet


# -- numbers and times -------------------------------------------------------------------------


def finite(value: float) -> float | None:
    """The number, or None when it is infinite or NaN (JSON has neither)."""
    return value if math.isfinite(value) else None


def iso(unix_time: float) -> str | None:
    """A unix time as ISO 8601 in UTC (`2023-11-14T22:13:20Z`); None when unset (<= 0)."""
    if unix_time <= 0 or not math.isfinite(unix_time):
        return None
    moment = datetime.fromtimestamp(unix_time, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def when(unix_time: float) -> str:
    """A unix time for people: ISO 8601, or — when unset."""
    return iso(unix_time) or NONE


def format_percent(bp: int) -> str:
    """Basis points as a percentage without needless zeros: 500 -> "5%", 50 -> "0.5%"."""
    text = f"{bp / 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def pct(fraction: float, digits: int = 2) -> str:
    """0.9 -> "90.00%" (— for NaN or infinity)."""
    return f"{fraction * 100:.{digits}f}%" if math.isfinite(fraction) else NONE


def signed_pct(fraction: float) -> str:
    """0.05 -> "+5.00%" (— for NaN or infinity)."""
    return f"{fraction * 100:+.2f}%" if math.isfinite(fraction) else NONE


def level(estimate: cpb.Estimate, default: float = 0.95) -> str:
    """The interval's confidence as "95%" (`default` when the estimate has none)."""
    value = estimate.level if 0 < estimate.level < 1 else default
    return f"{value * 100:g}%"


def estimate_pct(estimate: cpb.Estimate) -> str:
    """`90.00% [86.12%, 93.01%] (95% wilson)`."""
    method = f" {estimate.method}" if estimate.method else ""
    return (
        f"{pct(estimate.value)} [{pct(estimate.lower)}, {pct(estimate.upper)}] "
        f"({level(estimate)}{method})"
    )


def ms(seconds: float) -> str:
    """0.0123 -> "12.3 ms"."""
    return f"{seconds * 1000:.1f} ms"


def sig(value: float) -> str:
    """A number with 4 significant digits (whole above 1e5; — for NaN or infinity)."""
    if not math.isfinite(value):
        return NONE
    return f"{value:.0f}" if abs(value) >= 1e5 else f"{value:.4g}"


def p_value_text(p: float) -> str:
    """A p-value for people: 0.0312, 4.9e-07 below 0.0001 (— when missing)."""
    if not math.isfinite(p):
        return NONE
    return f"{p:.1e}" if 0 < p < 1e-4 else f"{p:.4f}"


def metric_value_text(kind: str, value: float) -> str:
    """A rate (bool metrics) as a percentage, a mean (numeric metrics) with 4 digits."""
    return pct(value) if kind == "bool" else sig(value)


def metric_effect_text(kind: str, value: float) -> str:
    """A difference with its sign: percentage points for rates, plain for means."""
    if not math.isfinite(value):
        return NONE
    return f"{value * 100:+.2f} pp" if kind == "bool" else f"{value:+.4g}"


def effect_interval(kind: str, estimate: cpb.Estimate) -> str:
    """A difference's interval: `[+0.20 pp, +2.80 pp]`; `[no interval yet]` for the
    placeholder a test has before its first evaluated look (a rate's [-100 pp, +100 pp],
    or an unbounded interval)."""
    lo, hi = estimate.lower, estimate.upper
    if not (math.isfinite(lo) and math.isfinite(hi)) or (kind == "bool" and lo <= -1 <= 1 <= hi):
        return "[no interval yet]"
    lower = metric_effect_text(kind, estimate.lower)
    upper = metric_effect_text(kind, estimate.upper)
    return f"[{lower}, {upper}]"


def value_interval(kind: str, estimate: cpb.Estimate) -> str:
    """A rate's or mean's interval: `[10.12%, 11.90%]`."""
    return f"[{metric_value_text(kind, estimate.lower)}, {metric_value_text(kind, estimate.upper)}]"


def duration_text(seconds: float) -> str:
    """A human span: 45s, 6m05s, 2h03m."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def seconds_text(seconds: float) -> str:
    """Below a second in ms ("450.0 ms"), else "1.50 s"."""
    return ms(seconds) if seconds < 1 else f"{seconds:.2f} s"


def number_text(value: float) -> str:
    """A gate's value or threshold: whole numbers as such, else 4 significant digits."""
    if not math.isfinite(value):
        return NONE
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


# -- enum names --------------------------------------------------------------------------------

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
_VERDICTS: dict[int, tuple[str, str]] = {
    cpb.VERDICT_SHIP_B: ("SHIP_B", "Ship B"),
    cpb.VERDICT_KEEP_A: ("KEEP_A", "Keep A"),
    cpb.VERDICT_EQUIVALENT: ("EQUIVALENT", "Equivalent"),
    cpb.VERDICT_CONTINUE: ("CONTINUE", "Continue"),
    cpb.VERDICT_BLOCKED: ("BLOCKED", "Blocked"),
}

#: Phases in which a rollout plan is in progress; the others are final (or NONE: never ran).
ACTIVE_PHASES = frozenset({"RUNNING", "PAUSED"})


def recommendation_name(recommendation: int) -> str | None:
    """PROMOTE_TO_CANARY, INVESTIGATE_DISAGREEMENT, ... (None when unspecified)."""
    entry = _RECOMMENDATIONS.get(recommendation)
    return entry[0] if entry else None


def recommendation_text(recommendation: int) -> str | None:
    """The shadow recommendation in words, e.g. "promote to canary" (None when unspecified)."""
    entry = _RECOMMENDATIONS.get(recommendation)
    return entry[1] if entry else None


def stage_kind_name(kind: int) -> str:
    """A stage kind as written in plan files: shadow, canary, promote ("unspecified" else)."""
    return _STAGE_KINDS.get(kind, "unspecified")


def gate_status_name(status: int) -> str:
    """PASS, FAIL or WAIT ("UNSPECIFIED" for anything else)."""
    return _GATE_STATUSES.get(status, "UNSPECIFIED")


def verdict_name(verdict: int) -> str:
    """SHIP_B, KEEP_A, EQUIVALENT, CONTINUE or BLOCKED ("UNSPECIFIED" for anything else)."""
    entry = _VERDICTS.get(verdict)
    return entry[0] if entry else "UNSPECIFIED"


def verdict_text(verdict: int) -> str:
    """The verdict in words: Ship B, Keep A, Equivalent, Continue, Blocked (or "no verdict")."""
    entry = _VERDICTS.get(verdict)
    return entry[1] if entry else "no verdict"


def verdict_variant(metric: cpb.MetricResult, report: cpb.ExperimentReport) -> str:
    """The variant a verdict names: B's for Ship B, A's for Keep A, else empty."""
    if metric.verdict == cpb.VERDICT_SHIP_B:
        return report.treatment_variant
    if metric.verdict == cpb.VERDICT_KEEP_A:
        return report.control_variant
    return ""


def verdict_label(metric: cpb.MetricResult, report: cpb.ExperimentReport) -> str:
    """The verdict with the variant it names: "Ship B (canary)", "Keep A (stable)", ..."""
    text = verdict_text(metric.verdict)
    variant = verdict_variant(metric, report)
    return f"{text} ({variant})" if variant else text


def role(flag: cpb.FlagState, variant: str) -> str | None:
    """The variant's role in the flag: "stable", "canary" or None."""
    if variant and variant == flag.stable_variant:
        return "stable"
    if variant and variant == flag.canary_variant:
        return "canary"
    return None


def rollout_phase(rollout: cpb.Rollout) -> str:
    """The rollout's phase, NONE when no rollout has run."""
    return rollout.phase or "NONE"


def current_stage(rollout: cpb.Rollout) -> cpb.RolloutStage | None:
    """The plan stage the rollout is at (None past the end or without a plan)."""
    stages = rollout.plan.stages
    return stages[rollout.stage_index] if 0 <= rollout.stage_index < len(stages) else None


def arm_letter(report: cpb.ExperimentReport, variant: str) -> str:
    """A for the control variant, B for the treatment, — for anything else."""
    if variant and variant == report.control_variant:
        return "A"
    if variant and variant == report.treatment_variant:
        return "B"
    return NONE


# -- state and audit ---------------------------------------------------------------------------


def _promotion_to_dict(p: cpb.Promotion) -> dict[str, Any]:
    return {
        "at": iso(p.unix_time),
        "unix_time": p.unix_time,
        "principal": p.principal,
        "from_variant": p.from_variant,
        "to_variant": p.to_variant,
        "reason": p.reason,
        "reverted": p.reverted,
    }


def _shadow_settings_to_dict(state: cpb.State) -> dict[str, Any] | None:
    if not (state.HasField("shadow") and state.shadow.variant):
        return None
    return {
        "variant": state.shadow.variant,
        "sample_bp": state.shadow.sample_bp,
        "max_in_flight": state.shadow.max_in_flight,
        "deadline_seconds": state.shadow.deadline_seconds,
        "comparator": state.shadow.comparator,
    }


def state_to_dict(state: cpb.State) -> dict[str, Any]:
    """The state as plain JSON-ready data (integers stay integers, times also as ISO 8601)."""
    flag = state.flag
    return {
        "model": state.model,
        "revision": state.revision,
        "updated_at": iso(state.updated_unix_time),
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
                "role": role(flag, v.name),
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
        "user_override_count": max(flag.user_override_count, len(flag.user_overrides)),
        "segment_rules": [{"segment": r.segment, "variant": r.variant} for r in flag.segment_rules],
        "rules_suspended": flag.rules_suspended,
        "rules_suspended_reason": flag.rules_suspended_reason,
        "segments": list(flag.segments),
        "shadow": _shadow_settings_to_dict(state),
        "promotions": [_promotion_to_dict(p) for p in state.promotions],
        "promotion_count": max(state.promotion_count, len(state.promotions)),
        "warnings": list(state.warnings),
        "fleet": {
            "members_live": state.fleet_members_live,
            "members_applied": state.fleet_members_applied,
            "not_applied": list(state.fleet_not_applied),
        }
        if state.fleet
        else None,
    }


def models_to_dict(answer: cpb.ListModelsResponse) -> dict[str, Any]:
    """The routed models with their flags in force, JSON-ready."""
    return {
        "models": [
            {
                "name": m.name,
                "primary": m.primary,
                "flag_key": m.flag_key,
                "stable": m.stable,
                "canary": m.canary or None,
                "weights": dict(m.weights),
                "kill_switch": m.kill_switch,
                "revision": m.revision,
            }
            for m in answer.models
        ]
    }


def fleet_to_dict(answer: cpb.ListFleetMembersResponse) -> dict[str, Any]:
    """The fleet's members, JSON-ready (times also as ISO 8601)."""
    return {
        "fleet": answer.fleet or None,
        "revision": answer.revision,
        "members": [
            {
                "member_id": m.member_id,
                "host": m.host,
                "version": m.version,
                "applied_revision": m.applied_revision,
                "lag": m.lag,
                "ready": m.ready,
                "live": m.live,
                "last_seen": iso(m.last_seen_unix_time),
                "last_seen_unix_time": m.last_seen_unix_time,
                "control_address": m.control_address,
            }
            for m in answer.members
        ],
    }


def parse_diff(diff_json: str) -> Any:
    """An audit entry's `diff_json` parsed ({field: [before, after]}); the text if not JSON."""
    try:
        return json.loads(diff_json) if diff_json else {}
    except ValueError:
        return diff_json


def audit_entry_to_dict(entry: cpb.AuditEntry) -> dict[str, Any]:
    """One audit entry as JSON-ready data; `diff` is the parsed {field: [before, after]}
    (`truncated`: the server clipped the reason or the diff to fit its answer)."""
    return {
        "at": iso(entry.unix_time),
        "unix_time": entry.unix_time,
        "principal": entry.principal,
        "method": entry.method,
        "reason": entry.reason,
        "revision_before": entry.revision_before,
        "revision_after": entry.revision_after,
        "diff": parse_diff(entry.diff_json),
        "truncated": entry.truncated,
    }


# -- shadow ------------------------------------------------------------------------------------


def estimate_to_dict(estimate: cpb.Estimate) -> dict[str, Any]:
    """An Estimate as JSON-ready data; infinite or NaN numbers become None."""
    return {
        "value": finite(estimate.value),
        "lower": finite(estimate.lower),
        "upper": finite(estimate.upper),
        "level": finite(estimate.level),
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


def _latency_to_dict(latency: cpb.LatencySummary) -> dict[str, Any]:
    return {
        "count": latency.count,
        "primary_p50_seconds": latency.primary_p50_seconds,
        "primary_p95_seconds": latency.primary_p95_seconds,
        "shadow_p50_seconds": latency.shadow_p50_seconds,
        "shadow_p95_seconds": latency.shadow_p95_seconds,
        "ratio_p50": latency.ratio_p50,
        "ratio_p95": latency.ratio_p95,
    }


def _outlier_to_dict(o: cpb.LatencyOutlier) -> dict[str, Any]:
    return {
        "at": iso(o.unix_time),
        "unix_time": o.unix_time,
        "request_id": o.request_id,
        "targeting_key": o.targeting_key,
        "primary_seconds": o.primary_seconds,
        "shadow_seconds": o.shadow_seconds,
        "ratio": finite(o.ratio),
    }


def _example_to_dict(d: cpb.Disagreement) -> dict[str, Any]:
    return {
        "at": iso(d.unix_time),
        "unix_time": d.unix_time,
        "request_id": d.request_id,
        "targeting_key": d.targeting_key,
        "primary_variant": d.primary_variant,
        "detail": d.detail,
        "primary_output": d.primary_output,
        "shadow_output": d.shadow_output,
    }


def shadow_to_dict(report: cpb.ShadowReport) -> dict[str, Any]:
    """The shadow report as JSON-ready data (with its analysis and recommendation)."""
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
        "error_rate": finite(report.error_rate),
        "primary_error_rate": finite(report.primary_error_rate),
        "recommendation": recommendation_name(report.recommendation),
        "reasons": list(report.reasons),
        "noise": _noise_to_dict(report),
        "errors_by_status": dict(sorted(report.errors_by_status.items())),
        "latency": _latency_to_dict(report.latency),
        "latency_outliers": [_outlier_to_dict(o) for o in report.latency_outliers],
        "examples": [_example_to_dict(d) for d in report.examples],
    }


def outlier_rows(outliers: Sequence[cpb.LatencyOutlier]) -> list[list[str]]:
    """Slowest shadow calls: time, request, key, primary, shadow, ratio."""
    return [
        [
            when(o.unix_time),
            o.request_id or NONE,
            o.targeting_key or NONE,
            ms(o.primary_seconds),
            ms(o.shadow_seconds),
            f"{o.ratio:.2f}x" if math.isfinite(o.ratio) else NONE,
        ]
        for o in outliers
    ]


def example_rows(examples: Sequence[cpb.Disagreement]) -> list[list[str]]:
    """Disagreements: time, request, key, primary variant, detail, primary and shadow output."""
    return [
        [
            when(d.unix_time),
            d.request_id or NONE,
            d.targeting_key or NONE,
            d.primary_variant or NONE,
            d.detail,
            d.primary_output or NONE,
            d.shadow_output or NONE,
        ]
        for d in examples
    ]


# -- rollouts and drills -----------------------------------------------------------------------


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
    name = rollout_phase(rollout)
    stage = current_stage(rollout)
    return {
        "phase": name,
        "active": name in ACTIVE_PHASES,
        "revision": rollout.revision,
        "stage_index": rollout.stage_index,
        "stage_name": rollout.stage_name or None,
        "stage_kind": stage_kind_name(stage.kind) if stage is not None else None,
        "started_at": iso(rollout.started_unix_time),
        "started_unix_time": rollout.started_unix_time,
        "stage_started_at": iso(rollout.stage_started_unix_time),
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
                "value": finite(g.value),
                "threshold": finite(g.threshold),
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


def drill_to_dict(report: cpb.DrillReport) -> dict[str, Any]:
    """The drill report as JSON-ready data."""
    return {
        "rolled_back": report.rolled_back,
        "detection_seconds": report.detection_seconds,
        "revert_seconds": report.revert_seconds,
        "verdict_reason": report.verdict_reason,
        "restored_revision": report.restored_revision,
    }


# -- the experiment report ---------------------------------------------------------------------


def _arm_to_dict(arm: cpb.ArmResult) -> dict[str, Any]:
    return {
        "variant": arm.variant,
        "n": arm.n,
        "successes": arm.successes,
        "value": _optional_estimate(arm, "value"),
        "std_dev": finite(arm.std_dev),
        "users": arm.users,
        "keyless": arm.keyless,
        "outcomes_per_user": arm.n / arm.users if arm.users else None,
    }


def _segment_to_dict(segment: cpb.SegmentResult) -> dict[str, Any]:
    return {
        "segment": segment.segment,
        "control": _arm_to_dict(segment.control),
        "treatment": _arm_to_dict(segment.treatment),
        "difference": _optional_estimate(segment, "difference"),
        "p_value": finite(segment.p_value),
        "adjusted_p_value": finite(segment.adjusted_p_value),
        "significant": segment.significant,
        "winner": segment.winner or None,
    }


def _look_to_dict(look: cpb.LookPoint) -> dict[str, Any]:
    return {
        "at": iso(look.unix_time),
        "unix_time": look.unix_time,
        "n_control": look.n_control,
        "n_treatment": look.n_treatment,
        "difference": finite(look.difference),
        "lower": finite(look.lower),
        "upper": finite(look.upper),
        "p_value": finite(look.p_value),
    }


def metric_to_dict(metric: cpb.MetricResult) -> dict[str, Any]:
    """One metric's result as JSON-ready data (verdict as SHIP_B / KEEP_A / ...)."""
    return {
        "metric": metric.metric,
        "kind": metric.kind,
        "higher_is_better": metric.higher_is_better,
        "minimum_effect": finite(metric.minimum_effect),
        "verdict": verdict_name(metric.verdict),
        "verdict_text": verdict_text(metric.verdict),
        "reason": metric.reason,
        "control": _arm_to_dict(metric.control),
        "treatment": _arm_to_dict(metric.treatment),
        "difference": _optional_estimate(metric, "difference"),
        "relative_lift": _optional_estimate(metric, "relative_lift"),
        "p_value": finite(metric.p_value),
        "fixed_horizon_p_value": finite(metric.fixed_horizon_p_value),
        "additional_per_arm": metric.additional_per_arm if metric.additional_per_arm >= 0 else None,
        "planned_per_arm": metric.planned_per_arm,
        "correction": metric.correction or None,
        "segments": [_segment_to_dict(s) for s in metric.segments],
        "simpson_warning": metric.simpson_warning or None,
        "history": [_look_to_dict(look) for look in metric.history],
        "tau_squared": finite(metric.tau_squared),
        "alpha": finite(metric.alpha),
        "unit": metric.unit or None,
        "design_effect": finite(metric.design_effect),
        "planned_control": metric.planned_control,
        "planned_treatment": metric.planned_treatment,
        "expected_seconds": metric.expected_seconds if metric.expected_seconds >= 0 else None,
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
                "observed_share": finite(a.observed_share),
                "expected_share": finite(a.expected_share),
            }
            for a in srm.arms
        ],
        "chi_square": finite(srm.chi_square),
        "p_value": finite(srm.p_value),
        "threshold": finite(srm.threshold),
        "mismatch": srm.mismatch,
        "detail": srm.detail,
    }


def _mix_to_dict(report: cpb.ExperimentReport) -> dict[str, Any] | None:
    if not report.HasField("segment_mix"):
        return None
    mix = report.segment_mix
    return {
        "p_value": finite(mix.p_value),
        "chi_square": finite(mix.chi_square),
        "checked": mix.checked,
        "mismatch": mix.mismatch,
        "detail": mix.detail,
    }


def _feature_to_dict(f: cpb.DriftFeature) -> dict[str, Any]:
    return {
        "name": f.name,
        "kind": f.kind,
        "variant": f.variant or None,
        "reference_n": f.reference_n,
        "current_n": f.current_n,
        "psi": finite(f.psi),
        "level": f.level,
        "ks_statistic": finite(f.ks_statistic),
        "ks_p_value": finite(f.ks_p_value),
        "categorical": f.categorical,
        "edges": [finite(e) for e in f.edges],
        "reference_share": [finite(s) for s in f.reference_share],
        "current_share": [finite(s) for s in f.current_share],
    }


def _drift_to_dict(report: cpb.ExperimentReport) -> dict[str, Any] | None:
    if not report.HasField("drift"):
        return None
    drift = report.drift
    return {
        "enabled": drift.enabled,
        "moderate_threshold": finite(drift.moderate_threshold),
        "major_threshold": finite(drift.major_threshold),
        "sampled": drift.sampled,
        "dropped": drift.dropped,
        "reference": drift.reference,
        "worst_level": drift.worst_level or None,
        "features": [_feature_to_dict(f) for f in drift.features],
    }


def experiment_to_dict(report: cpb.ExperimentReport) -> dict[str, Any]:
    """The experiment report as JSON-ready data: infinite or NaN numbers become None, times
    come also as ISO 8601, verdicts as SHIP_B / KEEP_A / EQUIVALENT / CONTINUE / BLOCKED."""
    shadow = report.shadow
    return {
        "model": report.model,
        "generated_at": iso(report.generated_unix_time),
        "generated_unix_time": report.generated_unix_time,
        "epoch": report.epoch,
        "started_at": iso(report.started_unix_time),
        "started_unix_time": report.started_unix_time,
        "revision": report.revision,
        "control_variant": report.control_variant,
        "treatment_variant": report.treatment_variant,
        "unit": report.unit,
        "alpha": finite(report.alpha),
        "looks": report.looks,
        "last_look_at": iso(report.last_look_unix_time),
        "last_look_unix_time": report.last_look_unix_time,
        "warnings": list(report.warnings),
        "srm": _srm_to_dict(report),
        "segment_mix": _mix_to_dict(report),
        "metrics": [metric_to_dict(m) for m in report.metrics],
        "shadow": shadow_to_dict(shadow) if shadow.shadow_variant else None,
        "drift": _drift_to_dict(report),
    }


def arm_headers(kind: str, level_text: str) -> list[str]:
    """The headers of `arm_cells` (after the arm letter), for both renderers."""
    return [
        "variant",
        "n",
        "users",
        "outcomes per user",
        "successes" if kind == "bool" else "std dev",
        "rate" if kind == "bool" else "mean",
        f"{level_text} interval",
    ]


def per_user_text(arm: cpb.ArmResult) -> str:
    """Outcomes per user (keyless requests count as a user each): `9.8`, or the no-data mark."""
    return f"{arm.n / arm.users:.1f}" if arm.users else NONE


def users_text(arm: cpb.ArmResult) -> str:
    """Users, with the keyless requests among them shown apart: `812 (40 keyless)`."""
    if not arm.users:
        return "0"
    return f"{arm.users} ({arm.keyless} keyless)" if arm.keyless else str(arm.users)


def arm_cells(kind: str, arm: cpb.ArmResult) -> list[str]:
    """An arm's table cells (`arm_headers`): variant, n, users, outcomes per user, successes
    (rates) or std dev (means), value, interval."""
    has_value = arm.HasField("value") and math.isfinite(arm.value.value)
    return [
        arm.variant or NONE,
        str(arm.n),
        users_text(arm),
        per_user_text(arm),
        str(arm.successes) if kind == "bool" else sig(arm.std_dev),
        metric_value_text(kind, arm.value.value) if has_value else NO_DATA,
        value_interval(kind, arm.value) if has_value else NO_DATA,
    ]


def plan_text(metric: cpb.MetricResult) -> str:
    """The plan for the actual split: `A 293,084 / B 15,426 outcomes`, or why there is none."""
    if metric.planned_control <= 0 or metric.planned_treatment <= 0:
        if metric.kind == "bool":
            return "n/a (no baseline and no control outcomes yet)"
        return "n/a (needs two outcomes per arm for a variance)"
    return f"A {metric.planned_control:,} / B {metric.planned_treatment:,} outcomes"


def expected_time_text(metric: cpb.MetricResult) -> str:
    """Expected time to a decision at the current traffic: `about 2h03m`, `decided`, or
    why it is unknown."""
    if metric.verdict in (cpb.VERDICT_SHIP_B, cpb.VERDICT_KEEP_A, cpb.VERDICT_EQUIVALENT):
        return "decided"
    if metric.verdict == cpb.VERDICT_BLOCKED:
        return "blocked (a data-quality check fails)"
    if metric.expected_seconds < 0 or not math.isfinite(metric.expected_seconds):
        return "unknown (no plan or no outcomes yet)"
    if metric.expected_seconds == 0:
        return "the plan is reached: a verdict is due at any look"
    return f"about {duration_text(metric.expected_seconds)} at the current traffic"


def unit_text(metric: cpb.MetricResult) -> str:
    """`user (design effect 2.4)` or `request`."""
    unit = metric.unit or "request"
    if unit == "user" and math.isfinite(metric.design_effect):
        return f"user (design effect {metric.design_effect:.2f})"
    return unit


@dataclass(frozen=True)
class SegmentRow:
    """One segment of a metric, as both renderers show it (`significant` is drawn by each)."""

    segment: str
    n: str  # "n_A / n_B"
    values: str  # "value_A / value_B"
    difference: str  # "+1.50 pp [-0.10 pp, +3.10 pp]"
    p: str
    adjusted_p: str
    significant: bool
    winner: str


def segment_rows(kind: str, segments: Sequence[cpb.SegmentResult]) -> list[SegmentRow]:
    """A metric's segments, in order, formatted for a table."""
    rows = []
    for s in segments:
        c, t = s.control, s.treatment
        empty = c.n == 0 or t.n == 0
        difference = (
            f"{metric_effect_text(kind, s.difference.value)} {effect_interval(kind, s.difference)}"
            if s.HasField("difference") and not empty
            else NO_DATA
        )
        rows.append(
            SegmentRow(
                segment=s.segment or NONE,
                n=f"{c.n} / {t.n}",
                values=(
                    f"{metric_value_text(kind, c.value.value) if c.n else NO_DATA} / "
                    f"{metric_value_text(kind, t.value.value) if t.n else NO_DATA}"
                ),
                difference=difference,
                p=NO_DATA if empty else p_value_text(s.p_value),
                adjusted_p=NO_DATA if empty else p_value_text(s.adjusted_p_value),
                significant=s.significant,
                winner=s.winner or NONE,
            )
        )
    return rows


def srm_rows(report: cpb.ExperimentReport) -> list[list[str]]:
    """The sample-ratio arms: variant, arm letter, observed, observed share, expected share."""
    return [
        [
            a.variant or NONE,
            arm_letter(report, a.variant),
            str(a.observed),
            pct(a.observed_share),
            pct(a.expected_share),
        ]
        for a in report.srm.arms
    ]


def drift_rows(drift: cpb.DriftReport) -> list[list[str]]:
    """Drift per feature: name, kind, variant, n ref, n cur, PSI, level, KS D, KS p."""
    return [
        [
            f.name or NONE,
            f.kind or NONE,
            f.variant or NONE,
            str(f.reference_n),
            str(f.current_n),
            f"{f.psi:.4f}" if math.isfinite(f.psi) else NONE,
            f.level or NONE,
            f"{f.ks_statistic:.4f}" if math.isfinite(f.ks_statistic) else NONE,
            p_value_text(f.ks_p_value),
        ]
        for f in drift.features
    ]

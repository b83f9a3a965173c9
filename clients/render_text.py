"""Text renderers: the Control API's protos as tables and lines for a terminal.

    from clients.control import ControlClient
    from clients.render_text import render_state
    with ControlClient("127.0.0.1:8501", token=token) as control:
        print(render_state(control.get_state()))

Every number, time and name comes from `clients.views` (the HTML report draws from the same
views); this module only lays them out. Text that comes from the server is shown with its
control characters escaped (`_clean`), so a reason or a variant name cannot move the cursor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

from clients.views import (
    ACTIVE_PHASES,
    NONE,
    arm_cells,
    arm_headers,
    current_stage,
    drift_rows,
    duration_text,
    effect_interval,
    estimate_pct,
    example_rows,
    expected_time_text,
    format_percent,
    gate_status_name,
    level,
    metric_effect_text,
    ms,
    number_text,
    outlier_rows,
    p_value_text,
    parse_diff,
    pct,
    plan_text,
    recommendation_text,
    role,
    rollout_phase,
    seconds_text,
    segment_rows,
    sig,
    signed_pct,
    srm_rows,
    unit_text,
    verdict_text,
    verdict_variant,
    when,
)
from sidecar._proto.sidecar.v1 import control_pb2 as cpb

__all__ = [
    "progress_bar",
    "render_audit",
    "render_drill",
    "render_experiment",
    "render_overrides",
    "render_rollout",
    "render_shadow",
    "render_state",
]

_BAR_WIDTH = 20
_GATE_DETAIL_WIDTH = 100  # the table's DETAIL column; the full text is in the JSON output
#: Shadow sections of the experiment tables show this many disagreements and slow calls.
_REPORT_EXAMPLES = 3


# -- layout --------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Text safe to print on a terminal: control characters shown as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


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


# -- state and audit -----------------------------------------------------------------------


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


def _variant_table(state: cpb.State) -> str:
    """Each variant with its role, weight, requests served, address and model."""
    flag = state.flag
    rows = []
    for v in state.variants:
        bp = flag.weights.get(v.name, 0)
        rows.append(
            [
                v.name,
                role(flag, v.name) or NONE,
                format_percent(bp),
                f"{bp} bp",
                str(v.served),
                v.address or NONE,
                v.model_name or NONE,
                v.model_version or NONE,
            ]
        )
    known = {v.name for v in state.variants}
    for name, bp in sorted(flag.weights.items()):  # weights naming no listed variant
        if name not in known:
            rows.append(
                [name, role(flag, name) or NONE, format_percent(bp), f"{bp} bp"] + [NONE] * 4
            )
    return _table(
        ["VARIANT", "ROLE", "WEIGHT", "BP", "SERVED", "ADDRESS", "MODEL", "VERSION"],
        rows,
        right=(2, 3, 4),
    )


def _suspended_line(flag: cpb.FlagState) -> list[str]:
    """The rules' suspension (after a rollback), or nothing."""
    if not flag.rules_suspended:
        return []
    why = _clean(flag.rules_suspended_reason) or "no reason recorded"
    return [
        f"RULES SUSPENDED since {why}",
        "  the user overrides and segment rules below are kept but not applied (their "
        "requests take the weights); `sidecarctl rules restore` applies them again",
    ]


def _rule_lines(flag: cpb.FlagState) -> list[str]:
    """User overrides, segment rules (marked when suspended) and the known segments."""
    lines = _suspended_line(flag)
    mark = " (suspended)" if flag.rules_suspended else ""
    count = max(flag.user_override_count, len(flag.user_overrides))
    if count > len(flag.user_overrides):
        lines.append(
            f"user overrides{mark}: {count}, the first {len(flag.user_overrides)} by targeting "
            "key (all: `sidecarctl override list`):"
        )
    elif flag.user_overrides:
        lines.append(f"user overrides{mark} (targeting key -> variant):")
        lines.extend(
            f"  {_clean(key)} -> {_clean(variant)}"
            for key, variant in sorted(flag.user_overrides.items())
        )
    else:
        lines.append("user overrides: none")
    if flag.segment_rules:
        lines.append(f"segment rules{mark} (segment -> variant):")
        lines.extend(f"  {_clean(r.segment)} -> {_clean(r.variant)}" for r in flag.segment_rules)
    else:
        lines.append("segment rules: none")
    if flag.segments:
        lines.append(f"known segments: {', '.join(_clean(s) for s in flag.segments)}")
    return lines


def render_overrides(overrides: Iterable[cpb.UserOverride]) -> str:
    """User overrides as a table (targeting key -> variant), in the order given."""
    rows = [[_clean(o.targeting_key), _clean(o.variant)] for o in overrides]
    if not rows:
        return "user overrides: none"
    return _table(["TARGETING KEY", "VARIANT"], rows)


def _shadow_settings_line(state: cpb.State) -> str:
    shadow = state.shadow
    if not (state.HasField("shadow") and shadow.variant):
        return "shadow: off"
    return (
        f"shadow: {_clean(shadow.variant)} gets a copy of {format_percent(shadow.sample_bp)} "
        f"({shadow.sample_bp} bp) of requests, at most {shadow.max_in_flight} in flight, "
        f"deadline {shadow.deadline_seconds:g}s, comparator {_clean(shadow.comparator)}"
    )


def _promotion_lines(state: cpb.State) -> list[str]:
    if not state.promotions:
        return []
    lines = ["promotions (newest last):"]
    for p in state.promotions[-3:]:
        verb = "reverted" if p.reverted else "promoted"
        lines.append(
            f"  {when(p.unix_time)} {verb} {_clean(p.from_variant)} -> "
            f"{_clean(p.to_variant)} by {_clean(p.principal) or NONE}: "
            f'"{_clean(p.reason)}"'
        )
    return lines


def _last_change_line(state: cpb.State) -> str:
    change = f"last change: revision {state.revision}"
    if state.updated_unix_time > 0 or state.updated_by:
        change += f" at {when(state.updated_unix_time)} by {_clean(state.updated_by) or NONE}"
    if state.update_reason:
        change += f': "{_clean(state.update_reason)}"'
    return change


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
        f"model {_clean(state.model) or NONE}   flag {_clean(flag.key) or NONE}   "
        f"default {_clean(flag.default_variant) or NONE}   revision {state.revision}"
    )
    lines.append("")
    lines.append(_variant_table(state))
    lines.append("")
    lines.extend(_rule_lines(flag))
    lines.append(_shadow_settings_line(state))
    lines.extend(_promotion_lines(state))
    lines.append(_last_change_line(state))
    lines.extend(_fleet_lines(state))
    return "\n".join(lines)


def _fleet_lines(state: cpb.State) -> list[str]:
    """Fleet mode: how many live members hold this revision; who had not after a wait."""
    if not state.fleet:
        return []
    lines = [
        f"fleet: {state.fleet_members_applied} of {state.fleet_members_live} live members "
        f"at revision {state.revision}"
    ]
    if state.fleet_not_applied:
        names = ", ".join(_clean(m) for m in state.fleet_not_applied)
        lines.append(f"NOT APPLIED when the wait ended: {names}")
    return lines


def render_models(answer: cpb.ListModelsResponse) -> str:
    """One row per routed model: its flag, stable, canary, weights, kill switch, revision."""
    rows = [
        [
            _clean(m.name) + (" (primary)" if m.primary else ""),
            _clean(m.flag_key) or NONE,
            _clean(m.stable) or NONE,
            _clean(m.canary) or NONE,
            " ".join(f"{_clean(v)}={bp / 100:g}%" for v, bp in sorted(m.weights.items())) or NONE,
            "ON" if m.kill_switch else "off",
            str(m.revision),
        ]
        for m in answer.models
    ]
    return _table(
        ["MODEL", "FLAG", "STABLE", "CANARY", "WEIGHTS", "KILL", "REVISION"], rows, right=(6,)
    )


def render_fleet(answer: cpb.ListFleetMembersResponse, now: float) -> str:
    """One row per member: applied revision, lag, readiness, last seen."""
    if not answer.members:
        return f"not in a fleet (state.backend is not redis); revision {answer.revision}"
    rows = [
        [
            _clean(m.member_id),
            _clean(m.host) or NONE,
            _clean(m.version) or NONE,
            str(m.applied_revision),
            str(m.lag),
            "yes" if m.ready else "NO",
            "yes" if m.live else "NO",
            f"{max(0.0, now - m.last_seen_unix_time):.1f}s ago",
            _clean(m.control_address) or NONE,
        ]
        for m in answer.members
    ]
    head = f"fleet {_clean(answer.fleet)}   revision {answer.revision}   members {len(rows)}"
    table = _table(
        ["MEMBER", "HOST", "VERSION", "APPLIED", "LAG", "READY", "LIVE", "SEEN", "CONTROL"],
        rows,
        right=(3, 4),
    )
    return f"{head}\n\n{table}"


def _diff_text(diff_json: str) -> str:
    diff = parse_diff(diff_json)
    if not isinstance(diff, dict):
        return str(diff)
    clipped = diff.get("truncated") if set(diff) == {"truncated"} else None
    if isinstance(clipped, str):  # too large for one answer: the sidecar sent its start
        return f"(too large, clipped by the sidecar; --output json for more) {clipped[:300]}…"
    parts = []
    for field, change in diff.items():
        if isinstance(change, list) and len(change) == 2:
            before, after = (json.dumps(v, sort_keys=True) for v in change)
            parts.append(f"{field}: {before} -> {after}")
        else:
            parts.append(f"{field}: {json.dumps(change, sort_keys=True)}")
    return "; ".join(parts) or NONE


def render_audit(entries: Iterable[cpb.AuditEntry]) -> str:
    """Audit entries as a table, in the order given (the API returns oldest first)."""
    rows = [
        [
            when(e.unix_time),
            e.principal or NONE,
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


# -- shadow --------------------------------------------------------------------------------


def _noise_lines(report: cpb.ShadowReport) -> list[str]:
    if not report.HasField("noise"):
        return []
    noise = report.noise
    lines = [f"noise mirror (primary vs itself): compared {noise.compared}, agreed {noise.agreed}"]
    if noise.HasField("noise_disagreement"):
        lines.append(f"  own disagreement {_clean(estimate_pct(noise.noise_disagreement))}")
    if noise.HasField("candidate_disagreement"):
        lines.append(
            f"  candidate disagreement {_clean(estimate_pct(noise.candidate_disagreement))}"
        )
    if noise.HasField("adjusted_disagreement"):
        lines.append(
            "  noise-adjusted disagreement (candidate - noise) "
            f"{_clean(estimate_pct(noise.adjusted_disagreement))}"
        )
    return lines


def _error_rate_line(report: cpb.ShadowReport) -> str | None:
    if not (report.sent or report.error_rate or report.primary_error_rate):
        return None
    return (
        f"error rate: shadow {pct(report.error_rate)} of calls sent, "
        f"primary {pct(report.primary_error_rate)} over the same period"
    )


def _outlier_table(outliers: Sequence[cpb.LatencyOutlier]) -> str:
    rows = outlier_rows(outliers)
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
        f"comparator {_clean(report.comparator) or NONE}",
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
            agreement += f" [{pct(a.lower)}, {pct(a.upper)}] ({level(a)}{method} interval)"
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
            f"latency over {lat.count} pairs: primary p50 {ms(lat.primary_p50_seconds)} "
            f"p95 {ms(lat.primary_p95_seconds)}; shadow p50 {ms(lat.shadow_p50_seconds)} "
            f"p95 {ms(lat.shadow_p95_seconds)}; ratio of the p95s (the gate's measure) "
            f"{_ratio(lat.shadow_p95_seconds, lat.primary_p95_seconds)}; per-pair "
            f"shadow/primary p50 {lat.ratio_p50:.2f}x p95 {lat.ratio_p95:.2f}x"
        )
    outliers = list(report.latency_outliers)
    if max_outliers is not None:
        outliers = outliers[:max_outliers]
    if outliers:
        lines.append("")
        shown = _some_of(len(outliers), len(report.latency_outliers))
        lines.append(f"slowest shadow calls relative to the primary ({shown}):")
        lines.append(_outlier_table(outliers))
    examples = list(report.examples)
    if max_examples is not None:
        examples = examples[-max_examples:] if max_examples > 0 else []
    if examples:
        lines.append("")
        shown = _some_of(len(examples), len(report.examples))
        lines.append(f"recent disagreements ({shown}, newest last):")
        rows = [row[:5] for row in example_rows(examples)]  # the outputs: in the JSON
        lines.append(_table(["TIME", "REQUEST", "KEY", "PRIMARY", "DETAIL"], rows))
    return "\n".join(lines)


# -- rollouts and drills -------------------------------------------------------------------


def progress_bar(done: float, target: float, width: int = _BAR_WIDTH) -> str:
    """`[########------------]  40%`: done / target, floored (100% only once reached), capped."""
    fraction = 1.0 if target <= 0 else min(max(done / target, 0.0), 1.0)
    if not math.isfinite(fraction):
        fraction = 0.0
    filled = math.floor(fraction * width)
    percent = math.floor(fraction * 100)
    return f"[{'#' * filled}{'-' * (width - filled)}] {percent:>3}%"


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
            g.name or NONE,
            gate_status_name(g.status),
            number_text(g.value),
            number_text(g.threshold),
            _shorten(g.detail, _GATE_DETAIL_WIDTH) or NONE,
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
        f"p50 {ms(rollout.baseline_p50_seconds)}, p95 {ms(rollout.baseline_p95_seconds)}, "
        f"over {rollout.baseline_requests} requests"
    )


def render_rollout(rollout: cpb.Rollout, now: float | None = None) -> str:
    """What an operator watches: the phase, the plan as a ladder with the current stage
    marked, the stage's time and sample progress bars and its gates (details shortened to
    100 characters; `rollout_to_dict` has them whole), the last verdict, the stable baseline
    and the last message. `now` (unix time) adds how long ago it started."""
    phase = rollout_phase(rollout)
    if phase == "NONE":
        lines = ["no rollout has run"]
        if rollout.verdict:
            lines.append(f"last verdict: {_clean(rollout.verdict)}")
        return "\n".join(lines)
    stage = current_stage(rollout)
    started = f"started {when(rollout.started_unix_time)}"
    if now is not None and rollout.started_unix_time > 0:
        started += f" ({duration_text(now - rollout.started_unix_time)} ago)"
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


def render_drill(report: cpb.DrillReport) -> str:
    """The drill's outcome: rolled back or not, detection and revert times, the verdict."""
    if report.rolled_back:
        head = "drill PASSED: the failing canary got a rollback verdict and the Rollback path ran"
        revert = seconds_text(report.revert_seconds)
    else:
        head = (
            "drill FAILED: NO automatic rollback: the health checker did not reach a rollback "
            "verdict on a failing canary"
        )
        revert = "n/a"
    return "\n".join(
        [
            head,
            f"detection  {seconds_text(report.detection_seconds)}  (injected failure -> verdict)",
            f"revert     {revert}  (verdict -> all traffic on stable)",
            f"verdict    {_clean(report.verdict_reason) or NONE}",
            f"state restored as revision {report.restored_revision} "
            "(the routing from before the drill)",
        ]
    )


# -- the experiment report -----------------------------------------------------------------


def _verdict_headline(report: cpb.ExperimentReport, metric: cpb.MetricResult) -> str:
    """`SHIP B (canary)`: the verdict in capitals, the variant it names as written."""
    text = verdict_text(metric.verdict).upper()
    variant = verdict_variant(metric, report)
    return f"{text} ({_clean(variant)})" if variant else text


def _header_lines(report: cpb.ExperimentReport) -> list[str]:
    control = _clean(report.control_variant) or NONE
    treatment = _clean(report.treatment_variant) or NONE
    alpha = f"{report.alpha:g}" if report.alpha > 0 else NONE
    last = f", last at {when(report.last_look_unix_time)}" if report.looks else ""
    model = f"model {_clean(report.model)}: " if report.model else ""
    return [
        f"{model}experiment epoch {report.epoch}: control (A) {control} vs treatment (B) "
        f"{treatment}",
        f"started {when(report.started_unix_time)}   unit {_clean(report.unit) or NONE}   "
        f"alpha {alpha}   looks {report.looks}{last}",
        f"generated {when(report.generated_unix_time)}   revision {report.revision}",
    ]


def _srm_lines(report: cpb.ExperimentReport) -> list[str]:
    srm = report.srm
    if not report.HasField("srm") or not srm.arms:
        return ["sample ratio check: no data (no assigned requests yet)"]
    stats = (
        f"chi-square {'inf' if math.isinf(srm.chi_square) else sig(srm.chi_square)}, "
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
    lines.append(
        _table(
            ["VARIANT", "ARM", "OBSERVED", "OBSERVED SHARE", "EXPECTED SHARE"],
            srm_rows(report),
            (2, 3, 4),
        )
    )
    return lines


def _ratio(shadow: float, primary: float) -> str:
    if not (math.isfinite(shadow) and math.isfinite(primary)) or primary <= 0:
        return NONE
    return f"{shadow / primary:.2f}x"


def _mix_line(report: cpb.ExperimentReport) -> str:
    if not report.HasField("segment_mix"):
        return "segment mix check: no data (no declared segments or no users yet)"
    mix = report.segment_mix
    head = "MISMATCH: every aggregate verdict is blocked" if mix.mismatch else "ok"
    if not mix.checked:
        head = "not checked yet"
    return f"segment mix check: {head}: {_clean(mix.detail)}"


def _segment_rows(kind: str, segments: Sequence[cpb.SegmentResult]) -> list[list[str]]:
    return [
        [
            r.segment,
            r.n,
            r.values,
            r.difference,
            r.p,
            r.adjusted_p,
            "YES" if r.significant else "no",
            r.winner,
        ]
        for r in segment_rows(kind, segments)
    ]


def _metric_lines(report: cpb.ExperimentReport, m: cpb.MetricResult) -> list[str]:
    kind = m.kind or "number"
    direction = "higher is better" if m.higher_is_better else "lower is better"
    effect = metric_effect_text(kind, m.minimum_effect).lstrip("+")
    lines = [
        f"== metric {_clean(m.metric) or NONE} ({_clean(kind)}, {direction}, "
        f"minimum effect ±{effect}) ==",
        f"verdict: {_verdict_headline(report, m)}" + (f": {_clean(m.reason)}" if m.reason else ""),
    ]
    arm_level = level(m.control.value) if m.control.HasField("value") else "95%"
    lines.append(
        _table(
            ["ARM", *(h.upper() for h in arm_headers(kind, arm_level))],
            [["A", *arm_cells(kind, m.control)], ["B", *arm_cells(kind, m.treatment)]],
            right=(2, 4, 5, 6),
        )
    )
    lines.append(f"unit of analysis: {_clean(unit_text(m))}")  # users per arm: the table
    if m.HasField("difference"):
        d = m.difference
        method = f", {_clean(d.method)}" if d.method else ""
        lines.append(
            f"difference B - A: {metric_effect_text(kind, d.value)}, anytime-valid "
            f"{level(d, 1 - (m.alpha or report.alpha or 0.05))} interval "
            f"{effect_interval(kind, d)}{method}"
        )
    else:
        lines.append("difference B - A: no data yet")
    if m.HasField("relative_lift"):
        lift = m.relative_lift
        lines.append(
            f"relative lift: {signed_pct(lift.value)} [{signed_pct(lift.lower)}, "
            f"{signed_pct(lift.upper)}] (fixed-horizon interval: for reading, not deciding)"
        )
    lines.append(
        f"always-valid p {p_value_text(m.p_value)}   fixed-horizon p "
        f"{p_value_text(m.fixed_horizon_p_value)} (NOT valid under repeated looks)"
    )
    sizes = f"planned sample size for the split: {plan_text(m)}"
    if m.verdict == cpb.VERDICT_CONTINUE:
        if m.additional_per_arm >= 0:
            sizes += f"   still needed: about {m.additional_per_arm} more per arm"
        else:
            sizes += "   still needed: cannot be estimated yet"
    lines.append(sizes)
    lines.append(f"expected time to a decision: {expected_time_text(m)}")
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


def _drift_lines(report: cpb.ExperimentReport) -> list[str]:
    drift = report.drift
    if not report.HasField("drift") or not drift.enabled:
        return ["drift: disabled (no data)"]
    head = (
        f"drift: worst level {_clean(drift.worst_level) or NONE}   "
        f"PSI moderate >= {drift.moderate_threshold:g}, major >= {drift.major_threshold:g}   "
        f"sampled {drift.sampled}, dropped {drift.dropped}"
    )
    lines = [head]
    if drift.reference:
        lines.append(f"  compared with {_clean(drift.reference)}")
    if not drift.features:
        lines.append("  no features measured yet (no data)")
        return lines
    lines.append(
        _table(
            ["FEATURE", "KIND", "VARIANT", "N REF", "N CUR", "PSI", "LEVEL", "KS D", "KS P"],
            drift_rows(drift),
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
    lines.append(_mix_line(report))
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


def _some_of(shown: int, total: int) -> str:
    """`3 of 20` when only some are shown, else `20`."""
    return f"{shown} of {total}" if shown < total else str(total)

"""The pure parts of the bounds, without a server: the checks and clipping of
`sidecar.core.limits`, plan validation of non-finite numbers, the audit entry and report
fitting of the Control adapter."""

from __future__ import annotations

import json
import math

import pytest

from sidecar._proto.sidecar.v1 import control_pb2 as cpb
from sidecar.adapters.grpc.control import (
    answer_budget,
    audit_entry_message,
    decode_page_token,
    encode_page_token,
    first_overrides,
    fit_state,
)
from sidecar.adapters.grpc.report import fit_experiment_report, fit_shadow_report
from sidecar.app.ports import AuditEntry
from sidecar.core.limits import (
    TRUNCATED,
    LimitError,
    check_count,
    check_finite,
    check_text,
    clip,
    excerpt,
    utf8_len,
)
from sidecar.core.rollout import PlanError, Stage, StageKind, validate_plan
from sidecar.errors import InvalidRequest


def test_check_text_counts_utf8_bytes_and_names_the_field() -> None:
    """The bound is in UTF-8 bytes: 256 two-byte characters are 512 bytes."""
    assert check_text("reason", "é" * 512, 1024) == "é" * 512
    with pytest.raises(LimitError, match=r"^reason: at most 1024 bytes \(UTF-8\), got 1026$"):
        check_text("reason", "é" * 513, 1024)


def test_check_count_and_finite() -> None:
    check_count("weights", 64, 64)
    with pytest.raises(LimitError, match="weights: at most 64 entries, got 65"):
        check_count("weights", 65, 64)
    assert check_finite("x", 1.5) == 1.5
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(LimitError, match="x: must be a finite number"):
            check_finite("x", bad)


def test_clip_keeps_whole_characters_within_the_bound() -> None:
    """A clipped text fits its bound, ends in the marker and never splits a character."""
    assert clip("short", 100) == "short"
    for text in ("a" * 5000, "€" * 5000, "😀" * 5000):
        out = clip(text, 1000)
        assert out.endswith(TRUNCATED) and utf8_len(out) <= 1000
        assert text.startswith(out.removesuffix(TRUNCATED))


def test_excerpt_quotes_a_bounded_part() -> None:
    assert excerpt("ghost") == "'ghost'"
    long = excerpt("x" * 1_000_000)
    assert len(long) < 100 and "1000000 bytes" in long


def plan_stage(**changes: float) -> Stage:
    return Stage(
        "c", StageKind.CANARY, 500, changes.get("d", 1.0), 0, max_drift_psi=changes.get("psi", 0)
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_plans_refuse_non_finite_numbers_by_field(value: float) -> None:
    """NaN or +-inf in min_duration_seconds or max_drift_psi: PlanError naming the field."""
    with pytest.raises(PlanError) as info:
        validate_plan([plan_stage(d=value)], has_shadow=False)
    assert info.value.field == "plan.stages[0].min_duration_seconds"
    with pytest.raises(PlanError) as info:
        validate_plan([plan_stage(psi=value)], has_shadow=False)
    assert info.value.field == "plan.stages[0].max_drift_psi"


def test_plans_are_bounded_in_stages_and_name_length() -> None:
    stages = [Stage(f"c{i}", StageKind.CANARY, i + 1) for i in range(33)]
    with pytest.raises(PlanError, match="at most 32 stages, got 33"):
        validate_plan(stages, has_shadow=False, has_experiment=False)
    with pytest.raises(PlanError, match=r"plan.stages\[0\].name: at most 256 bytes"):
        validate_plan([Stage("n" * 257, StageKind.CANARY, 500)], has_shadow=False)


def entry(reason: str, diff: dict[str, object]) -> AuditEntry:
    return AuditEntry(
        unix_time=1.0,
        principal="ops",
        method="SetUserOverride",
        reason=reason,
        revision_before=1,
        revision_after=2,
        diff=diff,
    )


def test_audit_entry_larger_than_the_budget_is_clipped_with_the_marker() -> None:
    """A diff too large for the budget becomes {"truncated": its start + marker}, valid
    JSON, and the whole entry fits; a small entry is left as it is."""
    big = entry("pin", {"user_overrides": [{}, {f"user-{i}": "canary" for i in range(10_000)}]})
    message = audit_entry_message(big, 4096, 1024)
    assert message.truncated and message.ByteSize() <= 4096
    head = json.loads(message.diff_json)["truncated"]
    assert head.startswith('{"user_overrides": [{}, {"user-0": "canary"') and head.endswith(
        TRUNCATED
    )
    small = audit_entry_message(entry("pin", {"kill_switch": [False, True]}), 4096, 1024)
    assert not small.truncated
    assert json.loads(small.diff_json) == {"kill_switch": [False, True]}
    long_reason = audit_entry_message(entry("r" * 5000, {}), 1 << 20, 1024)
    assert long_reason.truncated and long_reason.reason.endswith(TRUNCATED)


def test_first_overrides_are_the_smallest_keys() -> None:
    overrides = {f"k{i:03d}": "canary" for i in range(500, 0, -1)}
    assert list(first_overrides(overrides, 3)) == ["k001", "k002", "k003"]


def test_page_tokens_round_trip_and_strangers_are_refused() -> None:
    for key in ("user-1", "ünïcode/+=", ""):
        assert decode_page_token(encode_page_token(key)) == key
    for token in ("%%%", "YQ", "not base64!", "\u00e9"):
        with pytest.raises(InvalidRequest, match="page_token"):
            decode_page_token(token)


def test_answer_budget_keeps_headroom() -> None:
    assert answer_budget(4 * 1024 * 1024) == 4 * 1024 * 1024 - 16 * 1024
    assert answer_budget(1024) == 512


def test_reports_are_fitted_by_leaving_out_their_largest_parts() -> None:
    """Over budget: history, then shadow examples, then drift bins go, each with a
    warning; within budget nothing changes."""
    report = cpb.ExperimentReport(
        metrics=[
            cpb.MetricResult(metric="m", history=[cpb.LookPoint(unix_time=i) for i in range(5000)])
        ],
        shadow=cpb.ShadowReport(examples=[cpb.Disagreement(detail="d" * 1000) for _ in range(20)]),
        drift=cpb.DriftReport(features=[cpb.DriftFeature(name="f", edges=[0.5] * 2000)]),
    )
    untouched = cpb.ExperimentReport()
    untouched.CopyFrom(report)
    assert fit_experiment_report(untouched, 1 << 20) == report
    fitted = fit_experiment_report(report, 1000)
    assert fitted.ByteSize() <= 1000
    assert not fitted.metrics[0].history and not fitted.shadow.examples
    assert not fitted.drift.features[0].edges and len(fitted.warnings) == 3
    shadow = cpb.ShadowReport(
        examples=[cpb.Disagreement(detail="d" * 10_000, request_id="r") for _ in range(20)]
    )
    clipped = fit_shadow_report(shadow, 1 << 20)
    assert all(e.detail.endswith(TRUNCATED) for e in clipped.examples)
    assert not fit_shadow_report(clipped, 1000).examples


async def test_sorted_override_keys_follow_set_and_clear_without_a_sort() -> None:
    """The service keeps the ordered keys of the state in force in step with each
    override write (the cache State answers and pages read), and other writes keep them."""
    from test_control_component import service_on

    from sidecar.testing.clock import FakeClock

    service, _ = service_on(FakeClock())
    for key in ("m", "c", "x"):
        await service.set_user_override("ops", "r", 0, key, "canary")
    assert service.sorted_override_keys(service.snapshot().state) == ["c", "m", "x"]
    kept = service._override_keys[1]
    await service.set_user_override("ops", "r", 0, "a", "canary")
    await service.clear_user_override("ops", "r", 0, "m")
    await service.set_user_override("ops", "r", 0, "c", "stable")  # a change, not a new key
    await service.set_kill_switch("ops", "r", 0, True)
    state = service.snapshot().state
    assert service._override_keys[0] is state.user_overrides and kept == ["c", "m", "x"]
    assert service.first_override_keys(state, 10) == ["a", "c", "x"] == sorted(state.user_overrides)


def test_a_state_over_a_tiny_limit_drops_its_lists_but_keeps_the_counts() -> None:
    state = cpb.State(
        flag=cpb.FlagState(
            user_overrides={f"k{i}": "canary" for i in range(100)}, user_override_count=5000
        ),
        promotions=[cpb.Promotion(reason="r" * 4000) for _ in range(50)],
        promotion_count=50,
    )
    small = cpb.State()
    small.CopyFrom(state)
    assert fit_state(small, 1 << 20) == state
    fitted = fit_state(state, 1024)
    assert fitted.ByteSize() <= 1024 and not fitted.promotions and not fitted.flag.user_overrides
    assert fitted.flag.user_override_count == 5000 and fitted.promotion_count == 50
    assert "ListUserOverrides" in fitted.warnings[-1]

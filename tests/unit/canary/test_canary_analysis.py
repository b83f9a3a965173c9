"""Unit tests for the repeated-check layer (sidecar.core.canary.analysis)."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from sidecar.core.canary import (
    CanaryAnalysis,
    CanaryAnalysisConfig,
    Decision,
    Judgement,
    VariantWindow,
    Verdict,
    check_alpha,
)


def judgement(outcome: Verdict, alpha: float = 1e-12, reason: str = "") -> Judgement:
    return Judgement(outcome, 0.0, (), reason or f"{outcome.value}: made up", alpha)


PASS, FAIL, HOLD = Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE


def window(requests: int, errors: int = 0) -> VariantWindow:
    """`requests` of which `errors` failed; successes spread over 500 latencies."""
    w = VariantWindow()
    ok = requests - errors
    counts = np.full(500, ok // 500)
    counts[: ok % 500] += 1
    w.record_many("OK", 0.02 * np.exp(0.5 * np.linspace(-2.5, 2.5, 500)), counts)
    w.record_many("INTERNAL", [0.0], [errors])
    return w


# ------------------------------------------------------------------ alpha spending


@pytest.mark.parametrize("spending", ["harmonic", "flat"])
def test_per_check_levels_spend_exactly_the_budget(spending: str) -> None:
    """Summed over the planned checks and the metrics, the levels equal the budget, so
    the union bound caps the false-rollback rate of a healthy stage at it."""
    config = CanaryAnalysisConfig(spending=spending)  # type: ignore[arg-type]
    levels = [check_alpha(k, config) for k in range(1, config.planned_checks + 1)]
    assert math.isclose(math.fsum(levels) * config.metrics_per_check, 0.01, rel_tol=1e-12)
    assert all(a > 0 for a in levels)


def test_harmonic_spending_front_loads_the_early_checks() -> None:
    """Check k of 120 gets 1% / (3 H_120 k): 6.2e-4 at the first check, 5.2e-6 at the last."""
    config = CanaryAnalysisConfig()
    h = sum(1.0 / i for i in range(1, 121))
    assert check_alpha(1, config) == pytest.approx(0.01 / 3 / h)
    assert check_alpha(1, config) == pytest.approx(6.21e-4, rel=1e-3)
    assert check_alpha(5, config) == pytest.approx(check_alpha(1, config) / 5)
    assert check_alpha(120, config) == pytest.approx(5.17e-6, rel=1e-3)
    assert check_alpha(7, CanaryAnalysisConfig(spending="flat")) == pytest.approx(0.01 / 3 / 120)
    for bad in (0, 121, 1.0):
        with pytest.raises(ValueError):
            check_alpha(bad, config)  # type: ignore[arg-type]


# ------------------------------------------------------------------ decisions


def test_first_fail_rolls_back_by_default_with_the_reason() -> None:
    """failure_limit 0 (Argo's default): the first FAIL verdict rolls back."""
    analysis = CanaryAnalysis()
    assert analysis.observe(judgement(PASS)).decision is Decision.CONTINUE
    d = analysis.observe(judgement(FAIL, reason="FAIL: error_rate HIGH: canary 1.02% ..."))
    assert d.decision is Decision.ROLLBACK
    assert d.check == 2 and d.failures == 1
    assert d.reason.startswith(
        "ROLLBACK at check 2/120 (alpha 0.00031 per metric): FAIL: error_rate"
    )
    assert d.reason.endswith("[1 FAIL > failure_limit 0]")
    assert analysis.done and analysis.next_alpha is None


def test_failure_limit_tolerates_that_many_fails_in_total() -> None:
    """failure_limit 2: FAILs one and two continue (even with a PASS between), the third
    rolls back."""
    analysis = CanaryAnalysis(CanaryAnalysisConfig(failure_limit=2))
    outcomes = [FAIL, PASS, FAIL, HOLD, FAIL]
    decisions = [analysis.observe(judgement(v)).decision for v in outcomes]
    assert decisions == [Decision.CONTINUE] * 4 + [Decision.ROLLBACK]
    assert analysis.last is not None and analysis.last.failures == 3


def test_consecutive_failure_limit_is_reset_by_a_non_fail() -> None:
    """consecutive_failure_limit 1: two FAILs in a row roll back; a PASS or a hold in
    between resets the run."""
    config = CanaryAnalysisConfig(failure_limit=100, consecutive_failure_limit=1)
    analysis = CanaryAnalysis(config)
    outcomes = [FAIL, PASS, FAIL, HOLD, FAIL, FAIL]
    decisions = [analysis.observe(judgement(v)) for v in outcomes]
    assert [d.decision for d in decisions] == [Decision.CONTINUE] * 5 + [Decision.ROLLBACK]
    assert decisions[-1].consecutive_failures == 2
    assert "[FAIL 1 within failure limits]" in decisions[0].reason
    assert decisions[-1].reason.endswith("[2 consecutive FAIL > consecutive_failure_limit 1]")


def test_stage_passes_only_when_the_last_planned_check_passes() -> None:
    """After the planned checks: PASSED on a final PASS; INCONCLUSIVE on a final hold or a
    tolerated FAIL (no data is never a pass)."""
    for last, expected in [(PASS, Decision.PASSED), (HOLD, Decision.INCONCLUSIVE)]:
        analysis = CanaryAnalysis(CanaryAnalysisConfig(planned_checks=3))
        analysis.observe(judgement(HOLD))
        analysis.observe(judgement(PASS))
        d = analysis.observe(judgement(last))
        assert d.decision is expected and analysis.done
    analysis = CanaryAnalysis(CanaryAnalysisConfig(planned_checks=2, failure_limit=1))
    analysis.observe(judgement(PASS))
    d = analysis.observe(judgement(FAIL))
    assert d.decision is Decision.INCONCLUSIVE
    assert d.reason.startswith("INCONCLUSIVE after check 2/2")


def test_a_finished_analysis_keeps_its_decision() -> None:
    """Once decided, further judgements (or checks) return the same decision."""
    analysis = CanaryAnalysis(CanaryAnalysisConfig(planned_checks=1))
    final = analysis.observe(judgement(PASS))
    assert analysis.observe(judgement(FAIL)) is final
    assert analysis.check(window(3000, 300), window(57_000)) is final
    assert analysis.checks == 1


def test_judgement_made_at_a_too_large_level_is_refused() -> None:
    """A judgement tested at more than this check's level would break the budget."""
    analysis = CanaryAnalysis()
    with pytest.raises(ValueError, match="allots"):
        analysis.observe(judgement(PASS, alpha=1e-3))
    assert analysis.checks == 0
    next_alpha = analysis.next_alpha
    assert next_alpha is not None
    analysis.observe(judgement(PASS, alpha=next_alpha))  # exactly the level: accepted
    with pytest.raises(ValueError):
        analysis.observe(
            judgement(PASS, alpha=0.6 * next_alpha), judgement(PASS, alpha=0.6 * next_alpha)
        )


def test_check_judges_at_this_checks_level() -> None:
    """check() runs the judge at check_alpha(k) and observes the result."""
    analysis = CanaryAnalysis()
    d1 = analysis.check(window(3000, 3), window(57_000, 57))
    d2 = analysis.check(window(6000, 6), window(114_000, 114))
    assert (d1.decision, d1.verdict, d2.decision) == (Decision.CONTINUE, PASS, Decision.CONTINUE)
    assert d1.judgement.alpha == check_alpha(1, analysis.config)
    assert d2.judgement.alpha == check_alpha(2, analysis.config)
    d3 = analysis.check(window(9000, 90), window(171_000, 171))
    assert d3.decision is Decision.ROLLBACK
    assert "error_rate HIGH: canary 1.00% vs baseline 0.10%" in d3.reason


def test_recent_windows_split_the_level_and_can_only_add_a_fail() -> None:
    """With recent windows, each judgement gets its share of the level; a FAIL in the
    recent windows rolls back; a hold there does not stop the main windows' PASS."""
    config = CanaryAnalysisConfig(planned_checks=2)
    analysis = CanaryAnalysis(config)
    healthy = (window(30_000, 30), window(570_000, 570))
    d = analysis.check(*healthy, recent=(VariantWindow(), VariantWindow()))
    alpha = check_alpha(1, config)
    assert [j.alpha for j in d.judgements] == [pytest.approx(alpha / 2)] * 2
    assert [j.verdict for j in d.judgements] == [PASS, HOLD]
    assert d.decision is Decision.CONTINUE and d.verdict is PASS
    d = analysis.check(*healthy, recent=(window(3000, 60), window(57_000, 57)))
    assert d.decision is Decision.ROLLBACK
    assert d.judgement is d.judgements[1]
    assert "recent window FAIL: error_rate HIGH" in d.reason


def test_recent_window_does_not_turn_a_final_hold_into_a_pass() -> None:
    """The main windows decide PASS: recent PASS with main INCONCLUSIVE stays a hold."""
    analysis = CanaryAnalysis(CanaryAnalysisConfig(planned_checks=1))
    d = analysis.check(VariantWindow(), VariantWindow(), recent=(window(3000), window(57_000)))
    assert d.decision is Decision.INCONCLUSIVE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"planned_checks": 0},
        {"false_rollback_rate": 0.0},
        {"false_rollback_rate": 1.0},
        {"metrics_per_check": 0},
        {"spending": "pocock"},
        {"failure_limit": -1},
        {"consecutive_failure_limit": -1},
        {"recent_share": 1.0},
        {"judge": "strict"},
    ],
)
def test_analysis_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    """The plan is validated when it is built."""
    with pytest.raises(ValueError):
        CanaryAnalysisConfig(**kwargs)  # type: ignore[arg-type]


def test_decisions_are_frozen() -> None:
    """A decision cannot be changed after the fact."""
    d = CanaryAnalysis().observe(judgement(PASS))
    with pytest.raises(FrozenInstanceError):
        d.decision = Decision.ROLLBACK  # type: ignore[misc]

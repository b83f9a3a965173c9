"""ExperimentTracker: epochs, verdicts, SRM, arm values against statsmodels/scipy, segments
(Holm/BH, Simpson), history thinning, checkpoints and the A/B gate."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from scipy import special, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

from sidecar.core.experiment import (
    OTHER_SEGMENT,
    ExperimentSettings,
    ExperimentTracker,
    ExperimentVerdict,
    MetricSpec,
    default_tau_squared,
)
from sidecar.core.gates import GateStatus
from sidecar.core.stats import boundary_z, optimal_mixing_ratio, plan_sequential

TOL = 1e-9
A, B = "stable", "canary"
HALF = {A: 5000, B: 5000}


def tracker_for(*metrics: MetricSpec, **kw: Any) -> tuple[ExperimentTracker, int]:
    tracker = ExperimentTracker(ExperimentSettings(metrics=metrics, **kw))
    return tracker, tracker.sync(A, B, HALF, now=0.0)


def feed(
    tracker: ExperimentTracker,
    epoch: int,
    variant: str,
    metric: str,
    values: Iterable[bool | float],
    segment: str = "",
) -> int:
    counted = 0
    for v in values:
        counted += tracker.outcome(epoch, variant, segment, metric, v)
    return counted


def feed_counts(
    tracker: ExperimentTracker,
    epoch: int,
    variant: str,
    metric: str,
    successes: int,
    n: int,
    segment: str = "",
) -> None:
    assert feed(tracker, epoch, variant, metric, (i < successes for i in range(n)), segment) == n


def assign(tracker: ExperimentTracker, counts: dict[str, int]) -> None:
    for variant, n in counts.items():
        for _ in range(n):
            tracker.assigned(variant)


def run_bool(
    seed: int, rate_a: float, rate_b: float, n: int, step: int, **spec: Any
) -> tuple[ExperimentTracker, int]:
    """Seeded Bernoulli outcomes, `n` per arm, a look every `step` per arm."""
    rng = np.random.default_rng(seed)
    spec.setdefault("minimum_effect", 0.01)
    tracker, epoch = tracker_for(MetricSpec("click", "bool", **spec))
    xa = (rng.random(n) < rate_a).tolist()
    xb = (rng.random(n) < rate_b).tolist()
    for start in range(0, n, step):
        assign(tracker, {A: step, B: step})
        feed(tracker, epoch, A, "click", xa[start : start + step])
        feed(tracker, epoch, B, "click", xb[start : start + step])
        tracker.look(float(start))
    return tracker, epoch


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (
            {"metrics": (MetricSpec("a", "bool", 0.01), MetricSpec("a", "bool", 0.01))},
            r"metrics\[1\].name",
        ),
        ({"metrics": (MetricSpec("a", "float", 0.01),)}, r"metrics\[0\].kind"),
        ({"metrics": (MetricSpec("a", "bool", 0.0),)}, r"metrics\[0\].minimum_effect"),
        ({"metrics": (MetricSpec("a", "number", -1.0),)}, r"metrics\[0\].minimum_effect"),
        ({"metrics": (MetricSpec("a", "bool", 1.5),)}, r"metrics\[0\].minimum_effect"),
        ({"metrics": (MetricSpec("a", "bool", 0.01, baseline=1.0),)}, r"metrics\[0\].baseline"),
        ({"metrics": (MetricSpec("a", "bool", 0.2, baseline=0.9),)}, r"metrics\[0\].baseline"),
        ({"metrics": (MetricSpec("a", "number", 0.2, baseline=0.5),)}, r"metrics\[0\].baseline"),
        (
            {"metrics": (MetricSpec("a", "number", 0.2, tau_squared=0.0),)},
            r"metrics\[0\].tau_squared",
        ),
        ({"metrics": (MetricSpec(" ", "number", 0.2),)}, r"metrics\[0\].name"),
        ({"segments": ("x", "x")}, r"segments\[1\]"),
        ({"segments": (OTHER_SEGMENT,)}, r"segments\[0\]"),
        ({"segments": ("",)}, r"segments\[0\]"),
        ({"correction": "bonferroni"}, "correction"),
        ({"alpha": 1.0}, "alpha"),
        ({"power": 0.0}, "power"),
        ({"srm_threshold": 2.0}, "srm_threshold"),
        ({"min_events": -1}, "min_events"),
        ({"max_history": 1}, "max_history"),
        ({"metrics": (MetricSpec("a", "bool", 0.01),), "gate_metric": "b"}, "gate_metric"),
    ],
)
def test_bad_settings_raise_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Every invalid setting raises ValueError whose message names the field."""
    with pytest.raises(ValueError, match=field):
        ExperimentSettings(**kwargs)


def test_sync_validates_on_a_new_key() -> None:
    """Bad control, treatment or weights are refused."""
    tracker = ExperimentTracker(ExperimentSettings())
    with pytest.raises(ValueError, match="treatment"):
        tracker.sync(A, A, HALF, 0.0)
    with pytest.raises(ValueError, match="weights"):
        tracker.sync(A, B, {A: 50, B: 50}, 0.0)
    with pytest.raises(ValueError, match="control"):
        tracker.sync("", B, HALF, 0.0)
    with pytest.raises(ValueError, match="weights"):
        tracker.sync(A, B, {A: "half", B: 5000}, 0.0)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"weights\[canary\]"):
        tracker.sync(A, B, {A: 10_000, B: -1}, 0.0)
    assert tracker.epoch == 0


# --------------------------------------------------------------------------- epochs


def test_epochs_follow_the_routing_key() -> None:
    """Same key: same epoch; new weights or treatment: new epoch with reset counters, and
    outcomes of an old epoch are not counted."""
    tracker, e1 = tracker_for(MetricSpec("click", "bool", 0.01))
    assert e1 == 1 and tracker.started == 0.0
    assert tracker.sync(A, B, {B: 5000, A: 5000, "shadow": 0}, now=5.0) == e1  # same key
    assign(tracker, {A: 300, B: 300})
    feed_counts(tracker, e1, A, "click", 30, 300)
    feed_counts(tracker, e1, B, "click", 40, 300)
    tracker.look(10.0)
    before = tracker.report(11.0)
    assert (before.looks, before.metrics[0].control.n, before.metrics[0].treatment.n) == (
        1,
        300,
        300,
    )

    e2 = tracker.sync(A, B, {A: 7500, B: 2500}, now=20.0)
    assert e2 == e1 + 1 and tracker.started == 20.0
    after = tracker.report(21.0)
    assert after.epoch == e2 and after.looks == 0 and after.last_look_unix == 0.0
    assert after.metrics[0].control.n == after.metrics[0].treatment.n == 0
    assert after.metrics[0].history == ()
    assert after.srm.detail == "no look yet"
    assert not tracker.outcome(e1, A, "", "click", True)  # old epoch
    assert tracker.outcome(e2, A, "", "click", True)
    assert tracker.sync(A, "canary2", {A: 7500, "canary2": 2500}, now=30.0) == e2 + 1
    assert tracker.sync(A, None, {A: 10_000}, now=40.0) == e2 + 2


def test_outcomes_are_filtered_and_other_segments_count_in_the_aggregate() -> None:
    """Unknown metrics, variants outside the comparison, wrong kinds and non-finite numbers
    are not counted; undeclared segments go to 'other' and into the aggregate."""
    tracker, e = tracker_for(
        MetricSpec("click", "bool", 0.01), MetricSpec("spend", "number", 1.0), segments=("ios",)
    )
    assert not tracker.outcome(e, A, "", "unknown", True)
    assert not tracker.outcome(e, "shadow", "", "click", True)
    assert not tracker.outcome(e, A, "", "click", 1.0)
    assert not tracker.outcome(e, A, "", "spend", True)
    assert not tracker.outcome(e, A, "", "spend", math.nan)
    assert not tracker.outcome(e, A, "", "spend", math.inf)
    assert not tracker.outcome(-1, A, "", "click", True)
    assert tracker.outcome(e, A, "ios", "click", True)
    assert tracker.outcome(e, A, "android", "click", False)
    assert tracker.outcome(e, A, "", "click", True)
    assert tracker.outcome(e, B, "web", "spend", 3)
    report = tracker.report(0.0)
    click = report.metrics[0]
    assert (click.control.n, click.control.successes) == (3, 2)
    assert [(s.segment, s.control.n) for s in click.segments] == [("ios", 1)]
    assert report.metrics[1].treatment.n == 1 and report.metrics[1].treatment.value.value == 3.0


# --------------------------------------------------------------------------- verdicts


def test_big_lift_ships_b() -> None:
    tracker, _ = run_bool(1, 0.10, 0.13, 20_000, 2000, baseline=0.10)
    m = tracker.report(1.0).metrics[0]
    assert m.verdict is ExperimentVerdict.SHIP_B
    assert m.difference.lower > 0 and m.p_value < 0.05 and m.additional_per_arm == 0
    for number in (
        f"{m.difference.value:.4g}",
        f"{m.difference.lower:.4g}",
        f"{m.difference.upper:.4g}",
        f"{m.p_value:.3g}",
    ):
        assert number in m.reason
    assert m.planned_per_arm == plan_sequential(0.10, 0.01).n_per_arm
    assert m.tau_squared == plan_sequential(0.10, 0.01).tau_squared
    assert m.difference.method == "msprt" and m.difference.level == 0.95


def test_big_drop_keeps_a() -> None:
    tracker, _ = run_bool(2, 0.10, 0.07, 20_000, 2000)
    m = tracker.report(1.0).metrics[0]
    assert m.verdict is ExperimentVerdict.KEEP_A and m.difference.upper < 0


def test_equal_rates_with_enough_data_are_equivalent() -> None:
    tracker, _ = run_bool(3, 0.10, 0.10, 60_000, 10_000, minimum_effect=0.02)
    m = tracker.report(1.0).metrics[0]
    assert m.verdict is ExperimentVerdict.EQUIVALENT, m.reason
    assert -0.02 < m.difference.lower < 0 < m.difference.upper < 0.02
    assert "0.02" in m.reason


def test_small_sample_continues_with_an_estimate() -> None:
    tracker, _ = run_bool(4, 0.10, 0.11, 600, 300)
    m = tracker.report(1.0).metrics[0]
    assert m.verdict is ExperimentVerdict.CONTINUE
    assert m.additional_per_arm > 0
    assert f"about {m.additional_per_arm} more outcomes per arm" in m.reason


def test_lower_is_better_flips_the_direction() -> None:
    """With higher_is_better=False an interval above 0 means B is worse."""
    up, _ = run_bool(1, 0.10, 0.13, 20_000, 2000, higher_is_better=False)
    down, _ = run_bool(2, 0.10, 0.07, 20_000, 2000, higher_is_better=False)
    m_up, m_down = up.report(1.0).metrics[0], down.report(1.0).metrics[0]
    assert m_up.verdict is ExperimentVerdict.KEEP_A and m_up.difference.lower > 0
    assert "B is worse" in m_up.reason
    assert m_down.verdict is ExperimentVerdict.SHIP_B and m_down.difference.upper < 0


def test_numeric_metric_ships_b() -> None:
    rng = np.random.default_rng(5)
    tracker, e = tracker_for(MetricSpec("spend", "number", 0.5))
    for k in range(10):
        assign(tracker, {A: 2000, B: 2000})
        feed(tracker, e, A, "spend", rng.normal(10.0, 3.0, 2000).tolist())
        feed(tracker, e, B, "spend", rng.normal(10.4, 3.0, 2000).tolist())
        tracker.look(float(k))
    m = tracker.report(1.0).metrics[0]
    assert m.verdict is ExperimentVerdict.SHIP_B and m.difference.lower > 0
    assert m.kind == "number" and m.fixed_horizon_p_value < 1e-6
    r = optimal_mixing_ratio(0.05)
    assert m.tau_squared == pytest.approx(
        r * (0.5 / (boundary_z(r) + special.ndtri(0.8))) ** 2, rel=1e-12
    )
    va, vb = m.control.std_dev**2, m.treatment.std_dev**2
    assert m.planned_per_arm == math.ceil(
        (va + vb) * ((boundary_z(r) + special.ndtri(0.8)) / 0.5) ** 2
    )


def test_default_tau_equals_the_planner_choice_at_its_horizon() -> None:
    """r* (delta / (b* + z_power))^2 equals plan_sequential's r* V / N within the rounding
    of N (relative error below 1/N)."""
    rng = np.random.default_rng(6)
    for _ in range(30):
        base = float(rng.uniform(0.02, 0.7))
        mde = float(base * rng.uniform(0.05, 0.3))
        alpha, power = float(rng.choice([0.01, 0.05, 0.1])), float(rng.choice([0.8, 0.9]))
        plan = plan_sequential(base, mde, alpha, power)
        plain, planned = default_tau_squared(MetricSpec("m", "bool", mde), alpha, power)
        with_base, n = default_tau_squared(
            MetricSpec("m", "bool", mde, baseline=base), alpha, power
        )
        assert (with_base, n) == (plan.tau_squared, plan.n_per_arm) and planned == 0
        assert plain == pytest.approx(plan.tau_squared, rel=1.0 / plan.n_per_arm)
        assert plain >= plan.tau_squared  # N was rounded up


def test_no_canary_serving_continues() -> None:
    tracker = ExperimentTracker(ExperimentSettings(metrics=(MetricSpec("click", "bool", 0.01),)))
    e = tracker.sync(A, None, {A: 10_000}, 0.0)
    assign(tracker, {A: 500})
    feed_counts(tracker, e, A, "click", 50, 500)
    assert not tracker.outcome(e, B, "", "click", True)
    tracker.look(1.0)
    report = tracker.report(2.0)
    m = report.metrics[0]
    assert (m.verdict, m.reason) == (ExperimentVerdict.CONTINUE, "no canary serving")
    assert report.treatment == "" and m.treatment.n == 0 and math.isnan(m.treatment.value.value)
    assert any("no canary serving" in w for w in report.warnings)
    assert not report.srm.mismatch and "nothing to compare" in report.srm.detail
    assert tracker.gate().status is GateStatus.WAIT


# --------------------------------------------------------------------------- SRM


def test_sample_ratio_mismatch_blocks_and_clears() -> None:
    """50/50 weights with 1000 vs 1200 assignments: every verdict BLOCKED with the numbers;
    balancing the counts clears it at a later look."""
    tracker, e = tracker_for(MetricSpec("click", "bool", 0.01), MetricSpec("spend", "number", 1.0))
    assign(tracker, {A: 1000, B: 1200})
    feed_counts(tracker, e, A, "click", 110, 1100)  # the outcome counts themselves balance
    feed_counts(tracker, e, B, "click", 330, 1100)
    events = tracker.look(1.0)
    assert events.srm_started and not events.srm_cleared
    assert set(events.verdict_changes) == {
        ("click", "CONTINUE", "BLOCKED"),
        ("spend", "CONTINUE", "BLOCKED"),
    }
    report = tracker.report(2.0)
    chi = 2 * 100**2 / 1100
    p = float(stats.binomtest(1000, 2200, 0.5).pvalue)  # the decision: exact binomial
    assert report.srm.mismatch
    assert report.srm.chi_square == pytest.approx(chi, abs=TOL)
    assert report.srm.p_value == pytest.approx(p, rel=1e-9)
    assert [(a.variant, a.observed, a.expected_share) for a in report.srm.arms] == [
        (A, 1000, 0.5),
        (B, 1200, 0.5),
    ]
    assert report.srm.arms[1].observed_share == pytest.approx(1200 / 2200)
    for m in report.metrics:
        assert m.verdict is ExperimentVerdict.BLOCKED
        for number in ("stable=1000", "canary=1200", f"{chi:.4g}", f"{p:.3g}", "0.001"):
            assert number in m.reason
    assert any("sample ratio mismatch" in w for w in report.warnings)
    assert report.metrics[0].p_value < 0.05  # the state keeps updating underneath
    gate = tracker.gate()
    assert gate.status is GateStatus.WAIT and "BLOCKED" in gate.detail

    assign(tracker, {A: 1200, B: 1000})
    events = tracker.look(3.0)
    assert events.srm_cleared and not events.srm_started
    assert ("click", "BLOCKED", "SHIP_B") in events.verdict_changes
    assert not tracker.report(4.0).srm.mismatch


def test_srm_needs_a_minimum_total_and_flags_stray_traffic() -> None:
    """Below 100 assignments nothing is flagged; traffic to a weight-0 variant is."""
    tracker, _ = tracker_for(MetricSpec("click", "bool", 0.01))
    assign(tracker, {A: 10, B: 80})
    tracker.look(1.0)
    srm = tracker.report(1.0).srm
    assert not srm.mismatch and srm.p_value < 0.001 and "not checked below 100" in srm.detail
    assign(tracker, {A: 100, B: 30, "shadow": 1})
    tracker.look(2.0)
    srm = tracker.report(2.0).srm
    assert srm.mismatch and srm.chi_square == math.inf and "routing fault" in srm.detail
    assert srm.arms[-1].variant == "shadow" and srm.arms[-1].expected_share == 0.0


def test_lost_outcomes_in_one_arm_block_that_metric() -> None:
    """Assignments follow the weights but 40% of the canary's outcomes of one metric are
    lost: that metric is BLOCKED (exact binomial as scipy's binomtest), the other is not."""
    tracker, e = tracker_for(
        MetricSpec("click", "bool", 0.01), MetricSpec("spend", "number", 1.0), segments=("s",)
    )
    tracker.sync(A, B, {A: 2500, B: 7500}, 0.0)
    e = tracker.epoch
    assign(tracker, {A: 1000, B: 3000})
    feed_counts(tracker, e, A, "click", 100, 1000)
    feed_counts(tracker, e, B, "click", 180, 1800)  # 40% lost
    rng = np.random.default_rng(14)
    feed(tracker, e, A, "spend", rng.normal(5, 1, 1000).tolist(), "s")
    feed(tracker, e, B, "spend", rng.normal(5, 1, 3000).tolist(), "s")
    events = tracker.look(1.0)
    assert events.outcome_srm_started == ("click",) and not events.srm_started
    assert ("click", "CONTINUE", "BLOCKED") in events.verdict_changes
    report = tracker.report(2.0)
    click, spend = report.metrics
    p = stats.binomtest(1000, 2800, 0.25).pvalue
    assert (
        click.verdict is ExperimentVerdict.BLOCKED
        and spend.verdict is not ExperimentVerdict.BLOCKED
    )
    for number in ("stable=1000", "canary=1800", "700.0", "2100.0", f"exact binomial p {p:.3g}"):
        assert number in click.reason
    assert not report.srm.mismatch
    assert any(
        w.startswith("sample ratio mismatch in the outcomes of 'click'") for w in report.warnings
    )
    restored = ExperimentTracker.from_dict(
        json.loads(json.dumps(tracker.to_dict())), tracker.settings
    )
    assert restored.report(2.0).metrics[0].reason == click.reason
    feed_counts(tracker, e, B, "click", 120, 1200)  # the late outcomes arrive
    events = tracker.look(3.0)
    assert events.outcome_srm_cleared == ("click",)
    assert tracker.report(4.0).metrics[0].verdict is not ExperimentVerdict.BLOCKED


# --------------------------------------------------------------------------- agreement


def test_bool_arms_fixed_p_and_lift_agree_with_statsmodels() -> None:
    """Wilson rates, the pooled z-test p and the log-ratio lift interval on 40 cases."""
    rng = np.random.default_rng(7)
    for case in range(40):
        alpha = (0.01, 0.05, 0.1)[case % 3]
        tracker, e = tracker_for(
            MetricSpec("click", "bool", 0.01), alpha=alpha, segments=("s1", "s2")
        )
        na, nb = (int(x) for x in rng.integers(20, 3000, 2))
        sa = int(rng.binomial(na, rng.uniform(0.05, 0.6)))
        sb = int(rng.binomial(nb, rng.uniform(0.05, 0.6)))
        sa, sb = max(sa, 1), max(sb, 1)
        segs = ("s1", "s2", "web")
        for variant, s, n in ((A, sa, na), (B, sb, nb)):
            for i in range(n):
                assert tracker.outcome(e, variant, segs[i % 3], "click", i < s)
        m = tracker.report(0.0).metrics[0]
        for arm, s, n in ((m.control, sa, na), (m.treatment, sb, nb)):
            lo, hi = proportion_confint(s, n, alpha=alpha, method="wilson")
            assert (arm.n, arm.successes) == (n, s)
            assert arm.value.value == pytest.approx(s / n, abs=TOL)
            assert arm.value.lower == pytest.approx(lo, abs=TOL)
            assert arm.value.upper == pytest.approx(hi, abs=TOL)
        _, p = proportions_ztest([sb, sa], [nb, na])
        assert m.fixed_horizon_p_value == pytest.approx(p, abs=TOL)
        lo, hi = confint_proportions_2indep(
            sb, nb, sa, na, compare="ratio", method="log-adjusted", alpha=alpha
        )
        assert m.relative_lift.value == pytest.approx((sb / nb) / (sa / na) - 1, abs=TOL)
        assert m.relative_lift.lower == pytest.approx(lo - 1, abs=TOL)
        assert m.relative_lift.upper == pytest.approx(hi - 1, abs=TOL)


def test_numeric_arms_fixed_p_and_lift_agree_with_scipy() -> None:
    """Mean, sd and normal interval, Welch p and the delta-method lift on 40 cases; the
    values are spread over segments, so the segment merge is exercised too."""
    rng = np.random.default_rng(8)
    for case in range(40):
        alpha = (0.01, 0.05, 0.1)[case % 3]
        tracker, e = tracker_for(
            MetricSpec("spend", "number", 1.0), alpha=alpha, segments=("s1", "s2")
        )
        scale = float(10 ** rng.uniform(-1, 3))
        a = rng.normal(
            rng.uniform(1, 5) * scale, rng.uniform(0.5, 3) * scale, int(rng.integers(5, 2000))
        )
        b = rng.normal(
            rng.uniform(1, 5) * scale, rng.uniform(0.5, 3) * scale, int(rng.integers(5, 2000))
        )
        segs = ("s1", "s2", "web", "")
        for variant, xs in ((A, a), (B, b)):
            for i, x in enumerate(xs.tolist()):
                assert tracker.outcome(e, variant, segs[(i * 7) % 4], "spend", x)
        m = tracker.report(0.0).metrics[0]
        z = float(stats.norm.ppf(1 - alpha / 2))
        for arm, xs in ((m.control, a), (m.treatment, b)):
            lo, hi = stats.norm.interval(1 - alpha, loc=xs.mean(), scale=stats.sem(xs))
            assert arm.n == xs.size
            assert arm.value.value == pytest.approx(xs.mean(), rel=TOL, abs=TOL)
            assert arm.std_dev == pytest.approx(xs.std(ddof=1), rel=TOL)
            assert arm.value.lower == pytest.approx(lo, rel=TOL, abs=TOL)
            assert arm.value.upper == pytest.approx(hi, rel=TOL, abs=TOL)
        assert m.fixed_horizon_p_value == pytest.approx(
            stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-8, abs=TOL
        )
        ma, mb = a.mean(), b.mean()
        va, vb = a.var(ddof=1), b.var(ddof=1)
        se = math.sqrt(vb / (b.size * ma**2) + mb**2 * va / (a.size * ma**4))
        assert m.relative_lift.value == pytest.approx(mb / ma - 1, rel=TOL, abs=TOL)
        assert m.relative_lift.lower == pytest.approx(mb / ma - 1 - z * se, rel=TOL, abs=TOL)
        assert m.relative_lift.upper == pytest.approx(mb / ma - 1 + z * se, rel=TOL, abs=TOL)
        assert m.relative_lift.method == "delta"


def test_welford_counters_stay_accurate_far_from_zero() -> None:
    """A mean of 1e7 with a spread of 1: the textbook sum/sum-of-squares variance is off by
    more than 10%, the Welford counters agree with numpy to 1e-9 relative."""
    rng = np.random.default_rng(9)
    tracker, e = tracker_for(MetricSpec("t", "number", 1.0))
    xs = 1e7 + rng.normal(0, 1.0, 20_000)
    feed(tracker, e, A, "t", xs.tolist())
    arm = tracker.report(0.0).metrics[0].control
    assert arm.std_dev == pytest.approx(xs.std(ddof=1), rel=1e-9)
    assert arm.value.value == pytest.approx(xs.mean(), rel=1e-15)
    n, total, total_sq = xs.size, sum(xs.tolist()), sum(x * x for x in xs.tolist())
    textbook = math.sqrt(max(0.0, (total_sq - total * total / n) / (n - 1)))
    assert abs(textbook / xs.std(ddof=1) - 1) > 0.1


# --------------------------------------------------------------------------- segments


def test_segment_adjustments_agree_with_multipletests() -> None:
    """Holm and BH adjusted values over the declared family equal statsmodels."""
    segments = ("s1", "s2", "s3", "s4", "s5")
    effects = (0.0, 0.01, 0.02, 0.03, 0.05)
    for correction, sm_method in (("holm", "holm"), ("bh", "fdr_bh")):
        rng = np.random.default_rng(10)
        tracker, e = tracker_for(
            MetricSpec("click", "bool", 0.01), segments=segments, correction=correction
        )
        for segment, effect in zip(segments, effects, strict=True):
            feed(tracker, e, A, "click", (rng.random(6000) < 0.2).tolist(), segment)
            feed(tracker, e, B, "click", (rng.random(6000) < 0.2 + effect).tolist(), segment)
        assign(tracker, {A: 30_000, B: 30_000})
        tracker.look(1.0)
        m = tracker.report(2.0).metrics[0]
        raw = [s.p_value for s in m.segments]
        _, adjusted, _, _ = multipletests(raw, alpha=0.05, method=sm_method)
        assert m.correction == correction
        assert [s.adjusted_p_value for s in m.segments] == pytest.approx(list(adjusted), abs=1e-12)
        assert 0 < sum(s.significant for s in m.segments) < 5
        for s in m.segments:
            assert s.significant == (s.adjusted_p_value < 0.05)
            assert s.winner == (B if s.significant else "")
            assert s.difference.method == "msprt"


def test_simpson_reversal_is_warned_with_the_numbers() -> None:
    """The aggregate favours B while both segments significantly favour A."""
    tracker, e = tracker_for(MetricSpec("click", "bool", 0.01), segments=("mobile", "desktop"))
    feed_counts(tracker, e, A, "click", 4000, 40_000, "mobile")
    feed_counts(tracker, e, B, "click", 700, 10_000, "mobile")
    feed_counts(tracker, e, A, "click", 5000, 10_000, "desktop")
    feed_counts(tracker, e, B, "click", 18_000, 40_000, "desktop")
    assign(tracker, {A: 50_000, B: 50_000})
    tracker.look(1.0)
    report = tracker.report(2.0)
    m = report.metrics[0]
    # The aggregate (18% vs 37.4%) would ship B, but the arms' segment mix differs (40k/10k
    # against 10k/40k users): the segment mix check blocks the confounded aggregate.
    assert m.verdict is ExperimentVerdict.BLOCKED
    assert "segment mix mismatch" in m.reason and "mobile 40000/10000" in m.reason
    mix = stats.chi2_contingency([[40_000, 10_000], [10_000, 40_000]], correction=False)
    assert report.segment_mix is not None and report.segment_mix.mismatch
    assert report.segment_mix.chi_square == pytest.approx(float(mix[0]), rel=1e-9)
    assert tracker.gate().status is GateStatus.WAIT
    assert [s.winner for s in m.segments] == [A, A]
    w = m.simpson_warning
    assert w and w in report.warnings
    assert f"favours {B} significantly" in w
    for number in (
        f"{m.difference.value:.4g}",
        f"{m.difference.lower:.4g}",
        f"{m.difference.upper:.4g}",
    ):
        assert number in w
    for s in m.segments:
        assert f"segment {s.segment!r} favours {A}" in w
        assert f"{s.difference.value:.4g}" in w and f"adjusted p {s.adjusted_p_value:.3g}" in w
    assert f"{m.segments[0].difference.value:.4g}" == "-0.03"


def test_no_simpson_warning_when_segments_agree() -> None:
    tracker, e = tracker_for(MetricSpec("click", "bool", 0.01), segments=("mobile", "desktop"))
    for seg in ("mobile", "desktop"):
        feed_counts(tracker, e, A, "click", 1000, 10_000, seg)
        feed_counts(tracker, e, B, "click", 1500, 10_000, seg)
    assign(tracker, {A: 20_000, B: 20_000})
    tracker.look(1.0)
    m = tracker.report(2.0).metrics[0]
    assert [s.winner for s in m.segments] == [B, B] and m.simpson_warning == ""


# --------------------------------------------------------------------------- history


def test_history_is_thinned_and_keeps_the_first_and_latest_look() -> None:
    tracker, e = tracker_for(MetricSpec("click", "bool", 0.01), max_history=8)
    for k in range(1, 51):
        feed_counts(tracker, e, A, "click", 10, 100)
        feed_counts(tracker, e, B, "click", 12, 100)
        tracker.look(float(k))
        history = tracker.report(float(k)).metrics[0].history
        assert len(history) <= 8
        assert history[0].unix_time == 1.0 and history[-1].unix_time == float(k)
        times = [p.unix_time for p in history]
        assert times == sorted(set(times))
    last = history[-1]
    assert (last.n_control, last.n_treatment) == (5000, 5000)
    m = tracker.report(51.0).metrics[0]
    assert (last.lower, last.upper, last.p_value) == (
        m.difference.lower,
        m.difference.upper,
        m.p_value,
    )
    assert tracker.report(51.0, history=False).metrics[0].history == ()


# --------------------------------------------------------------------------- checkpoints


def _busy_tracker() -> tuple[ExperimentTracker, ExperimentSettings]:
    settings = ExperimentSettings(
        metrics=(
            MetricSpec("click", "bool", 0.01, baseline=0.1),
            MetricSpec("spend", "number", 0.5),
        ),
        segments=("ios", "android"),
        max_history=6,
    )
    tracker = ExperimentTracker(settings)
    e = tracker.sync(A, B, HALF, 100.0)
    rng = np.random.default_rng(12)
    for k in range(9):
        for variant, rate, mu in ((A, 0.1, 10.0), (B, 0.12, 10.2)):
            for i in range(400):
                seg = ("ios", "android", "web")[i % 3]
                tracker.outcome(e, variant, seg, "click", bool(rng.random() < rate))
                tracker.outcome(e, variant, seg, "spend", float(rng.normal(mu, 2.0)))
        assign(tracker, {A: 400, B: 400})
        tracker.look(100.0 + k)
    return tracker, settings


def test_checkpoint_round_trip_gives_an_identical_report() -> None:
    tracker, settings = _busy_tracker()
    data = tracker.to_dict()
    text = json.dumps(data, allow_nan=False)  # strict JSON
    restored = ExperimentTracker.from_dict(json.loads(text), settings)
    assert repr(restored.report(200.0)) == repr(tracker.report(200.0))
    assert restored.gate() == tracker.gate()
    assert restored.to_dict() == data
    # the restored tracker continues the same epoch
    assert restored.sync(A, B, HALF, 300.0) == tracker.epoch
    assert restored.outcome(tracker.epoch, A, "ios", "click", True)
    # a fresh numeric state before any evaluated look has infinite bounds: still strict JSON
    fresh = ExperimentTracker(settings)
    fresh.sync(A, B, HALF, 0.0)
    fresh.look(1.0)
    again = ExperimentTracker.from_dict(
        json.loads(json.dumps(fresh.to_dict(), allow_nan=False)), settings
    )
    assert repr(again.report(2.0)) == repr(fresh.report(2.0))


def test_report_does_not_mutate() -> None:
    tracker, _ = _busy_tracker()
    before = tracker.to_dict()
    tracker.report(500.0)
    tracker.report(600.0, metrics=("spend",), history=False)
    tracker.gate()
    assert tracker.to_dict() == before
    with pytest.raises(ValueError, match="metrics"):
        tracker.report(0.0, metrics=("nope",))
    assert [m.metric for m in tracker.report(0.0, metrics=("spend",)).metrics] == ["spend"]


def test_checkpoint_under_changed_settings_keeps_matching_metrics() -> None:
    tracker, _ = _busy_tracker()
    old = tracker.report(200.0)
    settings = ExperimentSettings(
        metrics=(
            MetricSpec("spend", "number", 0.5),
            MetricSpec("click", "number", 1.0),
            MetricSpec("new", "bool", 0.02),
        ),
        segments=("ios",),
    )
    restored = ExperimentTracker.from_dict(tracker.to_dict(), settings)
    report = restored.report(200.0)
    spend, click, new = report.metrics
    old_spend = old.metrics[1]
    assert spend.control.n == old_spend.control.n and spend.p_value == old_spend.p_value
    assert spend.difference == old_spend.difference
    assert spend.segments[0].p_value == old_spend.segments[0].p_value
    # "android" is no longer declared: its counts moved into "other", the aggregate is intact
    assert spend.control.value.value == pytest.approx(old_spend.control.value.value, rel=1e-12)
    assert click.control.n == 0 and new.control.n == 0  # kind changed / new metric: fresh


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("epoch"),
        lambda d: d.update(version=99),
        lambda d: d.update(assigned={"stable": -1}),
        lambda d: d.update(looks="many"),
        lambda d: d["metrics"]["click"]["cells"]["stable"].update(ios=[1, 2]),
        lambda d: d["metrics"]["click"]["cells"]["stable"].update(ios=[1, 5, 0.0, 0.0]),
        lambda d: d["metrics"]["click"]["aggregate"]["state"].update(p_value=2.0),
        lambda d: d["metrics"]["click"]["aggregate"].update(last={"evaluated": True}),
        lambda d: d["metrics"]["spend"]["history"].update(points=[[1, 2, 3]]),
        lambda d: d["metrics"]["spend"]["history"].update(looks=[]),
        lambda d: d["srm"].update(mismatch="no"),
        lambda d: d.update(weights=[]),
        lambda d: d.update(weights={"stable": 1}),
        lambda d: d.update(metrics=None),
    ],
)
def test_malformed_checkpoint_raises_value_error(mutate: Any) -> None:
    tracker, settings = _busy_tracker()
    data = copy.deepcopy(tracker.to_dict())
    mutate(data)
    with pytest.raises(ValueError, match="malformed experiment checkpoint"):
        ExperimentTracker.from_dict(data, settings)


def test_not_a_mapping_raises_value_error() -> None:
    with pytest.raises(ValueError, match="malformed"):
        ExperimentTracker.from_dict([], ExperimentSettings())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- gate


def test_gate_pass_fail_wait() -> None:
    ship, _ = run_bool(1, 0.10, 0.13, 20_000, 2000)
    keep, _ = run_bool(2, 0.10, 0.07, 20_000, 2000)
    equal, _ = run_bool(3, 0.10, 0.10, 60_000, 10_000, minimum_effect=0.02)
    wait, _ = run_bool(4, 0.10, 0.11, 600, 300)
    assert ship.gate().status is GateStatus.PASS and "SHIP_B" in ship.gate().detail
    assert equal.gate().status is GateStatus.PASS and "EQUIVALENT" in equal.gate().detail
    fail = keep.gate()
    assert fail.status is GateStatus.FAIL and fail.value == keep.report(0.0).metrics[0].p_value
    assert wait.gate().status is GateStatus.WAIT and "more outcomes per arm" in wait.gate().detail
    assert ExperimentTracker(ExperimentSettings()).gate().status is GateStatus.WAIT
    fresh, _ = tracker_for(MetricSpec("click", "bool", 0.01))
    assert fresh.gate().status is GateStatus.WAIT and "no look yet" in fresh.gate().detail


def test_gate_metric_selects_the_metric() -> None:
    tracker, e = tracker_for(
        MetricSpec("click", "bool", 0.01), MetricSpec("spend", "number", 0.5), gate_metric="spend"
    )
    rng = np.random.default_rng(13)
    feed(tracker, e, A, "spend", rng.normal(10, 1, 5000).tolist())
    feed(tracker, e, B, "spend", rng.normal(9, 1, 5000).tolist())
    assign(tracker, {A: 5000, B: 5000})
    tracker.look(1.0)
    gate = tracker.gate()
    assert gate.status is GateStatus.FAIL and gate.detail.startswith("spend: KEEP_A")


def test_report_warns_before_data() -> None:
    tracker, _ = tracker_for(MetricSpec("click", "bool", 0.01))
    report = tracker.report(0.0)
    assert "no outcomes yet in this epoch" in report.warnings
    assert any(w.startswith("no look yet") for w in report.warnings)
    assert report.unit == "request" and report.alpha == 0.05
    m = report.metrics[0]
    assert m.verdict is ExperimentVerdict.CONTINUE and m.additional_per_arm == -1
    assert math.isnan(m.fixed_horizon_p_value) and math.isnan(m.difference.value)

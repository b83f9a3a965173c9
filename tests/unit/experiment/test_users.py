"""Users as the unit of analysis: outcomes attributed to the routed targeting key through the
`OutcomeLedger`, summed into fixed user buckets, and the mSPRT on the bucket variance."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from sidecar.core.experiment import (
    ExperimentSettings,
    ExperimentTracker,
    ExperimentVerdict,
    MetricSpec,
    OutcomeLedger,
)
from sidecar.core.experiment.units import bucket_of, unit_hash
from sidecar.core.gates import GateStatus
from sidecar.core.stats import required_variance, sequential_update_estimate, start_sequential
from sidecar.core.stats.buckets import ratio_from_buckets

A, B = "stable", "canary"
TOL = 1e-9


class Flow:
    """The data plane's two calls, without the network: remember + report -> outcome."""

    def __init__(self, *metrics: MetricSpec, weights: dict[str, int] | None = None, **kw: Any):
        self.settings = ExperimentSettings(metrics=metrics, **kw)
        self.tracker = ExperimentTracker(self.settings)
        self.epoch = self.tracker.sync(A, B, weights or {A: 5000, B: 5000}, 0.0)
        self.ledger = OutcomeLedger(
            1_000_000,
            1e9,
            {m.name: m.kind for m in metrics},
            segments=self.settings.segments,
            max_per_key=20,
        )
        self.count = 0

    def request(
        self, variant: str, key: str, metric: str, value: bool | float, seg: str = ""
    ) -> bool:
        self.count += 1
        rid = f"r{self.count}"
        if self.ledger.admit(key, self.epoch):
            self.tracker.assigned(variant)
        self.ledger.remember(rid, variant, seg, 0.0, self.epoch, key)
        att = self.ledger.report(rid, metric, value, 0.0)
        if not att.counted:
            return False
        return self.tracker.outcome(
            att.epoch,
            att.variant,
            att.segment,
            metric,
            value,
            unit=att.unit,
            keyless=att.keyless,
            new_user=att.new_user,
        )


def clustered(flow: Flow, rng: np.random.Generator, users: int, rate: float, icc: float) -> None:
    """Users with Beta propensities (mean `rate`, intra-user correlation `icc`), 1 + Poisson(9)
    requests each, split 50/50 by user."""
    ab = 1.0 / icc - 1.0
    for u in range(users):
        variant = A if u % 2 else B
        p = rng.beta(rate * ab, (1 - rate) * ab)
        for _ in range(1 + rng.poisson(9)):
            flow.request(variant, f"user-{u}", "click", bool(rng.random() < p))


def test_the_look_uses_the_bucket_variance_of_whole_users() -> None:
    """The aggregate look equals the mSPRT fed the delta-method variance of the bucket
    totals recomputed here from the keys' stable hashes."""
    rng = np.random.default_rng(7)
    flow = Flow(MetricSpec("click", "bool", 0.02, baseline=0.1), buckets=64, min_users=50)
    clustered(flow, rng, 1200, 0.1, 0.2)
    events = flow.tracker.look(1.0)
    assert not events.srm_started
    y = {v: np.zeros(64) for v in (A, B)}
    n = {v: np.zeros(64) for v in (A, B)}
    rng = np.random.default_rng(7)  # the same draws again
    ab = 1.0 / 0.2 - 1.0
    for u in range(1200):
        variant = A if u % 2 else B
        p = rng.beta(0.1 * ab, 0.9 * ab)
        k = bucket_of(unit_hash(f"user-{u}"), 64)
        for i in range(1 + rng.poisson(9)):
            hit = bool(rng.random() < p)
            if i < 20:  # the ledger's per-key cap
                y[variant][k] += hit
                n[variant][k] += 1
    ra, rb = ratio_from_buckets(y[A], n[A]), ratio_from_buckets(y[B], n[B])
    tau2 = flow.tracker.report(1.0).metrics[0].tau_squared
    want = sequential_update_estimate(
        start_sequential(tau2),
        int(n[A].sum()),
        int(n[B].sum()),
        float(rb.ratio - ra.ratio),
        float(ra.variance + rb.variance),
    )
    m = flow.tracker.report(2.0).metrics[0]
    assert m.unit == "user" and flow.tracker.report(2.0).unit == "user"
    assert m.p_value == pytest.approx(want.state.p_value, rel=TOL)
    assert m.difference.lower == pytest.approx(want.state.ci_lower, abs=TOL)
    assert m.control.users == 600 and m.treatment.users == 600
    assert m.control.keyless == 0 and m.control.n == int(n[A].sum())
    naive = ra.ratio * (1 - ra.ratio) / n[A].sum() + rb.ratio * (1 - rb.ratio) / n[B].sum()
    assert m.design_effect == pytest.approx(float((ra.variance + rb.variance) / naive), rel=TOL)
    assert m.design_effect > 1.5  # icc 0.2 with ~10 requests per user


def test_keyless_requests_stay_request_level_and_are_counted_apart() -> None:
    flow = Flow(MetricSpec("click", "bool", 0.02))
    rng = np.random.default_rng(8)
    for i in range(4000):
        flow.request(A if i % 2 else B, "", "click", bool(rng.random() < 0.1))
    flow.tracker.look(1.0)
    m = flow.tracker.report(1.0).metrics[0]
    assert m.unit == "request" and math.isnan(m.design_effect)
    assert m.control.keyless == m.control.n == 2000 == m.control.users
    flow.request(A, "someone", "click", True)  # one keyed user: the metric is user-level
    flow.tracker.look(2.0)
    m = flow.tracker.report(2.0).metrics[0]
    assert m.unit == "user" and m.control.keyless == 2000 and m.control.users == 2001


def test_below_min_users_the_user_level_look_waits_and_says_why() -> None:
    flow = Flow(MetricSpec("click", "bool", 0.02), min_users=300, min_events=1)
    rng = np.random.default_rng(9)
    clustered(flow, rng, 400, 0.3, 0.1)  # 200 users per arm
    flow.tracker.look(1.0)
    m = flow.tracker.report(1.0).metrics[0]
    assert m.verdict is ExperimentVerdict.CONTINUE and "300 users" in m.reason
    assert m.p_value == 1.0


def test_memory_is_fixed_whatever_keys_callers_choose_and_one_key_weighs_its_cap() -> None:
    """100,000 distinct keys leave every bucket list at its fixed size; one key sending
    10,000 outcomes counts 20 (the ledger's cap) and one user."""
    flow = Flow(MetricSpec("spend", "number", 1.0), buckets=32)
    for i in range(100_000):
        flow.request(A if i % 2 else B, f"k{i}", "spend", 1.0)
    for _ in range(10_000):
        flow.request(A, "hostile", "spend", 1e6)
    totals = flow.tracker._buckets  # the state itself
    assert all(len(t.outcomes) == len(t.total) == len(t.users) == 32 for t in totals.values())
    flow.tracker.look(1.0)
    m = flow.tracker.report(1.0).metrics[0]
    assert m.control.users == 50_001 and m.control.n == 50_020


def test_checkpoint_keeps_the_buckets() -> None:
    rng = np.random.default_rng(10)
    flow = Flow(MetricSpec("click", "bool", 0.02), min_users=50, segments=("x",))
    clustered(flow, rng, 600, 0.2, 0.1)
    flow.tracker.look(1.0)
    data = json.loads(json.dumps(flow.tracker.to_dict()))
    restored = ExperimentTracker.from_dict(data, flow.settings)
    assert repr(restored.report(5.0)) == repr(flow.tracker.report(5.0))
    restored.look(6.0)
    flow.tracker.look(6.0)
    assert repr(restored.report(7.0)) == repr(flow.tracker.report(7.0))


def test_plan_follows_the_split_and_gives_the_time_to_decision() -> None:
    """At 95/5 the treatment needs 5/95 of the control's outcomes, from the power target's
    variance (statsmodels-checked in the stats tests); time at the epoch's outcome rate."""
    flow = Flow(MetricSpec("click", "bool", 0.01, baseline=0.1), weights={A: 9500, B: 500})
    for i in range(1900):
        flow.request(A, "", "click", i % 10 == 0)
    for i in range(100):
        flow.request(B, "", "click", i % 10 == 0)
    flow.tracker.look(100.0)
    m = flow.tracker.report(100.0).metrics[0]
    s2 = required_variance(0.01, m.tau_squared, 0.05, 0.8)
    n_a = (0.1 * 0.9 + 0.11 * 0.89 * 95 / 5) / s2
    assert m.planned_control == math.ceil(n_a)
    assert m.planned_treatment == math.ceil(n_a * 5 / 95)
    assert m.planned_per_arm == m.planned_control
    want = max((m.planned_control - 1900) * 100 / 1900, (m.planned_treatment - 100) * 100 / 100)
    assert m.expected_seconds == pytest.approx(want, rel=TOL)


def test_a_simpson_warning_holds_the_gate_instead_of_failing_it() -> None:
    """Balanced segment mix; the aggregate significantly favours A (KEEP_A) while one
    segment significantly favours B: the gate WAITs with the warning instead of FAIL."""
    flow = Flow(MetricSpec("click", "bool", 0.01), segments=("mobile", "desktop"))
    t = flow.tracker
    e = flow.epoch
    for variant, seg, hits, n in (
        (A, "mobile", 1000, 10_000),
        (B, "mobile", 1300, 10_000),
        (A, "desktop", 5000, 10_000),
        (B, "desktop", 4000, 10_000),
    ):
        for i in range(n):
            t.outcome(e, variant, seg, "click", i < hits)
    for _ in range(20_000):
        t.assigned(A)
        t.assigned(B)
    t.look(1.0)
    report = t.report(1.0)
    m = report.metrics[0]
    assert report.segment_mix is not None and not report.segment_mix.mismatch
    mix = stats.chi2_contingency([[10_000, 10_000], [10_000, 10_000]], correction=False)
    assert report.segment_mix.p_value == pytest.approx(float(mix[1]))
    assert m.verdict is ExperimentVerdict.KEEP_A and m.simpson_warning
    gate = t.gate()
    assert gate.status is GateStatus.WAIT and "Simpson" in gate.detail


def test_the_ledger_gives_the_same_unit_on_every_sidecar_and_marks_first_outcomes() -> None:
    one = OutcomeLedger(10, 60.0, {"click": "bool"})
    two = OutcomeLedger(10, 60.0, {"click": "bool"})
    one.remember("a", A, "", 0.0, 1, "user-1")
    two.remember("b", A, "", 0.0, 1, "user-1")
    one.remember("c", A, "", 0.0, 1, "user-1")
    first = one.report("a", "click", True, 0.0)
    again = one.report("c", "click", True, 0.0)
    other = two.report("b", "click", True, 0.0)
    assert first.unit == other.unit == unit_hash("user-1") and not first.keyless
    assert first.new_user and not again.new_user and other.new_user
    one.remember("d", A, "", 0.0, 1, "")
    keyless = one.report("d", "click", False, 0.0)
    assert keyless.keyless and keyless.new_user and keyless.unit == unit_hash("d")


def test_two_sidecars_bucket_totals_add_up_to_one_sidecars() -> None:
    """The same users' outcomes split over two trackers (two sidecars) give bucket totals
    whose sum equals one tracker that saw everything: the fleet merges by addition."""
    rng = np.random.default_rng(11)
    one, two, both = (Flow(MetricSpec("click", "bool", 0.02)) for _ in range(3))
    for u in range(300):
        variant = A if u % 2 else B
        for r in range(1 + int(rng.poisson(4))):
            hit = bool(rng.random() < 0.3)
            (one if r % 2 else two).request(variant, f"user-{u}", "click", hit)
            both.request(variant, f"user-{u}", "click", hit)
    a, b, c = (f.tracker.bucket_totals() for f in (one, two, both))
    for key, totals in c.items():
        merged = a[key].merge(b[key])
        assert merged.outcomes == totals.outcomes and merged.total == totals.total
        # a user seen by both sidecars is counted once by each: users add up to at least
        assert sum(merged.users) >= sum(totals.users)


def test_user_level_outcome_check_counts_users_with_the_exact_test() -> None:
    """A canary that loses the outcomes of a third of its users: blocked, on users."""
    flow = Flow(MetricSpec("click", "bool", 0.02))
    for u in range(3000):
        variant = A if u % 2 else B
        if variant == B and u % 3 == 0:  # served (assigned), outcomes lost
            for _ in range(3):
                flow.tracker.assigned(B)
            continue
        for _ in range(3):
            flow.request(variant, f"user-{u}", "click", bool(u % 5 == 0))
    flow.tracker.look(1.0)
    m = flow.tracker.report(1.0).metrics[0]
    users_a, users_b = m.control.users, m.treatment.users
    p = stats.binomtest(users_a, users_a + users_b, 0.5).pvalue
    assert m.verdict is ExperimentVerdict.BLOCKED
    assert "users with outcomes" in m.reason and f"exact binomial p {p:.3g}" in m.reason

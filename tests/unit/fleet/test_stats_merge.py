"""Fleet statistics are plain, mergeable data: a window survives to_dict/from_dict exactly,
merged windows equal one window fed every request, the merged view of several members reads
like one ring, and experiment counters merge to the counts of one tracker fed everything
(Chan's merge agrees with numpy to 1e-9)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sidecar.core.canary.merged import MergedWindows
from sidecar.core.canary.window import CumulativeWindows, RollingWindows, VariantWindow
from sidecar.core.experiment.analysis import ExperimentSettings, ExperimentTracker, MetricSpec
from sidecar.core.experiment.counters import MAX_SUM_LENGTH, ExperimentCounters
from sidecar.core.experiment.units import unit_hash


def _fill(window: VariantWindow, rng: np.random.Generator, n: int) -> None:
    for latency in rng.lognormal(-4.0, 0.6, n):
        window.record(float(latency), "OK")
    for _ in range(n // 10):
        window.record(0.05, "UNAVAILABLE")
    window.record(1.0, "DEADLINE_EXCEEDED")
    window.record(0.0, "OK")  # the zero bucket


def _same(a: VariantWindow, b: VariantWindow) -> None:
    assert (a.requests, a.errors, a.timeouts) == (b.requests, b.errors, b.timeouts)
    assert dict(a.errors_by_status) == dict(b.errors_by_status)
    ba, bb = a.latency_buckets(), b.latency_buckets()
    assert ba.keys.tolist() == bb.keys.tolist()
    assert np.allclose(ba.counts, bb.counts, rtol=0, atol=1e-9)
    for q in (0.0, 0.5, 0.95, 0.99, 1.0):
        assert a.quantile(q) == b.quantile(q)


def test_window_round_trips_through_json() -> None:
    w = VariantWindow()
    _fill(w, np.random.default_rng(1), 500)
    back = VariantWindow.from_dict(json.loads(json.dumps(w.to_dict())))
    _same(w, back)
    empty = VariantWindow.from_dict(VariantWindow().to_dict())
    assert empty.requests == 0 and empty.quantile(0.5) is None


def test_merged_published_windows_equal_one_window_fed_everything() -> None:
    rng = np.random.default_rng(2)
    parts = [VariantWindow() for _ in range(3)]
    everything = VariantWindow()
    for part in parts:
        values = rng.lognormal(-3.0, 1.0, 300)
        for v in values:
            part.record(float(v), "OK")
            everything.record(float(v), "OK")
        part.record(0.1, "INTERNAL")
        everything.record(0.1, "INTERNAL")
    published = [VariantWindow.from_dict(json.loads(json.dumps(p.to_dict()))) for p in parts]
    _same(VariantWindow.merged(published), everything)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(requests=-1), "requests"),
        (lambda d: d.update(errors=d["requests"] + 1), "timeouts <= errors <= requests"),
        (lambda d: d.update(bins=[[1, float("nan")]]), "bins count"),
        (lambda d: d.update(bins=[[1, 1.0]] * 3000), "bins"),
        (lambda d: d.update(bins=[[1, 1e12]]), "more latencies"),
        (lambda d: d.update(by_status={f"S{i}": 1 for i in range(40)}), "by_status"),
        (lambda d: d.update(accuracy="x"), "accuracy"),
    ],
)
def test_malformed_window_is_refused_naming_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    w = VariantWindow()
    _fill(w, np.random.default_rng(3), 50)
    data = w.to_dict()
    mutate(data)
    with pytest.raises(ValueError, match=field):
        VariantWindow.from_dict(data)


def _ring_with(records: list[tuple[str, float, float, str]]) -> RollingWindows:
    ring = RollingWindows(10.0, 600.0)
    for variant, now, latency, status in records:
        ring.record(variant, now, latency, status)
    return ring


def test_merged_view_reads_like_one_ring_and_partitions_time() -> None:
    rng = np.random.default_rng(4)
    t0 = 1_700_000_000.0
    rows = [
        (
            variant,
            t0 + float(t),
            float(rng.lognormal(-4, 0.5)),
            "OK" if rng.random() > 0.05 else "UNAVAILABLE",
        )
        for variant in ("stable", "canary")
        for t in np.sort(rng.uniform(0, 300, 400))
    ]
    members = [rows[i::3] for i in range(3)]
    local = _ring_with(members[0])
    remote = {
        f"m{i}": {
            v: {k: VariantWindow.from_dict(w.to_dict()) for k, w in buckets.items()}
            for v, buckets in _ring_with(members[i]).export(0).items()
        }
        for i in (1, 2)
    }
    merged = MergedWindows(local, settle=3.0)
    merged.set_remote(remote)
    one = _ring_with(rows)
    now = t0 + 310.0
    for variant in ("stable", "canary"):
        _same(merged.window(variant, now, 200.0), one.window(variant, now - 3.0, 200.0))
    # consecutive reads through CumulativeWindows partition time: all rows counted once
    cumulative = CumulativeWindows(t0)
    for step in range(1, 33):
        cumulative.advance(merged, t0 + step * 10.0 + 3.0)
    assert cumulative.window("stable").requests == sum(1 for r in rows if r[0] == "stable")
    assert set(merged.variants) == {"stable", "canary"}


SETTINGS = ExperimentSettings(
    metrics=(MetricSpec("click", "bool", 0.02, baseline=0.2), MetricSpec("revenue", "number", 1.0)),
    segments=("beta",),
)


def _tracker(now: float = 0.0) -> ExperimentTracker:
    t = ExperimentTracker(SETTINGS)
    t.sync("stable", "canary", {"stable": 5000, "canary": 5000}, now)
    return t


def test_experiment_counters_merge_to_one_trackers_counts() -> None:
    rng = np.random.default_rng(5)
    members = [_tracker() for _ in range(3)]
    one = _tracker()
    revenue: dict[str, list[float]] = {"stable": [], "canary": []}
    for i in range(3000):
        t = members[i % 3]
        arm = "canary" if rng.random() < 0.5 else "stable"
        seg = "beta" if rng.random() < 0.3 else "x"
        click = bool(rng.random() < 0.2)
        value = float(rng.normal(100.0, 5.0))
        for target in (t, one):
            target.assigned(arm)
            target.outcome(1, arm, seg, "click", click)
            target.outcome(1, arm, seg, "revenue", value)
        revenue[arm].append(value)
    published = [
        ExperimentCounters.from_dict(json.loads(json.dumps(m.counters().to_dict())))
        for m in members
    ]
    merged = ExperimentCounters.merged(published, members[0].counters().key)
    expected = one.counters()
    assert merged.assigned == expected.assigned
    assert merged.cells.keys() == expected.cells.keys()
    for where, (n, s, mean, m2) in merged.cells.items():
        en, es, emean, em2 = expected.cells[where]
        assert (n, s) == (en, es)
        assert mean == pytest.approx(emean, rel=1e-12)
        assert m2 == pytest.approx(em2, rel=1e-9)
    # the fleet view loads the merged counts and reports like the one tracker
    view = ExperimentTracker(SETTINGS)
    view.load_counters(merged, 0.0)
    view.look(1.0)
    one.look(1.0)
    got = {m.metric: m for m in view.report(1.0).metrics}
    want = {m.metric: m for m in one.report(1.0).metrics}
    for metric in ("click", "revenue"):
        assert got[metric].p_value == pytest.approx(want[metric].p_value, rel=1e-9, abs=1e-12)
    treatment = got["revenue"].treatment
    assert treatment.n == len(revenue["canary"])
    assert treatment.value.value == pytest.approx(np.mean(revenue["canary"]), rel=1e-9)
    assert treatment.std_dev == pytest.approx(np.std(revenue["canary"], ddof=1), rel=1e-9)


def test_counters_of_another_epoch_are_not_merged() -> None:
    a, b = _tracker(), ExperimentTracker(SETTINGS)
    b.sync("stable", "canary", {"stable": 9000, "canary": 1000}, 0.0)
    a.assigned("stable")
    b.assigned("stable")
    merged = ExperimentCounters.merged([a.counters(), b.counters()], a.counters().key)
    assert merged.assigned == {"stable": 1}
    with pytest.raises(ValueError, match="cannot merge"):
        a.counters().merge(b.counters())


@pytest.mark.parametrize(
    "bad",
    [
        {"key": "x"},
        {"key": None, "assigned": {"a": -1}},
        {"key": None, "cells": [["m", "v", "", 1, 2, 0.0, 0.0]]},
        {"key": None, "cells": [["m", "v", "", 1, 0, float("inf"), 0.0]]},
        {"key": None, "sums": {"b": [0.0] * (MAX_SUM_LENGTH + 1)}},
        {"key": None, "assigned": {f"v{i}": 1 for i in range(300)}},
    ],
)
def test_malformed_counters_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ExperimentCounters.from_dict(bad)


def test_plain_sums_merge_elementwise() -> None:
    key = ("stable", "canary", (("canary", 5000), ("stable", 5000)))
    a = ExperimentCounters(key, sums={"buckets": (1.0, 2.0)})
    b = ExperimentCounters(key, sums={"buckets": (10.0, 20.0)})
    assert a.merge(b).sums["buckets"] == (11.0, 22.0)
    back = ExperimentCounters.from_dict(json.loads(json.dumps(a.merge(b).to_dict())))
    assert back == a.merge(b)


class _Alerts:
    def __init__(self) -> None:
        self.events: list[str] = []

    def alert(self, event: str, fields: object) -> None:
        self.events.append(event)


def _service(tracker: ExperimentTracker, **fleet: object) -> tuple[object, _Alerts]:
    from sidecar.app.experiment import ExperimentService
    from sidecar.app.state import Snapshot
    from sidecar.core.routing import Flag
    from sidecar.core.state import DesiredState

    flag = Flag.build(
        key="k", variants=["stable", "canary"], stable="stable", canary="canary",
        weights={"stable": 5000, "canary": 5000},
    )  # fmt: skip
    snap = Snapshot(flag, DesiredState.from_flag(flag))
    alerts = _Alerts()
    service = ExperimentService(
        tracker,
        snapshot=lambda: snap,
        alerts=alerts,
        clock=lambda: 1.0,
        **fleet,  # type: ignore[arg-type]
    )
    return service, alerts


def test_experiment_service_reports_the_fleet_and_alerts_only_when_leading() -> None:
    """The service's looks, report and gate read the fleet view; a follower (alerting off)
    raises no alert for a sample-ratio mismatch the leader alerts."""
    local = _tracker()
    remote = _tracker()
    for _ in range(900):
        remote.assigned("stable")  # the fleet's split is 1000:100 against 50/50: SRM
    for _ in range(100):
        local.assigned("stable")
        local.assigned("canary")
    view = ExperimentTracker(SETTINGS)

    def fleet(tracker: ExperimentTracker, now: float) -> ExperimentTracker:
        merged = ExperimentCounters.merged(
            [tracker.counters(), remote.counters()], tracker.counters().key
        )
        view.load_counters(merged, now)
        return view

    for leading, expected in ((False, []), (True, ["experiment.sample_ratio_mismatch"])):
        service, alerts = _service(local, fleet=fleet, alerting=lambda leading=leading: leading)
        report = service.report()  # type: ignore[attr-defined]
        assert {a.variant: a.observed for a in report.srm.arms} == {"stable": 1000, "canary": 100}
        assert report.srm.mismatch
        assert alerts.events == expected
        view = ExperimentTracker(SETTINGS)  # a fresh view: the mismatch starts again
    alone, alerts = _service(local)
    assert {a.variant: a.observed for a in alone.report().srm.arms} == {
        "stable": 100,
        "canary": 100,
    }  # type: ignore[attr-defined]


def test_merged_view_can_read_back_its_whole_horizon() -> None:
    """Reads are shifted back by the settling time; the horizon the view offers accounts
    for it, so reading from `now - horizon_s` never needs a bucket the ring dropped."""
    ring = RollingWindows(0.5, 10.0)
    merged = MergedWindows(ring, settle=1.3)
    now = 1_700_000_000.0
    for i in range(200):
        ring.record("stable", now - 20.0 + i * 0.1, 0.01, "OK")
    assert merged.horizon_s == 8.5  # 10 s less the settling shift in whole buckets (1.5 s)
    assert merged.window("stable", now, merged.horizon_s).requests > 0
    with pytest.raises(ValueError, match="older than the buckets kept"):
        merged.window("stable", now, ring.horizon_s)


def test_user_buckets_merge_across_members_to_one_trackers_buckets() -> None:
    """Users as the unit in a fleet: a user's requests are spread over three members, each
    member counts the user's first outcome it sees as a new user. The published counters
    carry the user bucket totals as plain sums; merged, the buckets' outcome, value and
    squared-value sums equal those of one tracker fed everything (a user hashes to the same
    bucket on every member), so the user-level p-values agree to 1e-9. Only the user count
    can exceed the true one (a user seen by several members counts at each)."""
    rng = np.random.default_rng(11)
    members = [_tracker() for _ in range(3)]
    one = _tracker()
    seen_by: list[set[tuple[int, str]]] = [set() for _ in members]
    seen_once: set[str] = set()
    for user in range(800):
        key = f"user-{user}"
        unit = unit_hash(key)
        arm = "canary" if user % 2 else "stable"
        propensity = rng.beta(2.0, 8.0)
        for _ in range(int(rng.integers(1, 12))):
            m = int(rng.integers(0, 3))
            click = bool(rng.random() < propensity)
            for target, new in (
                (members[m], (unit, arm) not in seen_by[m]),
                (one, key not in seen_once),
            ):
                target.assigned(arm)
                target.outcome(1, arm, "x", "click", click, unit=unit, keyless=False, new_user=new)
            seen_by[m].add((unit, arm))
            seen_once.add(key)
    published = [
        ExperimentCounters.from_dict(json.loads(json.dumps(m.counters().to_dict())))
        for m in members
    ]
    merged = ExperimentCounters.merged(published, members[0].counters().key)
    view = ExperimentTracker(SETTINGS)
    view.load_counters(merged, 0.0)
    got, want = view.bucket_totals(), one.bucket_totals()
    assert got.keys() == want.keys()
    for where, totals in want.items():
        assert got[where].outcomes == totals.outcomes
        assert np.allclose(got[where].total, totals.total, rtol=1e-12, atol=0)
        assert np.allclose(got[where].total_sq, totals.total_sq, rtol=1e-12, atol=0)
        assert got[where].n_users >= totals.n_users
    assert sum(t.n_users for t in want.values()) == 800
    view.look(1.0)
    one.look(1.0)
    g = {m.metric: m for m in view.report(1.0).metrics}["click"]
    w = {m.metric: m for m in one.report(1.0).metrics}["click"]
    assert w.unit == "user"  # the comparison is of the user-level analysis
    assert g.unit == w.unit
    assert g.p_value == pytest.approx(w.p_value, rel=1e-9, abs=1e-12)


def test_fleet_view_whose_counts_go_down_starts_afresh_instead_of_failing() -> None:
    """A fleet view loaded with fewer counts than before (a member's statistics expired,
    or it restarted without its checkpoint) starts a new epoch on the merged counts; a
    look and a report still work and read the new counts."""
    rng = np.random.default_rng(3)
    members = [_tracker() for _ in range(2)]
    for i in range(2000):
        t = members[i % 2]
        arm = "canary" if rng.random() < 0.5 else "stable"
        t.assigned(arm)
        t.outcome(1, arm, "x", "click", bool(rng.random() < 0.2))
        t.outcome(1, arm, "x", "revenue", float(rng.normal(100.0, 5.0)))
    key = members[0].counters().key
    both = ExperimentCounters.merged([m.counters() for m in members], key)
    view = ExperimentTracker(SETTINGS)
    view.load_counters(both, 0.0)
    view.look(1.0)
    first_epoch = view.report(1.0).epoch
    view.load_counters(members[0].counters(), 2.0)  # the other member's counts are gone
    view.look(3.0)
    report = view.report(3.0)
    assert report.epoch == first_epoch + 1
    click = {m.metric: m for m in report.metrics}["click"]
    assert click.control.n + click.treatment.n == sum(
        c[0] for (m, _, _), c in members[0].counters().cells.items() if m == "click"
    )

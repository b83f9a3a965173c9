"""Unit tests for the canary's bounded window statistics (sidecar.core.canary.window)."""

from __future__ import annotations

import gc
import itertools
import math
import tracemalloc

import numpy as np
import pytest
from ddsketch import LogCollapsingLowestDenseDDSketch
from ddsketch.mapping import LogarithmicMapping
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.canary import (
    MAX_STATUS_NAMES,
    CumulativeWindows,
    RollingWindows,
    VariantWindow,
)

LATENCIES = st.lists(
    st.one_of(st.floats(min_value=0.0, max_value=100.0), st.just(0.0)), min_size=0, max_size=60
)


def filled(latencies: list[float], status: str = "OK") -> VariantWindow:
    w = VariantWindow()
    for x in latencies:
        w.record(x, status)
    return w


def same_buckets(a: VariantWindow, b: VariantWindow) -> bool:
    x, y = a.latency_buckets(), b.latency_buckets()
    return bool(np.array_equal(x.keys, y.keys) and np.array_equal(x.counts, y.counts))


# ------------------------------------------------------------------ VariantWindow


def test_empty_window_reports_zeros_and_none() -> None:
    """A fresh window has no requests, None rates and None quantiles."""
    w = VariantWindow()
    assert (w.requests, w.errors, w.timeouts, w.successes, w.latency_count) == (0, 0, 0, 0, 0)
    assert w.error_rate is None and w.timeout_rate is None
    assert w.quantile(0.5) is None
    assert w.latency_buckets().total == 0
    assert dict(w.errors_by_status) == {}


def test_record_counts_requests_errors_and_timeouts() -> None:
    """Every non-OK status is an error; DEADLINE_EXCEEDED is also a timeout."""
    w = VariantWindow()
    for status in ["OK"] * 7 + ["UNAVAILABLE", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"]:
        w.record(0.01, status)
    assert (w.requests, w.errors, w.timeouts, w.successes) == (10, 3, 2, 7)
    assert w.error_rate == pytest.approx(0.3)
    assert w.timeout_rate == pytest.approx(0.2)
    assert dict(w.errors_by_status) == {"DEADLINE_EXCEEDED": 2, "UNAVAILABLE": 1}


def test_only_successful_latencies_enter_the_sketch() -> None:
    """Failed requests count but their latencies (fast failures, deadlines) are left out."""
    w = VariantWindow()
    for _ in range(9):
        w.record(0.020, "OK")
    w.record(5.0, "DEADLINE_EXCEEDED")
    w.record(0.0001, "INTERNAL")
    assert w.latency_count == 9
    assert w.quantile(1.0) == pytest.approx(0.020, rel=0.01)
    assert w.quantile(0.0) == pytest.approx(0.020, rel=0.01)


@pytest.mark.parametrize("latency", [math.nan, math.inf, -0.5])
def test_bad_latency_counts_the_request_but_not_the_latency(latency: float) -> None:
    """NaN, infinite or negative latencies are skipped; the request still counts."""
    w = VariantWindow()
    w.record(latency, "OK")
    assert (w.requests, w.successes, w.latency_count) == (1, 1, 0)


def test_errors_by_status_keeps_a_bounded_number_of_names() -> None:
    """Beyond MAX_STATUS_NAMES distinct names, errors are counted under OTHER."""
    w = VariantWindow()
    for i in range(MAX_STATUS_NAMES + 10):
        w.record(0.0, f"CODE_{i}")
    by_status = w.errors_by_status
    assert len(by_status) == MAX_STATUS_NAMES + 1
    assert by_status["OTHER"] == 10
    assert sum(by_status.values()) == w.errors == MAX_STATUS_NAMES + 10
    with pytest.raises(TypeError):
        by_status["X"] = 1  # type: ignore[index]


def test_quantiles_are_within_the_relative_accuracy() -> None:
    """Quantiles are within 1% of the exact order statistic at rank q * (n - 1)."""
    rng = np.random.default_rng(1)
    data = rng.lognormal(math.log(0.02), 0.8, 5000)
    w = filled(data.tolist())
    ordered = np.sort(data)
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
        exact = ordered[math.floor(q * (data.size - 1))]
        got = w.quantile(q)
        assert got is not None
        assert got == pytest.approx(exact, rel=0.0101)


@settings(max_examples=60, deadline=None)
@given(LATENCIES, st.floats(min_value=0.0, max_value=1.0))
def test_quantile_equals_ddsketch(latencies: list[float], q: float) -> None:
    """The vectorised quantile returns exactly what ddsketch's get_quantile_value does."""
    w = filled(latencies)
    ref = LogCollapsingLowestDenseDDSketch(0.01, 2048)
    for x in latencies:
        ref.add(x)
    assert w.quantile(q) == ref.get_quantile_value(q)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e6), max_size=80),
    st.sampled_from([2048, 24]),
)
def test_per_request_add_equals_ddsketch_add(latencies: list[float], bin_limit: int) -> None:
    """The window's faster per-request add fills the same bins (also when a small bin
    limit makes the store collapse) with the same count, min and max as ddsketch's."""
    w = VariantWindow(bin_limit=bin_limit)
    ref = LogCollapsingLowestDenseDDSketch(0.01, bin_limit)
    for x in latencies:
        w.record(x, "OK")
        ref.add(x)
    ours, theirs = w._sketch._store, ref._store
    assert (ours.offset, ours.min_key, ours.max_key) == (
        theirs.offset,
        theirs.min_key,
        theirs.max_key,
    )
    assert ours.bins == theirs.bins and ours.count == theirs.count
    assert w._sketch._zero_count == ref._zero_count
    assert (w._sketch.count, w._sketch._min, w._sketch._max) == (ref.count, ref._min, ref._max)
    assert w._sketch.sum == pytest.approx(ref.sum)


def test_quantile_rejects_out_of_range_q() -> None:
    """q outside [0, 1] is a caller error."""
    with pytest.raises(ValueError, match="q must be"):
        VariantWindow().quantile(1.5)


def test_latency_buckets_hold_keys_values_and_counts() -> None:
    """Buckets are ascending, read-only, valued as the mapping values them, and expand to
    one value per successful request (zero latencies in the zero bucket)."""
    w = filled([0.0, 0.0, 0.010, 0.010, 0.0101, 0.5])
    b = w.latency_buckets()
    assert np.all(np.diff(b.keys) > 0)
    assert b.total == 6 and b.expand().size == 6
    assert b.values[0] == 0.0 and b.counts[0] == 2.0
    mapping = LogarithmicMapping(0.01)
    for key, value in zip(b.keys[1:], b.values[1:], strict=True):
        assert value == pytest.approx(mapping.value(int(key)), rel=1e-12)
    with pytest.raises(ValueError):
        b.counts[0] = 5.0


def test_merge_returns_a_new_window_and_leaves_inputs_alone() -> None:
    """merge() sums counters and sketches into a new window; neither input changes."""
    a = filled([0.01, 0.02, 0.03])
    a.record(0.0, "UNAVAILABLE")
    b = filled([0.04, 0.05])
    b.record(0.0, "DEADLINE_EXCEEDED")
    m = a.merge(b)
    assert m is not a and m is not b
    assert (m.requests, m.errors, m.timeouts, m.latency_count) == (7, 2, 1, 5)
    assert dict(m.errors_by_status) == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    assert (a.requests, b.requests) == (4, 3)
    both = filled([0.01, 0.02, 0.03, 0.04, 0.05])
    assert same_buckets(m, both)
    m.record(1.0, "OK")
    assert a.latency_count == 3 and b.latency_count == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(LATENCIES, min_size=0, max_size=6))
def test_merging_many_equals_ddsketch_merges_and_recording_everything(
    parts: list[list[float]],
) -> None:
    """VariantWindow.merged gives the same buckets, count, min and max as merging the
    sketches one by one with ddsketch, and as recording all values into one window."""
    windows = [filled(p) for p in parts]
    merged = VariantWindow.merged(windows)
    ref = LogCollapsingLowestDenseDDSketch(0.01, 2048)
    for w in windows:
        ref.merge(w._sketch)
    assert merged._sketch.count == ref.count
    assert merged._sketch._min == ref._min and merged._sketch._max == ref._max
    assert merged._sketch._store.count == ref._store.count
    for q in (0.0, 0.3, 0.5, 0.95, 1.0):
        assert merged.quantile(q) == ref.get_quantile_value(q)
    assert same_buckets(merged, filled([x for p in parts for x in p]))


def test_merge_rejects_windows_with_different_accuracies() -> None:
    """Sketches at different accuracies have incompatible buckets."""
    with pytest.raises(ValueError, match="accuracies"):
        VariantWindow(0.01).merge(VariantWindow(0.02))
    with pytest.raises(TypeError):
        VariantWindow().merge("nope")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(LATENCIES, st.data())
def test_record_many_equals_recording_one_by_one(
    latencies: list[float], data: st.DataObject
) -> None:
    """record_many(status, latencies, counts) gives the same counts and buckets as
    calling record() once per request."""
    counts = data.draw(
        st.lists(st.integers(0, 4), min_size=len(latencies), max_size=len(latencies))
    )
    one = VariantWindow()
    for x, c in zip(latencies, counts, strict=True):
        for _ in range(c):
            one.record(x, "OK")
    batch = VariantWindow()
    batch.record_many("OK", latencies, counts)
    assert (batch.requests, batch.latency_count) == (one.requests, one.latency_count)
    assert same_buckets(batch, one)
    if one.latency_count:
        assert batch._sketch._min == one._sketch._min and batch._sketch._max == one._sketch._max


def test_record_many_counts_errors_by_status() -> None:
    """A batch of errors counts as errors (and timeouts) without touching the sketch."""
    w = VariantWindow()
    w.record_many("DEADLINE_EXCEEDED", [1.0, 2.0], [3, 4])
    w.record_many("UNAVAILABLE", [0.0])
    assert (w.requests, w.errors, w.timeouts, w.latency_count) == (8, 8, 7, 0)


@pytest.mark.parametrize("counts", [[1, -1], [1.5, 1], [1], [math.nan, 1]])
def test_record_many_rejects_bad_counts(counts: list[float]) -> None:
    """Negative, fractional, NaN or mismatched counts are caller errors."""
    with pytest.raises(ValueError, match="counts"):
        VariantWindow().record_many("OK", [0.1, 0.2], counts)


# ------------------------------------------------------------------ RollingWindows


def test_since_reads_complete_buckets_half_open() -> None:
    """since(start, now) merges buckets index(start) <= i < index(now): the bucket holding
    `now` is still filling and left out."""
    r = RollingWindows(10.0, 600.0)
    for t in range(0, 35):  # one request per second, 0..34 s
        r.record("canary", float(t), 0.01, "OK")
    assert r.bucket_index(34.9) == 3
    assert r.since("canary", 0.0, 34.9).requests == 30  # buckets 0, 1, 2
    assert r.since("canary", 10.0, 30.0).requests == 20  # buckets 1, 2
    assert r.since("canary", 15.0, 19.0).requests == 0  # same bucket: nothing complete
    assert r.since("stable", 0.0, 34.9).requests == 0  # unknown variant: empty


def test_consecutive_reads_partition_time_exactly() -> None:
    """since(a, b) + since(b, c) == since(a, c): no request counted twice or lost."""
    r = RollingWindows(10.0, 600.0)
    rng = np.random.default_rng(2)
    for t in np.sort(rng.uniform(0, 300, 2000)):
        r.record("v", float(t), 0.01, "OK" if rng.random() > 0.1 else "INTERNAL")
    a, b, c = 3.0, 127.5, 299.0
    left, right, whole = r.since("v", a, b), r.since("v", b, c), r.since("v", a, c)
    assert left.requests + right.requests == whole.requests
    assert left.errors + right.errors == whole.errors
    assert same_buckets(left.merge(right), whole)


def test_window_covers_the_span_before_now_in_whole_buckets() -> None:
    """window(v, now, span) is since(v, now - span, now), its start rounded down."""
    r = RollingWindows(10.0, 600.0)
    for t in range(0, 200):
        r.record("v", float(t), 0.01, "OK")
    assert r.window("v", 100.0, 60.0).requests == 60  # buckets 4..9
    assert r.window("v", 105.0, 60.0).requests == 60  # start 45 -> bucket 4
    assert r.window("v", 105.0, 55.0).requests == 50  # start 50 -> buckets 5..9
    with pytest.raises(ValueError, match="span_s"):
        r.window("v", 100.0, -1.0)


def test_old_buckets_expire_and_reads_refuse_ranges_beyond_the_horizon() -> None:
    """Buckets older than the horizon are reused for new ones; asking for them raises."""
    r = RollingWindows(10.0, 100.0)  # 10 complete buckets + the one filling
    assert r.buckets == 10 and r.horizon_s == 100.0
    for t in range(0, 250):
        r.record("v", float(t), 0.01, "OK")
    assert r.since("v", 150.0, 250.0).requests == 100  # buckets 15..24, all kept
    assert r.since("v", 150.0, 245.0).requests == 90  # bucket 24 is still filling
    assert r.since("v", 140.0, 250.0).requests == 110  # bucket 14 not yet reused
    with pytest.raises(ValueError, match="older than"):
        r.since("v", 130.0, 250.0)
    with pytest.raises(ValueError, match="after now"):
        r.since("v", 200.0, 150.0)


def test_late_records_are_dropped_and_counted() -> None:
    """A record for a bucket already outside the horizon is dropped, never raises."""
    r = RollingWindows(10.0, 100.0)
    r.record("v", 500.0, 0.01, "OK")
    r.record("v", 395.0, 0.01, "OK")  # bucket 39 <= 50 - 11: its slot is reused
    r.record("v", 420.0, 0.01, "OK")  # bucket 42: still kept
    assert r.dropped == 1
    assert r.since("v", 420.0, 510.0).requests == 2


def test_record_never_raises_and_counts_what_it_drops() -> None:
    """Bad `now`, a latency that is not a number, or too many variants: dropped, counted."""
    r = RollingWindows(10.0, 60.0, max_variants=2)
    r.record("a", math.nan, 0.01, "OK")
    r.record("a", math.inf, 0.01, "OK")
    r.record("a", 1.0, "slow", "OK")  # type: ignore[arg-type]
    r.record("b", 1.0, 0.01, "OK")
    r.record("c", 1.0, 0.01, "OK")  # third variant
    assert r.dropped == 4
    assert r.variants == ("a", "b")
    assert r.since("a", 0.0, 20.0).requests == 0
    assert r.since("b", 0.0, 20.0).requests == 1


def test_rolling_windows_validate_their_configuration() -> None:
    """Bucket width, horizon and variant limit must be positive."""
    for kwargs in ({"bucket_s": 0.0}, {"horizon_s": -1.0}, {"max_variants": 0}):
        with pytest.raises(ValueError):
            RollingWindows(**kwargs)


def test_memory_stays_flat_over_a_million_records() -> None:
    """1,000,000 records over 2.8 hours of virtual time (ring of 30 minutes) leave memory
    flat: the second half of the records adds no allocations beyond noise."""
    r = RollingWindows(10.0, 1800.0)
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(math.log(0.02), 0.7, 4096).tolist()
    statuses = ["OK"] * 60 + ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "OK"]
    variants = ["canary"] + ["stable"] * 19
    half = 500_000
    # Inputs come from iterators that allocate (almost) nothing, so tracemalloc sees the
    # windows' own allocations; one record every 10 ms of virtual time.
    feed = zip(
        itertools.count(0.0, 0.01),
        itertools.cycle(variants),
        itertools.cycle(latencies),
        itertools.cycle(statuses),
        strict=False,
    )
    record = r.record
    gc.collect()
    tracemalloc.start()
    try:
        for now, variant, latency, status in itertools.islice(feed, half):
            record(variant, now, latency, status)
        gc.collect()
        middle, _ = tracemalloc.get_traced_memory()
        for now, variant, latency, status in itertools.islice(feed, half):
            record(variant, now, latency, status)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.dropped == 0
    assert r.window("stable", 10_000.0, 1800.0).requests == 171_000
    assert end - middle < 64 * 1024, f"memory grew by {end - middle} bytes"
    assert middle < 16 * 1024 * 1024, f"{middle} bytes for a full ring"


# ------------------------------------------------------------------ CumulativeWindows


def test_cumulative_windows_keep_totals_beyond_the_ring_horizon() -> None:
    """Advancing every minute over an hour totals every request, with a 10-minute ring."""
    r = RollingWindows(10.0, 600.0)
    cumulative = CumulativeWindows(0.0)
    for minute in range(60):
        for s in range(60):
            t = minute * 60 + s
            r.record("canary", float(t), 0.01, "INTERNAL" if t % 100 == 0 else "OK")
        cumulative.advance(r, (minute + 1) * 60.0)
    w = cumulative.window("canary")
    assert (w.requests, w.errors) == (3600, 36)
    assert cumulative.window("stable").requests == 0
    w.record(0.01, "OK")  # a copy: the total does not change
    assert cumulative.window("canary").requests == 3600


def test_cumulative_advance_that_skips_past_the_horizon_raises_and_changes_nothing() -> None:
    """A gap longer than the ring cannot be totalled: ValueError, totals unchanged."""
    r = RollingWindows(10.0, 60.0)
    cumulative = CumulativeWindows(0.0)
    r.record("v", 5.0, 0.01, "OK")
    cumulative.advance(r, 30.0)
    r.record("v", 500.0, 0.01, "OK")
    with pytest.raises(ValueError):
        cumulative.advance(r, 510.0)
    assert cumulative.last == 30.0
    assert cumulative.window("v").requests == 1

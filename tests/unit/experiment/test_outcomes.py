"""Outcome attribution: variant and segment of the serving request, counted once,
bounded in time and count, configured metrics and kinds only, declared segments only,
per-key caps, and memory bounded in bytes whatever the client sends."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import pytest

from sidecar.core.experiment import (
    OTHER_SEGMENT,
    OutcomeLedger,
    UnknownMetric,
    UnknownRequest,
    WrongValueType,
)

KINDS = {"click": "bool", "revenue": "number", "latency_ok": "number"}


def test_outcomes_are_attributed_and_counted_once() -> None:
    """A report goes to the variant and segment that served; a repeat is not counted."""
    ledger = OutcomeLedger(kinds=KINDS, segments=["beta"])
    ledger.remember("r1", "canary", "beta", now=0.0)
    ledger.remember("r2", "stable", "", now=0.0)
    first = ledger.report("r1", "click", True, now=1.0)
    assert (first.variant, first.segment, first.counted) == ("canary", "beta", True)
    assert not ledger.report("r1", "click", True, now=2.0).counted
    ledger.report("r2", "click", False, now=2.0)
    ledger.report("r1", "revenue", 12.5, now=2.0)
    assert ledger.counters[("click", "canary", "beta")].successes == 1
    assert ledger.counters[("click", "stable", "")].n == 1
    revenue = ledger.counters[("revenue", "canary", "beta")]
    assert (revenue.n, revenue.total, revenue.total_sq) == (1, 12.5, 156.25)
    assert ledger.duplicates == 1


def test_unknown_expired_and_evicted_requests_are_refused_and_counted() -> None:
    """Unknown ids, ids older than the TTL and ids evicted by the count bound are refused."""
    ledger = OutcomeLedger(max_requests=2, ttl_seconds=10.0, kinds=KINDS)
    with pytest.raises(UnknownRequest):
        ledger.report("never", "click", True, now=0.0)
    ledger.remember("a", "stable", "", now=0.0)
    ledger.remember("b", "stable", "", now=5.0)
    ledger.remember("c", "stable", "", now=6.0)  # evicts "a"
    with pytest.raises(UnknownRequest):
        ledger.report("a", "click", True, now=6.0)
    with pytest.raises(UnknownRequest):
        ledger.report("b", "click", True, now=15.5)  # 10.5 s old
    assert ledger.evicted == 1 and ledger.expired == 1
    assert ledger.refused["unknown_request"] == 3
    assert ledger.report("c", "click", True, now=15.5).counted


def test_a_metric_keeps_its_configured_value_type() -> None:
    """Kinds come from configuration and apply from the first report: a boolean metric
    refuses numbers and the reverse; no report can change a configured kind."""
    ledger = OutcomeLedger(kinds=KINDS)
    for i in range(3):
        ledger.remember(f"r{i}", "stable", "", now=0.0)
    with pytest.raises(WrongValueType, match="click"):
        ledger.report("r0", "click", 1.0, now=0.0)  # the first report of click
    with pytest.raises(WrongValueType, match="revenue"):
        ledger.report("r0", "revenue", True, now=0.0)
    assert ledger.report("r0", "click", True, now=0.0).counted
    assert ledger.report("r1", "latency_ok", 0.3, now=0.0).counted
    with pytest.raises(WrongValueType):
        ledger.report("r2", "latency_ok", True, now=0.0)
    assert dict(ledger.kinds) == KINDS
    with pytest.raises(ValueError, match=r"kinds\[x\]"):
        OutcomeLedger(kinds={"x": "float"})
    with pytest.raises(ValueError, match="kinds"):
        OutcomeLedger(kinds={" ": "bool"})


def test_undeclared_metrics_are_refused_naming_the_configured_ones() -> None:
    """Any other metric name is refused (counted in `refused`, never kept): 10,000 junk
    names change nothing, and the configured metrics still count afterwards."""
    ledger = OutcomeLedger(kinds=KINDS)
    ledger.remember("r", "stable", "", now=0.0)
    with pytest.raises(UnknownMetric, match="click, revenue, latency_ok") as info:
        ledger.report("r", "clicks", True, now=0.0)
    assert "'clicks'" in str(info.value)
    for i in range(10_000):
        with pytest.raises(UnknownMetric):
            ledger.report("r", f"junk-{i}", True, now=0.0)
    assert ledger.counters == {} and ledger.refused["unknown_metric"] == 10_001
    assert ledger.report("r", "click", True, now=0.0).counted
    assert ledger.report("r", "revenue", 2.0, now=0.0).counted


def test_without_configured_metrics_every_report_is_refused() -> None:
    """No `experiment.metrics`: nothing would be analysed, so every report is refused
    with a message saying so, and nothing is counted."""
    ledger = OutcomeLedger()
    ledger.remember("r", "stable", "", now=0.0)
    with pytest.raises(UnknownMetric, match=r"experiment\.metrics is empty"):
        ledger.report("r", "click", True, now=0.0)
    assert ledger.counters == {}


def test_memory_stays_flat_over_many_outcomes() -> None:
    """200,000 served requests and outcomes: memory is bounded by max_requests and the
    counters, not by the number of outcomes."""
    ledger = OutcomeLedger(max_requests=10_000, ttl_seconds=60.0, kinds=KINDS)

    def run(start: int, count: int) -> None:
        for i in range(start, start + count):
            rid = f"r{i}"
            ledger.remember(rid, "canary" if i % 10 == 0 else "stable", f"s{i % 5}", now=i * 1e-3)
            ledger.report(rid, "click", i % 7 == 0, now=i * 1e-3)

    run(0, 20_000)
    gc.collect()
    tracemalloc.start()
    run(20_000, 30_000)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    run(50_000, 150_000)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(ledger) == 10_000
    assert sum(c.n for c in ledger.counters.values()) == 200_000
    assert after - before < 256 * 1024, after - before


def test_non_finite_numbers_are_refused() -> None:
    """NaN or infinity would poison the sums; they are refused and nothing is counted."""
    ledger = OutcomeLedger(kinds=KINDS)
    ledger.remember("r", "stable", "", now=0.0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(WrongValueType, match="finite"):
            ledger.report("r", "latency_ok", bad, now=0.0)
    assert ledger.counters == {}
    assert ledger.report("r", "latency_ok", 0.5, now=0.0).counted


def test_epoch_is_remembered_and_returned() -> None:
    """The experiment epoch of the serving request comes back with the attribution;
    requests outside the experiment default to -1."""
    ledger = OutcomeLedger(kinds=KINDS)
    ledger.remember("a", "canary", "beta", now=0.0, epoch=3)
    ledger.remember("b", "stable", "", now=0.0)
    first = ledger.report("a", "click", True, now=0.0)
    assert (first.epoch, first.counted) == (3, True)
    assert ledger.report("a", "click", True, now=0.0).epoch == 3  # a duplicate too
    assert ledger.report("b", "click", False, now=0.0).epoch == -1
    served = ledger._served["a"]
    assert not hasattr(served, "__dict__")  # slotted: memory per request stays small


def test_undeclared_segments_are_kept_as_other() -> None:
    """Declared segments are kept (as the configured string), no segment as "", any other
    segment as "other": the client's string is never held."""
    ledger = OutcomeLedger(kinds=KINDS, segments=["ios", "web"])
    ios = "".join(["i", "os"])  # an equal string that is not the configured object
    ledger.remember("a", "stable", ios, now=0.0)
    ledger.remember("b", "stable", "tablet", now=0.0)
    ledger.remember("c", "stable", "", now=0.0)
    assert ledger._served["a"].segment == "ios" and ledger._served["a"].segment is not ios
    assert ledger.report("b", "click", True, now=0.0).segment == OTHER_SEGMENT
    assert ledger.report("c", "click", True, now=0.0).segment == ""
    assert {key[2] for key in ledger.counters} == {OTHER_SEGMENT, ""}


def _held_bytes(ledger: OutcomeLedger) -> int:
    """Bytes held by the ledger's tables: entries, their strings and the counter keys."""
    total = sys.getsizeof(ledger._served) + sys.getsizeof(ledger.counters)
    for rid, served in ledger._served.items():
        total += sys.getsizeof(rid) + sys.getsizeof(served) + sys.getsizeof(served.segment)
    for key in ledger.counters:
        total += sum(sys.getsizeof(part) for part in key)
    return total + sys.getsizeof(ledger._tally) + 100 * len(ledger._tally)


def test_unique_huge_segments_and_keys_pin_no_memory() -> None:
    """The issue's attack on the ledger: 400 requests with unique 1 MiB segments and
    targeting keys (and 64 unique 1 MiB metric names reported) keep the ledger's size what
    400 ordinary requests take: segments become "other", keys a hash, metrics refused."""
    small = OutcomeLedger(kinds=KINDS, segments=["ios"], max_per_key=20)
    huge = OutcomeLedger(kinds=KINDS, segments=["ios"], max_per_key=20)
    mib = 1 << 20
    for i in range(400):
        small.remember(f"{i:032x}", "stable", "tablet", now=0.0, targeting_key=f"u{i}")
        big = f"{i:08d}".ljust(mib, "s")
        huge.remember(f"{i:032x}", "stable", big, now=0.0, targeting_key=big)
        for ledger in (small, huge):
            ledger.report(f"{i:032x}", "click", True, now=0.0)
    for i in range(64):
        with pytest.raises(UnknownMetric):
            huge.report(f"{i:032x}", f"{i:08d}".ljust(mib, "m"), True, now=0.0)
    del big
    assert len(huge) == 400 and huge.tracked_keys == 400
    assert huge.counters.keys() == {("click", "stable", OTHER_SEGMENT)}
    assert _held_bytes(huge) == _held_bytes(small)
    assert _held_bytes(huge) < 400 * 1024  # under 1 KiB per remembered request


def test_per_key_cap_counts_one_unit_at_most_n_times_per_metric_and_epoch() -> None:
    """One targeting key is counted at most `max_per_key` times per metric and epoch;
    more reports are accepted, not counted, and counted as capped. Other keys, other
    metrics, a new epoch and keyless requests are not affected."""
    ledger = OutcomeLedger(kinds=KINDS, max_per_key=3)
    for i in range(10):
        ledger.remember(f"m{i}", "canary", "", now=0.0, epoch=1, targeting_key="mallory")
        ledger.remember(f"k{i}", "canary", "", now=0.0, epoch=1)  # no key: own units
        ledger.remember(f"n{i}", "canary", "", now=0.0, epoch=2, targeting_key="mallory")
    counted = [ledger.report(f"m{i}", "click", False, now=0.0) for i in range(10)]
    assert [a.counted for a in counted] == [True] * 3 + [False] * 7
    assert all(a.capped for a in counted[3:]) and ledger.capped == 7
    assert ledger.report("m9", "revenue", 1.0, now=0.0).counted  # another metric
    assert all(ledger.report(f"k{i}", "click", True, now=0.0).counted for i in range(10))
    assert sum(ledger.report(f"n{i}", "click", True, now=0.0).counted for i in range(10)) == 3
    assert not ledger.report("m0", "click", True, now=0.0).counted  # a duplicate
    assert ledger.duplicates == 1 and ledger.capped == 14
    assert ledger.counters[("click", "canary", "")].n == 3 + 10 + 3


def test_the_tally_table_is_bounded() -> None:
    """At most `max_keys` (key, epoch, metric) tallies; the least recently used goes."""
    ledger = OutcomeLedger(kinds=KINDS, max_per_key=1, max_keys=100)
    for i in range(1000):
        ledger.remember(f"r{i}", "stable", "", now=0.0, targeting_key=f"user-{i}")
        assert ledger.report(f"r{i}", "click", True, now=0.0).counted
    assert ledger.tracked_keys == 100 and ledger.forgotten == 900
    stats = ledger.stats()
    assert (stats["counted"], stats["tracked_keys"], stats["forgotten_keys"]) == (1000, 100, 900)


def test_a_key_enters_an_epoch_at_most_n_times() -> None:
    """`admit`: the first `max_per_key` split-routed requests of a key per epoch enter the
    experiment, later ones do not (counted); keyless requests and a new epoch always do;
    without a cap everything does."""
    ledger = OutcomeLedger(kinds=KINDS, max_per_key=2)
    assert [ledger.admit("mallory", 1) for _ in range(4)] == [True, True, False, False]
    assert ledger.admit("alice", 1) and ledger.admit("mallory", 2)
    assert all(ledger.admit("", 1) for _ in range(10))
    assert ledger.capped_assignments == 2 and ledger.stats()["capped_assignments"] == 2
    uncapped = OutcomeLedger(kinds=KINDS)
    assert all(uncapped.admit("mallory", 1) for _ in range(100))


def test_a_unit_handed_in_counts_as_the_key_it_was_hashed_from() -> None:
    """The request path hashes a key once (`unit_of`) and hands the unit to `admit` and
    `remember`: the same admissions and the same stored unit as when they hash it."""
    from sidecar.core.experiment.units import unit_hash, unit_of

    assert unit_of("") is None and unit_of("mallory") == unit_hash("mallory")
    ledger = OutcomeLedger(kinds=KINDS, max_per_key=2)
    unit = unit_of("mallory")
    assert [ledger.admit("mallory", 1, unit) for _ in range(2)] == [True, True]
    assert not ledger.admit("mallory", 1)  # the handed-in unit filled the key's share
    ledger.remember("r1", "stable", "", 0.0, 1, "mallory", unit)
    ledger.remember("r2", "stable", "", 0.0, 1, "mallory")
    assert ledger._served["r1"].unit == ledger._served["r2"].unit == unit_hash("mallory")

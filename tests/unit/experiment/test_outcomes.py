"""Outcome attribution: variant and segment of the serving request, counted once,
bounded in time and count, fixed value types, flat memory."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from sidecar.core.experiment import OutcomeLedger, UnknownRequest, WrongValueType


def test_outcomes_are_attributed_and_counted_once() -> None:
    """A report goes to the variant and segment that served; a repeat is not counted."""
    ledger = OutcomeLedger()
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
    ledger = OutcomeLedger(max_requests=2, ttl_seconds=10.0)
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
    assert ledger.report("c", "click", True, now=15.5).counted


def test_a_metric_keeps_its_value_type() -> None:
    """A metric first reported as boolean refuses numbers, and the reverse."""
    ledger = OutcomeLedger()
    for i in range(3):
        ledger.remember(f"r{i}", "stable", "", now=0.0)
    ledger.report("r0", "click", True, now=0.0)
    with pytest.raises(WrongValueType, match="click"):
        ledger.report("r1", "click", 1.0, now=0.0)
    ledger.report("r1", "latency_ok", 0.3, now=0.0)
    with pytest.raises(WrongValueType):
        ledger.report("r2", "latency_ok", True, now=0.0)
    with pytest.raises(WrongValueType):
        ledger.report("r2", " ", True, now=0.0)


def test_memory_stays_flat_over_many_outcomes() -> None:
    """200,000 served requests and outcomes: memory is bounded by max_requests and the
    counters, not by the number of outcomes."""
    ledger = OutcomeLedger(max_requests=10_000, ttl_seconds=60.0)

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


def test_preset_kinds_refuse_a_wrong_type_on_the_first_report() -> None:
    """Kinds from configuration apply before any report; unknown metrics still pick theirs."""
    ledger = OutcomeLedger(kinds={"click": "bool", "revenue": "number"})
    for i in range(3):
        ledger.remember(f"r{i}", "stable", "", now=0.0)
    with pytest.raises(WrongValueType, match="click"):
        ledger.report("r0", "click", 1.0, now=0.0)
    with pytest.raises(WrongValueType, match="revenue"):
        ledger.report("r0", "revenue", True, now=0.0)
    assert ledger.report("r0", "click", True, now=0.0).counted
    assert ledger.report("r0", "revenue", 2.5, now=0.0).counted
    assert ledger.report("r0", "other", 2.5, now=0.0).counted
    assert ledger.kinds == {"click": "bool", "revenue": "number", "other": "number"}
    with pytest.raises(ValueError, match=r"kinds\[x\]"):
        OutcomeLedger(kinds={"x": "float"})
    with pytest.raises(ValueError, match="kinds"):
        OutcomeLedger(kinds={" ": "bool"})


def test_non_finite_numbers_are_refused() -> None:
    """NaN or infinity would poison the sums; they are refused and nothing is counted."""
    ledger = OutcomeLedger()
    ledger.remember("r", "stable", "", now=0.0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(WrongValueType, match="finite"):
            ledger.report("r", "latency", bad, now=0.0)
    assert ledger.counters == {}
    assert ledger.report("r", "latency", 0.5, now=0.0).counted


def test_epoch_is_remembered_and_returned() -> None:
    """The experiment epoch of the serving request comes back with the attribution;
    requests outside the experiment default to -1."""
    ledger = OutcomeLedger()
    ledger.remember("a", "canary", "beta", now=0.0, epoch=3)
    ledger.remember("b", "stable", "", now=0.0)
    first = ledger.report("a", "click", True, now=0.0)
    assert (first.epoch, first.counted) == (3, True)
    assert ledger.report("a", "click", True, now=0.0).epoch == 3  # a duplicate too
    assert ledger.report("b", "click", False, now=0.0).epoch == -1
    served = ledger._served["a"]
    assert not hasattr(served, "__dict__")  # slotted: memory per request stays small

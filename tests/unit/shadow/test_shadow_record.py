"""Unit tests for the bounded shadow recorder (sidecar.core.shadow.record)."""

from __future__ import annotations

import itertools
import math
import tracemalloc
from dataclasses import FrozenInstanceError
from typing import Any

import numpy as np
import pytest

from sidecar.core.shadow import (
    MAX_STATUS_NAMES,
    Comparison,
    DisagreementExample,
    LatencyOutlier,
    ShadowRecorder,
    ShadowSummary,
    render_outputs,
)

AGREE = Comparison(True, "")
DIFFER = Comparison(False, "predict: 1 of 3 elements differ; first at (2,): 1 vs 2")
P = {"predict": np.array([0, 2, 1])}
S = {"predict": np.array([0, 2, 2])}


def compared(
    rec: ShadowRecorder,
    comparison: Comparison = AGREE,
    primary_latency: float = 0.010,
    shadow_latency: float = 0.020,
    *,
    request_id: str = "req",
    targeting_key: str = "user-1",
    unix_time: float = 1_700_000_000.0,
    primary: Any = P,
    shadow: Any = S,
) -> None:
    rec.started()
    rec.finished_compared(
        comparison,
        primary_latency,
        shadow_latency,
        request_id=request_id,
        targeting_key=targeting_key,
        primary_variant="stable",
        primary=primary,
        shadow=shadow,
        unix_time=unix_time,
    )


# ------------------------------------------------------------------ counters


def test_empty_summary() -> None:
    """A fresh recorder reports zeros and None for rates and quantiles."""
    s = ShadowRecorder("shadow", "auto").summary()
    assert s == ShadowSummary(
        shadow_variant="shadow",
        comparator="auto",
        sampled=0,
        sent=0,
        dropped=0,
        compared=0,
        agreed=0,
        agreement_rate=None,
        errors_by_status={},
        latency_count=0,
        primary_p50=None,
        primary_p95=None,
        shadow_p50=None,
        shadow_p95=None,
        ratio_p50=None,
        ratio_p95=None,
        examples=(),
        in_flight=0,
        latency_outliers=(),
    )
    assert s.errors == 0


def test_counts_and_agreement_rate() -> None:
    """sampled/sent/dropped/compared/agreed are counted and the rate is agreed/compared."""
    rec = ShadowRecorder("shadow", "exact")
    for _ in range(10):
        rec.sampled()
    rec.dropped()
    rec.dropped()
    for i in range(8):
        compared(rec, AGREE if i < 6 else DIFFER)
    s = rec.summary()
    assert (s.sampled, s.sent, s.dropped, s.compared, s.agreed) == (10, 8, 2, 8, 6)
    assert s.agreement_rate == pytest.approx(0.75)
    assert s.in_flight == 0


def test_in_flight_accounting() -> None:
    """started() raises in_flight; each finished_* lowers it; it never goes negative."""
    rec = ShadowRecorder("shadow", "auto")
    for _ in range(3):
        rec.started()
    assert rec.summary().in_flight == 3
    rec.finished_error("DEADLINE_EXCEEDED")
    assert rec.summary().in_flight == 2
    rec.finished_compared(
        AGREE, 0.01, 0.02, request_id="r", targeting_key="k", primary_variant="v",
        primary=P, shadow=P, unix_time=0.0,
    )  # fmt: skip
    assert rec.summary().in_flight == 1
    rec.finished_error("UNAVAILABLE")
    rec.finished_error("UNAVAILABLE")  # one finish too many (a caller bug)
    s = rec.summary()
    assert s.in_flight == 0
    assert s.sent == 3


def test_errors_by_status() -> None:
    """Errors are counted per gRPC status name and do not count as compared."""
    rec = ShadowRecorder("shadow", "auto")
    for status in ["DEADLINE_EXCEEDED", "UNAVAILABLE", "DEADLINE_EXCEEDED"]:
        rec.started()
        rec.finished_error(status)
    s = rec.summary()
    assert dict(s.errors_by_status) == {"DEADLINE_EXCEEDED": 2, "UNAVAILABLE": 1}
    assert s.errors == 3
    assert s.compared == 0
    assert s.agreement_rate is None


def test_errors_by_status_is_a_read_only_snapshot() -> None:
    """A summary's error map cannot be changed and does not follow later events."""
    rec = ShadowRecorder("shadow", "auto")
    rec.finished_error("INTERNAL")
    s = rec.summary()
    rec.finished_error("INTERNAL")
    assert s.errors_by_status["INTERNAL"] == 1
    with pytest.raises(TypeError):
        s.errors_by_status["INTERNAL"] = 5  # type: ignore[index]
    with pytest.raises(FrozenInstanceError):
        s.sent = 3  # type: ignore[misc]


def test_distinct_status_names_are_bounded() -> None:
    """Beyond MAX_STATUS_NAMES distinct names, new names are counted under OTHER."""
    rec = ShadowRecorder("shadow", "auto")
    for i in range(MAX_STATUS_NAMES + 50):
        rec.finished_error(f"WEIRD_{i}")
    rec.finished_error("WEIRD_0")
    errors = rec.summary().errors_by_status
    assert len(errors) == MAX_STATUS_NAMES + 1
    assert errors["OTHER"] == 50
    assert errors["WEIRD_0"] == 2
    assert sum(errors.values()) == MAX_STATUS_NAMES + 51


# ------------------------------------------------------------------ latencies


def test_latency_quantiles_within_relative_accuracy() -> None:
    """p50/p95 of primary, shadow and their ratio are within the sketch's 1% accuracy."""
    rec = ShadowRecorder("shadow", "auto", relative_accuracy=0.01)
    primary = [0.001 * (i + 1) for i in range(1000)]  # 1 ms .. 1 s
    shadow = [p * (1.5 if i % 10 else 3.0) for i, p in enumerate(primary)]
    for p, s in zip(primary, shadow, strict=True):
        compared(rec, AGREE, p, s)
    summary = rec.summary()
    assert summary.latency_count == 1000
    for got, values, q in [
        (summary.primary_p50, primary, 0.5),
        (summary.primary_p95, primary, 0.95),
        (summary.shadow_p50, shadow, 0.5),
        (summary.shadow_p95, shadow, 0.95),
    ]:
        assert got == pytest.approx(np.quantile(values, q, method="lower"), rel=0.011)
    assert summary.ratio_p50 == pytest.approx(1.5, rel=0.011)
    assert summary.ratio_p95 == pytest.approx(3.0, rel=0.011)


def test_bad_latencies_are_not_recorded() -> None:
    """Negative or non-finite latencies are skipped; a zero primary skips only the ratio."""
    rec = ShadowRecorder("shadow", "auto")
    compared(rec, AGREE, -1.0, 0.1)
    compared(rec, AGREE, 0.1, math.nan)
    compared(rec, AGREE, math.inf, 0.1)
    compared(rec, AGREE, 0.0, 0.1)
    s = rec.summary()
    assert s.compared == 4
    assert s.latency_count == 1
    assert s.primary_p50 == 0.0
    assert s.shadow_p50 == pytest.approx(0.1, rel=0.011)
    assert s.ratio_p50 is None


def test_latency_sketches_stay_small_for_extreme_ranges() -> None:
    """Latencies spanning 600 orders of magnitude cannot grow the sketches without bound."""
    rec = ShadowRecorder("shadow", "auto")
    compared(rec, AGREE, 1.0, 1.0)  # allocate the sketches' first chunks
    values = [10.0 ** (e / 10) for e in range(-3000, 3000, 7)]
    tracemalloc.start()
    try:
        for v in values:
            compared(rec, AGREE, v, 1.0 / v)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Unbounded DenseStores would need ~70k bins per store (> 1.5 MB in all).
    assert peak < 300_000
    assert rec.summary().latency_count == len(values) + 1


def test_tiny_outliers_do_not_spoil_the_quantiles() -> None:
    """Absurdly small latencies collapse into the lowest bin; p50/p95 stay accurate."""
    rec = ShadowRecorder("shadow", "auto")
    for e in range(-300, -20, 5):
        compared(rec, AGREE, 10.0**e, 10.0**e)
    primary = [0.001 * (i + 1) for i in range(1000)]
    for p in primary:
        compared(rec, AGREE, p, p)
    s = rec.summary()
    every = [10.0**e for e in range(-300, -20, 5)] + primary
    assert s.primary_p50 == pytest.approx(np.quantile(every, 0.5, method="lower"), rel=0.011)
    assert s.primary_p95 == pytest.approx(np.quantile(every, 0.95, method="lower"), rel=0.011)


# ------------------------------------------------------------------ examples


def test_disagreements_are_kept_as_examples_newest_last_and_bounded() -> None:
    """Only the last keep_examples disagreements are kept, oldest first."""
    rec = ShadowRecorder("shadow", "auto", keep_examples=3)
    for i in range(10):
        compared(rec, DIFFER if i % 2 else AGREE, request_id=f"r{i}", unix_time=float(i))
    examples = rec.summary().examples
    assert [e.request_id for e in examples] == ["r5", "r7", "r9"]
    assert [e.unix_time for e in examples] == [5.0, 7.0, 9.0]
    assert examples[-1] == DisagreementExample(
        request_id="r9",
        targeting_key="user-1",
        primary_variant="stable",
        detail=DIFFER.detail,
        primary_output="predict=[0, 2, 1]",
        shadow_output="predict=[0, 2, 2]",
        unix_time=9.0,
    )


def test_keep_examples_zero_keeps_none() -> None:
    """keep_examples=0 still counts disagreements but keeps no example."""
    rec = ShadowRecorder("shadow", "auto", keep_examples=0)
    compared(rec, DIFFER)
    s = rec.summary()
    assert (s.compared, s.agreed, s.examples) == (1, 0, ())


def test_example_fields_are_truncated() -> None:
    """Huge outputs, ids and details are cut so one example stays small."""
    rec = ShadowRecorder("shadow", "auto")
    big = {"emb": np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)}
    compared(rec, Comparison(False, "x" * 10_000), request_id="r" * 10_000, primary=big, shadow=big)
    (example,) = rec.summary().examples
    assert len(example.primary_output) <= 200
    assert example.primary_output.startswith("emb=[[0, 1, 2, 3,")
    assert example.primary_output.endswith("…]")
    assert len(example.request_id) <= 200
    assert len(example.detail) <= 500


def test_summary_is_a_snapshot() -> None:
    """A summary does not change when later events arrive."""
    rec = ShadowRecorder("shadow", "auto", keep_examples=5)
    compared(rec, DIFFER)
    s = rec.summary()
    compared(rec, DIFFER)
    assert s.compared == 1
    assert len(s.examples) == 1


def test_reset_clears_counters_but_keeps_in_flight() -> None:
    """reset() starts a new window; calls still running stay counted as in flight."""
    rec = ShadowRecorder("shadow", "top1", keep_examples=5)
    rec.sampled()
    compared(rec, DIFFER)
    rec.finished_error("INTERNAL")
    rec.started()
    rec.started()
    rec.reset()
    s = rec.summary()
    assert (s.sampled, s.sent, s.compared, s.agreed, s.latency_count) == (0, 0, 0, 0, 0)
    assert s.errors_by_status == {}
    assert s.examples == ()
    assert s.latency_outliers == ()
    assert s.primary_p50 is None
    assert s.in_flight == 2
    assert (s.shadow_variant, s.comparator) == ("shadow", "top1")
    rec.finished_compared(
        AGREE, 0.01, 0.02, request_id="r", targeting_key="k", primary_variant="v",
        primary=P, shadow=P, unix_time=0.0,
    )  # fmt: skip
    assert rec.summary().in_flight == 1
    assert rec.summary().agreement_rate == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_examples": -1},
        {"keep_examples": 2.0},
        {"keep_examples": True},
        {"keep_outliers": -1},
        {"keep_outliers": 1.5},
        {"keep_outliers": True},
        {"keep_outliers": "10"},
        {"relative_accuracy": 0.0},
        {"relative_accuracy": 1.0},
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict[str, Any]) -> None:
    """Invalid keep_examples, keep_outliers or relative_accuracy are ValueErrors at
    construction."""
    with pytest.raises(ValueError):
        ShadowRecorder("shadow", "auto", **kwargs)


# ------------------------------------------------------------------ latency outliers


def test_latency_outliers_keep_the_largest_ratios_largest_first() -> None:
    """Only the keep_outliers largest shadow/primary ratios are kept, largest first; on equal
    ratios the earlier pair stays (a later one must be strictly slower to replace it)."""
    rec = ShadowRecorder("shadow", "auto", keep_outliers=3)
    shadows = [0.010, 0.050, 0.020, 0.080, 0.030, 0.080, 0.005, 0.040]  # primary 10 ms
    for i, shadow in enumerate(shadows):
        compared(
            rec, AGREE, 0.010, shadow, request_id=f"r{i}", targeting_key=f"k{i}", unix_time=float(i)
        )
    outliers = rec.summary().latency_outliers
    assert [o.request_id for o in outliers] == ["r3", "r5", "r1"]
    assert [o.ratio for o in outliers] == pytest.approx([8.0, 8.0, 5.0])
    assert outliers[0] == LatencyOutlier(
        request_id="r3",
        targeting_key="k3",
        primary_seconds=0.010,
        shadow_seconds=0.080,
        ratio=0.080 / 0.010,
        unix_time=3.0,
    )


def test_latency_outliers_match_a_full_sort() -> None:
    """Over random traffic the kept outliers are exactly the top-k of a full sort."""
    rng = np.random.default_rng(11)
    primary = rng.lognormal(-4.0, 0.5, size=5000)
    shadow = primary * rng.lognormal(0.2, 0.6, size=5000)
    rec = ShadowRecorder("shadow", "auto", keep_outliers=10)
    for i, (p, s) in enumerate(zip(primary, shadow, strict=True)):
        compared(rec, DIFFER if i % 7 == 0 else AGREE, float(p), float(s), request_id=f"r{i}")
    ratios = shadow / primary
    top = np.argsort(-ratios, kind="stable")[:10]
    outliers = rec.summary().latency_outliers
    assert [o.request_id for o in outliers] == [f"r{i}" for i in top]
    assert [o.ratio for o in outliers] == pytest.approx(ratios[top].tolist(), rel=1e-12)
    assert all(a.ratio >= b.ratio for a, b in itertools.pairwise(outliers))


def test_latency_outliers_skip_pairs_without_a_ratio() -> None:
    """Zero, negative or non-finite latencies, and ratios that overflow, make no outlier."""
    rec = ShadowRecorder("shadow", "auto")
    compared(rec, AGREE, 0.0, 5.0, request_id="zero-primary")
    compared(rec, AGREE, -0.01, 5.0, request_id="negative")
    compared(rec, AGREE, 0.01, math.inf, request_id="inf")
    compared(rec, AGREE, math.nan, 5.0, request_id="nan")
    compared(rec, AGREE, 1e-300, 1e300, request_id="overflow")
    compared(rec, AGREE, 0.01, 0.0, request_id="zero-shadow")
    s = rec.summary()
    assert s.compared == 6
    assert [o.request_id for o in s.latency_outliers] == ["zero-shadow"]
    assert s.latency_outliers[0].ratio == 0.0


def test_keep_outliers_zero_keeps_none() -> None:
    """keep_outliers=0 keeps no outlier but still records the latency sketches."""
    rec = ShadowRecorder("shadow", "auto", keep_outliers=0)
    compared(rec, AGREE, 0.01, 0.5)
    s = rec.summary()
    assert s.latency_outliers == ()
    assert s.ratio_p50 == pytest.approx(50.0, rel=0.011)


def test_latency_outlier_fields_are_truncated_and_snapshotted() -> None:
    """Long ids are cut like examples'; a summary's outliers do not follow later events."""
    rec = ShadowRecorder("shadow", "auto", keep_outliers=2)
    compared(rec, AGREE, 0.01, 0.02, request_id="r" * 10_000, targeting_key="k" * 10_000)
    s = rec.summary()
    compared(rec, AGREE, 0.01, 0.09, request_id="later")
    (outlier,) = s.latency_outliers
    assert len(outlier.request_id) <= 200
    assert len(outlier.targeting_key) <= 200
    assert outlier.request_id.endswith("…")
    assert [o.request_id for o in rec.summary().latency_outliers] == ["later", outlier.request_id]


def test_reset_clears_latency_outliers() -> None:
    """After reset() the outliers start again from the next comparison."""
    rec = ShadowRecorder("shadow", "auto", keep_outliers=2)
    compared(rec, AGREE, 0.01, 0.9, request_id="before")
    rec.reset()
    assert rec.summary().latency_outliers == ()
    compared(rec, AGREE, 0.01, 0.02, request_id="after")
    assert [o.request_id for o in rec.summary().latency_outliers] == ["after"]


def test_latency_outliers_stay_bounded_when_every_pair_is_slower() -> None:
    """Worst case (each pair beats every kept one): the heap keeps k entries and memory
    stays flat."""
    rec = ShadowRecorder("shadow", "auto", keep_outliers=10)
    n = 0

    def feed(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            compared(rec, AGREE, 0.01, 0.01 * n, request_id=f"r{n}")

    feed(5000)
    tracemalloc.start()
    try:
        feed(20_000)
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 64 * 1024
    outliers = rec.summary().latency_outliers
    assert [o.request_id for o in outliers] == [f"r{i}" for i in range(25_000, 24_990, -1)]


# ------------------------------------------------------------------ rendering


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"predict": np.array([0, 2, 1])}, "predict=[0, 2, 1]"),
        (
            {"label": np.array([1]), "scores": np.array([[0.1, 0.9]], dtype=np.float32)},
            "label=[1], scores=[[0.1, 0.9]]",
        ),
        ({"text": np.array([b"cat", b"dog"], dtype=object)}, "text=[b'cat', b'dog']"),
        ({"flag": np.array([True, False])}, "flag=[True, False]"),
        ({"n": np.float64(2.5)}, "n=2.5"),
        ({"e": np.zeros((0, 3))}, "e=[]"),
        ({}, ""),
    ],
)
def test_render_outputs(outputs: dict[str, Any], expected: str) -> None:
    """Outputs render as compact name=[values] lists."""
    assert render_outputs(outputs) == expected


def test_render_outputs_is_bounded_in_size_and_work() -> None:
    """A large array is cut at the limit with '…' without rendering every element."""
    text = render_outputs({"x": np.zeros((10_000, 10_000), dtype=np.uint8)[:, :]}, limit=50)
    assert len(text) <= 50
    assert text.startswith("x=[[0, 0,")
    assert "…" in text
    assert render_outputs({"t": np.array([b"z" * 10**6], dtype=object)}, limit=30) == (
        "t=[b'zzzzzzzzzzzzzzzzz…]"
    )


def test_render_outputs_never_raises() -> None:
    """Values that are not arrays, or not renderable, do not make rendering fail."""
    assert render_outputs({"a": [1, 2]}) == "a=[1, 2]"  # type: ignore[dict-item]
    assert render_outputs(None).startswith("<unrenderable")  # type: ignore[arg-type]


# ------------------------------------------------------------------ bounded memory


def test_memory_stays_flat_over_a_million_comparisons() -> None:
    """1,000,000 comparisons: state sizes stay fixed and the last 100k allocate < 128 KiB."""
    rec = ShadowRecorder("shadow", "auto", keep_examples=20)
    rng = np.random.default_rng(7)
    latencies = [float(x) for x in rng.lognormal(mean=-4.0, sigma=1.5, size=1024)]
    statuses = ["DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL", "CANCELLED"]
    started, finished_compared, finished_error = (
        rec.started,
        rec.finished_compared,
        rec.finished_error,
    )

    def feed(start: int, stop: int) -> None:
        for i in range(start, stop):
            started()
            if i % 97 == 0:
                finished_error(statuses[i % 4])
                continue
            p = latencies[i & 1023]
            finished_compared(
                DIFFER if i % 1000 == 0 else AGREE,
                p,
                p * 1.25,
                request_id="req",
                targeting_key="user",
                primary_variant="stable",
                primary=P,
                shadow=S,
                unix_time=float(i),
            )

    feed(0, 900_000)
    before = rec.summary()
    tracemalloc.start()
    try:
        feed(900_000, 1_000_000)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = rec.summary()

    # Leaking even 8 bytes per call would retain ~800 KB here.
    assert peak < 128 * 1024, (current, peak)
    assert current < 64 * 1024, (current, peak)
    assert after.sent == 1_000_000
    assert after.compared + sum(after.errors_by_status.values()) == 1_000_000
    assert after.in_flight == 0
    assert len(after.examples) == len(before.examples) == 20
    assert len(after.latency_outliers) == 10
    assert after.latency_outliers[0].ratio == pytest.approx(1.25)
    assert after.examples[-1].unix_time == 999_000.0
    assert after.latency_count == after.compared
    assert after.ratio_p50 == pytest.approx(1.25, rel=0.011)
    disagreed = sum(1 for i in range(0, 1_000_000, 1000) if i % 97)
    assert after.compared - after.agreed == disagreed
    assert after.agreement_rate == (after.compared - disagreed) / after.compared

"""Drift monitoring core: feature extraction, frozen references, tumbling windows, PSI and
KS against the stats core, scipy and the documented formula, reservoir sampling, the
tracker's series, levels and gate, and bounded memory."""

from __future__ import annotations

import gc
import math
import tracemalloc
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from sidecar.core.experiment.drift import (
    DriftSettings,
    DriftTracker,
    Reservoir,
    SeriesDrift,
    extract_features,
    features_from_tensors,
    freeze_reference,
)
from sidecar.core.stats import bin_counts, psi_from_histograms, quantile_edges

TOL = 1e-9
Floats = npt.NDArray[np.float64]


def small(**overrides: int | float) -> DriftSettings:
    base: dict[str, int | float] = {
        "reference_size": 1000,
        "window_size": 1000,
        "reservoir_size": 400,
        "min_current": 300,
    }
    base.update(overrides)
    return DriftSettings(**base)  # type: ignore[arg-type]


def documented_psi(
    ref_counts: npt.ArrayLike, cur_counts: npt.ArrayLike, epsilon: float = 1e-4
) -> float:
    """docs/statistics.md: proportions, zeros -> epsilon (no renormalising), sum (c-r)ln(c/r)."""
    r = np.asarray(ref_counts, dtype=np.float64) / np.sum(ref_counts)
    c = np.asarray(cur_counts, dtype=np.float64) / np.sum(cur_counts)
    r[r == 0] = epsilon
    c[c == 0] = epsilon
    return float(np.sum((c - r) * np.log(c / r)))


# ---- feature extraction ----------------------------------------------------------------


def test_features_from_tensors_shapes_and_kinds() -> None:
    """[N] -> name; [N, F] -> name[j]; [N, 1], [1] and scalars -> name; rank > 2 and
    BYTES/strings skipped; bool/int/uint become float64."""
    tensors: dict[str, Any] = {
        "vec": np.array([1.0, 2.0, 3.0], dtype=np.float32),
        "mat": np.arange(6, dtype=np.int64).reshape(3, 2),
        "col": np.array([[7], [8]], dtype=np.uint8),
        "one": np.array([4.5]),
        "scalar": np.float64(9.0),
        "flag": np.array([True, False]),
        "image": np.zeros((2, 3, 3), dtype=np.float32),
        "text": np.array([b"a", b"b"], dtype=object),
        "strings": np.array(["a", "b"]),
    }
    got = extract_features(tensors, max_features=32)
    assert list(got.values) == ["vec", "mat[0]", "mat[1]", "col", "one", "scalar", "flag"]
    assert got.values["vec"].tolist() == [1.0, 2.0, 3.0]
    assert got.values["mat[0]"].tolist() == [0.0, 2.0, 4.0]
    assert got.values["mat[1]"].tolist() == [1.0, 3.0, 5.0]
    assert got.values["col"].tolist() == [7.0, 8.0]
    assert got.values["one"].tolist() == [4.5] and got.values["scalar"].tolist() == [9.0]
    assert got.values["flag"].tolist() == [1.0, 0.0]
    assert all(v.dtype == np.float64 for v in got.values.values())
    assert got.skipped == ("image", "text", "strings") and got.dropped_values == 0
    assert list(features_from_tensors(tensors, 32)) == list(got.values)


def test_features_are_capped_and_non_finite_values_dropped() -> None:
    """At most max_features features (tensor then column order), the rest named as
    skipped; NaN and infinities are removed and counted."""
    x = np.array([[1.0, np.nan, 3.0], [np.inf, 5.0, 6.0]])
    got = extract_features({"x": x, "y": np.array([1.0, -np.inf])}, max_features=2)
    assert list(got.values) == ["x[0]", "x[1]"]
    assert got.values["x[0]"].tolist() == [1.0] and got.values["x[1]"].tolist() == [5.0]
    assert got.skipped == ("x[2]", "y") and got.dropped_values == 2


# ---- reservoir -------------------------------------------------------------------------


def sequential_algorithm_r(values: Floats, capacity: int, seed: int, chunks: list[int]) -> Floats:
    """Algorithm R one value at a time, drawing the same random slots as the vectorised
    version (one `integers(0, positions + 1)` call per chunk)."""
    rng = np.random.default_rng(seed)
    res = np.empty(capacity)
    seen = 0
    start = 0
    for size in chunks:
        chunk = values[start : start + size]
        start += size
        fill = min(max(capacity - seen, 0), size)
        res[seen : seen + fill] = chunk[:fill]
        if size > fill:
            slots = rng.integers(0, np.arange(seen + fill, seen + size) + 1)
            for value, slot in zip(chunk[fill:], slots, strict=True):
                if slot < capacity:
                    res[slot] = value
        seen += size
    return res[: min(seen, capacity)]


def test_vectorised_reservoir_equals_sequential_algorithm_r() -> None:
    """Chunked, vectorised replacement (with repeated slots in a chunk) gives exactly the
    sample of the one-at-a-time algorithm with the same draws."""
    values = np.arange(10_000, dtype=np.float64)
    chunks = [3, 50, 1, 997, 2000, 4, 5000, 1945]
    res = Reservoir(64, np.random.default_rng(5))
    start = 0
    for size in chunks:
        res.add(values[start : start + size])
        start += size
    assert res.seen == 10_000 and len(res) == 64
    np.testing.assert_array_equal(res.sample(), sequential_algorithm_r(values, 64, 5, chunks))


def test_reservoir_keeps_each_value_with_probability_k_over_n() -> None:
    """4000 seeded runs of 200 values into a reservoir of 20, fed in uneven chunks: the
    inclusion frequency of early, middle and late values is 0.1 within sampling error
    (binomial sd of a group mean ~0.0015; tolerance 0.01)."""
    rng = np.random.default_rng(2024)
    n, k, runs = 200, 20, 4000
    included = np.zeros(n)
    values = np.arange(n, dtype=np.float64)
    for _ in range(runs):
        res = Reservoir(k, rng)
        cuts = np.sort(rng.choice(np.arange(1, n), size=5, replace=False))
        for chunk in np.split(values, cuts):
            res.add(chunk)
        included[res.sample().astype(int)] += 1
    freq = included / runs
    for group in (freq[:20], freq[90:110], freq[180:]):
        assert abs(group.mean() - k / n) < 0.01, group.mean()
    assert abs(freq.mean() - k / n) < 1e-12  # exactly k kept per run
    assert freq.min() > 0.06 and freq.max() < 0.14


# ---- one series: PSI, KS, levels, windows ----------------------------------------------


def test_psi_matches_stats_core_and_documented_formula() -> None:
    """A frozen N(0,1) baseline against a completed N(0.3,1) window: edges are the
    reference quantile edges, the counts are bin_counts of the same values, and PSI equals
    psi_from_histograms and the documented formula to 1e-9."""
    rng = np.random.default_rng(7)
    reference = rng.normal(0.0, 1.0, 5000)
    current = rng.normal(0.3, 1.0, 5000)
    series = SeriesDrift("x", settings=DriftSettings(), rng=np.random.default_rng(1))
    for chunk in np.array_split(np.concatenate([reference, current]), 37):
        series.add(chunk)
    edges = quantile_edges(reference, 10)
    assert series.reference is not None and series.reference.edges == edges
    np.testing.assert_array_equal(series.reference.counts, bin_counts(reference, edges))
    counts, n, complete = series.current_histogram()
    assert (n, complete) == (5000, True)
    np.testing.assert_array_equal(counts, bin_counts(current, edges))

    result = series.result()
    expected = psi_from_histograms(bin_counts(reference, edges), bin_counts(current, edges))
    assert abs(result.psi - expected.psi) < TOL
    assert abs(result.psi - documented_psi(series.reference.counts, counts)) < TOL
    assert result.edges == edges and len(result.reference_share) == len(edges) + 1
    np.testing.assert_allclose(result.current_share, counts / 5000, rtol=0, atol=TOL)
    assert result.reference_n == 5000 and result.current_n == 5000 and result.current_complete
    assert result.level == (
        "MAJOR" if result.psi >= 0.25 else "MODERATE" if result.psi >= 0.1 else "NONE"
    )


def test_ks_is_scipy_ks_2samp_on_the_reservoirs() -> None:
    """KS statistic and p-value equal scipy ks_2samp(reference reservoir, current
    reservoir) to 1e-9, for a filling window and for a completed one."""
    rng = np.random.default_rng(11)
    series = SeriesDrift("x", settings=DriftSettings(), rng=np.random.default_rng(3))
    series.add(rng.normal(0, 1, 5000))
    series.add(rng.normal(0.2, 1.1, 3000))  # filling window, 3000 >= min_current
    for complete in (False, True):
        ref, cur = series.reference_sample(), series.current_sample()
        assert ref.size == 2000 and cur.size == 2000
        expected = stats.ks_2samp(ref, cur)
        result = series.result()
        assert result.current_complete is complete
        assert abs(result.ks_statistic - float(expected.statistic)) < TOL
        assert abs(result.ks_p_value - float(expected.pvalue)) < TOL
        series.add(rng.normal(0.2, 1.1, 2100))  # completes the window; 100 filling


@pytest.mark.parametrize(("shift", "level"), [(0.0, "NONE"), (1.0, "MAJOR")])
def test_same_distribution_is_none_and_one_sd_shift_is_major(shift: float, level: str) -> None:
    """Seeded: N(0,1) against N(0,1) is NONE; against N(1,1) is MAJOR (PSI ~ 1)."""
    rng = np.random.default_rng(99)
    series = SeriesDrift("x", settings=DriftSettings(), rng=np.random.default_rng(0))
    series.add(rng.normal(0, 1, 5000))
    series.add(rng.normal(shift, 1, 5000))
    result = series.result()
    assert result.level == level
    if shift:
        assert result.psi > 0.5 and result.ks_p_value < 1e-10
    else:
        assert result.psi < 0.05 and result.ks_p_value > 0.01


def test_categorical_predictions_share_per_class() -> None:
    """Iris classes 0/1/2 (integers, <= 20 values) get one bin per class plus "other": the
    shares are the class mixes; an unseen class lands in "other" (reference share 0, so
    epsilon in the PSI). KS is still reported."""
    reference = np.repeat([0.0, 1.0, 2.0], [1000, 1000, 1000])
    current = np.repeat([0.0, 1.0, 2.0, 3.0], [500, 1000, 1400, 100])
    series = SeriesDrift("predict", kind="prediction", variant="stable",
                         settings=small(reference_size=3000, window_size=3000),
                         rng=np.random.default_rng(0))  # fmt: skip
    series.add(np.random.default_rng(1).permutation(reference))
    series.add(np.random.default_rng(2).permutation(current))
    result = series.result()
    assert result.categorical and result.edges == (0.0, 1.0, 2.0)
    assert result.reference_share == pytest.approx((1 / 3, 1 / 3, 1 / 3, 0.0), abs=TOL)
    assert result.current_share == pytest.approx(
        (500 / 3000, 1000 / 3000, 1400 / 3000, 100 / 3000), abs=TOL
    )
    counts, _, _ = series.current_histogram()
    assert counts.tolist() == [500, 1000, 1400, 100]
    assert abs(result.psi - documented_psi(np.array([1000, 1000, 1000, 0]), counts)) < TOL
    assert result.level == "MAJOR" and 0.0 <= result.ks_p_value <= 1.0


def test_integer_feature_with_many_values_uses_quantile_bins() -> None:
    """More than 20 distinct integers, or any non-integer, is continuous."""
    rng = np.random.default_rng(4)
    values = rng.integers(0, 21, 1000).astype(np.float64)  # 21 distinct integers
    ints = freeze_reference(values, bins=10, reservoir_size=50, rng=rng)
    assert not ints.categorical and ints.edges == quantile_edges(values, 10)
    few = freeze_reference(rng.integers(0, 20, 1000), bins=10, reservoir_size=50, rng=rng)
    assert few.categorical and few.edges == tuple(float(v) for v in range(20))
    halves = freeze_reference(np.array([0.5, 1.0, 1.5] * 10), bins=10, reservoir_size=5, rng=rng)
    assert not halves.categorical and halves.sample.size == 5 and halves.n == 30


def test_tumbling_windows_and_the_reported_window() -> None:
    """The filling window is reported once it holds min_current values, else the last
    completed one; windows do not overlap."""
    series = SeriesDrift("x", settings=small(), rng=np.random.default_rng(0))
    series.add(np.random.default_rng(1).normal(0, 1, 1000))  # reference
    assert series.result().level == "INSUFFICIENT" and series.result().current_n == 0
    series.add(np.full(200, -50.0))
    _, n, complete = series.current_histogram()
    assert (n, complete) == (200, False) and series.result().level == "INSUFFICIENT"
    series.add(np.full(800, -50.0))  # window 1 complete: all in the first bin
    counts, n, complete = series.current_histogram()
    assert (n, complete) == (1000, True) and counts[0] == 1000
    series.add(np.full(299, 50.0))  # window 2 filling, below min_current: window 1 shown
    counts, n, complete = series.current_histogram()
    assert (n, complete) == (1000, True) and counts[0] == 1000
    series.add(np.full(1, 50.0))  # 300 = min_current: the filling window is shown
    counts, n, complete = series.current_histogram()
    assert (n, complete) == (300, False) and counts[-1] == 300 and counts.sum() == 300
    assert set(series.current_sample().tolist()) == {50.0}
    series.add(np.full(1700, 0.0))  # completes window 2 (700 more), window 3 has 1000
    counts, n, complete = series.current_histogram()
    assert (n, complete) == (1000, True) and counts.sum() == 1000 and counts[0] == 0
    assert series.result().level == "MAJOR"


def test_series_drops_non_finite_values() -> None:
    """NaN and infinities never reach the reference or a window; they are counted."""
    series = SeriesDrift("x", settings=small(reference_size=3), rng=np.random.default_rng(0))
    series.add(np.array([1.0, np.nan, 2.0, np.inf, 3.0, -np.inf, 4.0]))
    assert series.dropped_values == 3
    assert series.current_histogram()[1] == 1  # readers flush staged values first
    assert series.reference is not None and series.reference.n == 3


def test_small_adds_are_staged_transparently() -> None:
    """One value at a time gives the same histogram as one vectorised add."""
    values = np.random.default_rng(8).normal(0, 1, 2700)
    one = SeriesDrift("x", settings=small(), rng=np.random.default_rng(0))
    many = SeriesDrift("x", settings=small(), rng=np.random.default_rng(0))
    one.add(values)
    for v in values:
        many.add(np.array([v]))
    assert one.reference is not None and many.reference is not None
    assert one.reference.edges == many.reference.edges
    h1, h2 = one.current_histogram(), many.current_histogram()
    assert h1[0].tolist() == h2[0].tolist() and h1[1:] == h2[1:] == (700, False)


# ---- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("reference_size", 0), ("window_size", -1), ("bins", 1), ("reservoir_size", 0),
     ("min_current", 0), ("max_features", 0), ("max_variants", 0), ("seed", -1),
     ("bins", 2.5), ("moderate", 0.0), ("moderate", math.nan), ("major", 0.05),
     ("major", math.inf), ("window_size", True)],
)  # fmt: skip
def test_settings_are_validated_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        DriftSettings(**{field: value})  # type: ignore[arg-type]


# ---- the tracker -----------------------------------------------------------------------


def iris_batch(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict[str, Floats]:
    x = rng.normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.8, 0.8], size=(n, 4))
    x[:, 2] += shift
    return {"input-0": x}


def test_tracker_inputs_from_all_variants_and_predictions_per_variant() -> None:
    """Inputs of every variant feed one series per feature; predictions one series per
    (variant, output); the canary's predictions are compared with the stable's reference.
    Before that reference is frozen the canary's series is INSUFFICIENT; its values are
    kept (the last window_size) and replayed."""
    rng = np.random.default_rng(3)
    tracker = DriftTracker(small())
    tracker.set_reference_variant("stable")
    stable_classes = np.array([0, 1, 2])
    canary_classes = np.array([0, 2, 2])  # class mix shifted towards 2
    tracker.observe("stable", iris_batch(rng, 300), {"predict": rng.choice(stable_classes, 300)})
    tracker.observe("canary", iris_batch(rng, 300), {"predict": rng.choice(canary_classes, 300)})
    report = tracker.report()
    canary = next(f for f in report.features if f.variant == "canary")
    assert canary.level == "INSUFFICIENT" and canary.reference_n == 0 and canary.current_n == 300
    assert math.isnan(canary.psi)
    inputs = [f for f in report.features if f.kind == "input"]
    assert [f.name for f in inputs] == [f"input-0[{j}]" for j in range(4)]
    assert all(f.reference_n == 600 and f.variant == "" for f in inputs)

    for _ in range(3):
        tracker.observe(
            "stable", iris_batch(rng, 300), {"predict": rng.choice(stable_classes, 300)}
        )
        tracker.observe(
            "canary", iris_batch(rng, 300, shift=3.0), {"predict": rng.choice(canary_classes, 300)}
        )
    report = tracker.report()
    by = {f.series: f for f in report.features}
    assert set(by) == {*(f"input:input-0[{j}]" for j in range(4)),
                       "prediction:stable:predict", "prediction:canary:predict"}  # fmt: skip
    stable, canary = by["prediction:stable:predict"], by["prediction:canary:predict"]
    assert stable.reference_n == canary.reference_n == 1000 and stable.edges == canary.edges
    assert stable.current_n == 200 and stable.level == "INSUFFICIENT"  # 1200 - 1000 reference
    assert canary.current_n == 1000 and canary.current_complete  # 1200: 300 replayed + 900
    assert canary.level == "MAJOR" and canary.current_share[1] < 0.05
    assert by["input:input-0[2]"].level in ("MODERATE", "MAJOR")
    assert by["input:input-0[0]"].level in ("NONE", "INSUFFICIENT")
    assert report.worst_level == "MAJOR"
    assert "reference variant 'stable'" in report.reference
    assert tracker.max_psi("prediction", variant="stable") is None  # INSUFFICIENT excluded
    value, label = tracker.max_psi() or (0.0, "")
    assert label == "prediction:canary:predict" and value == canary.psi
    assert tracker.max_psi("input") == max(
        (by[f"input:input-0[{j}]"].psi, f"input:input-0[{j}]")
        for j in range(4)
        if by[f"input:input-0[{j}]"].level != "INSUFFICIENT"
    )
    with pytest.raises(ValueError, match="include"):
        tracker.max_psi("outputs")


def test_changing_the_reference_variant_restarts_prediction_series() -> None:
    """After a promotion the new stable collects a new baseline; inputs are untouched."""
    rng = np.random.default_rng(5)
    tracker = DriftTracker(small())
    tracker.set_reference_variant("stable")
    tracker.observe("stable", iris_batch(rng, 1500), {"predict": rng.integers(0, 3, 1500)})
    tracker.observe("canary", iris_batch(rng, 500), {"predict": rng.integers(0, 3, 500)})
    tracker.set_reference_variant("canary")
    report = tracker.report()
    assert all(f.kind == "input" for f in report.features)
    tracker.observe("canary", iris_batch(rng, 10), {"predict": rng.integers(0, 3, 10)})
    canary = next(f for f in tracker.report().features if f.kind == "prediction")
    assert (canary.variant, canary.reference_n, canary.level) == ("canary", 10, "INSUFFICIENT")


def test_without_a_reference_variant_each_variant_has_its_own_baseline() -> None:
    rng = np.random.default_rng(6)
    tracker = DriftTracker(small())
    tracker.observe("a", {}, {"p": rng.normal(0, 1, 1500)})
    tracker.observe("b", {}, {"p": rng.normal(5, 1, 1500)})
    report = tracker.report()
    assert [(f.variant, f.reference_n, f.current_n, f.level) for f in report.features] == [
        ("a", 1000, 500, "NONE"),
        ("b", 1000, 500, "NONE"),
    ]
    assert "each variant's own" in report.reference


def test_configured_reference() -> None:
    """A configured reference is frozen at once (no baseline: every observed value is
    current), used for inputs by feature name and for every variant's predictions by
    output name; bad values are refused naming the series."""
    rng = np.random.default_rng(12)
    tracker = DriftTracker(small())
    tracker.set_reference_variant("stable")
    configured = rng.normal(0, 1, 3000)
    tracker.set_configured_reference({"x[0]": configured, "score": rng.normal(0, 1, 800)})
    tracker.observe("canary", {"x": rng.normal(2, 1, (400, 2))}, {"score": rng.normal(0, 1, 400)})
    by = {f.series: f for f in tracker.report().features}
    x0 = by["input:x[0]"]
    assert (x0.reference_n, x0.current_n, x0.level) == (3000, 400, "MAJOR")
    assert x0.edges == quantile_edges(configured, 10)
    assert (by["input:x[1]"].reference_n, by["input:x[1]"].level) == (400, "INSUFFICIENT")
    score = by["prediction:canary:score"]
    assert (score.reference_n, score.current_n, score.level) == (800, 400, "NONE")
    text = tracker.report().reference
    assert text.startswith("configured: score, x[0]") and "first 1000 values" in text

    # configuring an existing series restarts it on the new reference, replaying held values
    tracker.set_configured_reference({"x[1]": rng.normal(2, 1, 500)})
    x1 = next(f for f in tracker.report().features if f.name == "x[1]")
    assert (x1.reference_n, x1.current_n, x1.level) == (500, 400, "NONE")

    for bad in ([], [1.0, math.nan], ["a"]):
        with pytest.raises(ValueError, match="'feature'"):
            tracker.set_configured_reference({"feature": bad})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="maps series names"):
        tracker.set_configured_reference([1.0, 2.0])  # type: ignore[arg-type]  # e.g. a JSON list


def test_level_changes_since_the_last_call() -> None:
    rng = np.random.default_rng(21)
    tracker = DriftTracker(small())
    tracker.observe("stable", {"x": rng.normal(0, 1, 1000)}, {})
    assert tracker.level_changes() == []
    tracker.observe("stable", {"x": rng.normal(0, 1, 400)}, {})
    assert tracker.level_changes() == [("input:x", "INSUFFICIENT", "NONE")]
    assert tracker.level_changes() == []
    tracker.observe("stable", {"x": rng.normal(1.5, 1, 600)}, {})  # completes a shifted window
    assert tracker.level_changes() == [("input:x", "NONE", "MAJOR")]
    tracker.observe("stable", {"x": rng.normal(0, 1, 1000)}, {})
    assert tracker.level_changes() == [("input:x", "MAJOR", "NONE")]


def test_tracker_counts_skipped_features_variants_and_dropped_values() -> None:
    tracker = DriftTracker(small(max_features=3, max_variants=2))
    for variant in ("a", "b", "c", "d"):
        tracker.observe(
            variant,
            {
                "x": np.ones((5, 2)),
                "y": np.array([1.0, np.nan]),
                "z": np.ones(3),
                "img": np.ones((1, 2, 2)),
            },
            {"p": np.ones(4), "q": np.ones(4), "r": np.ones(4), "s": np.array([np.inf, 1.0])},
        )
    report = tracker.report()
    assert [f.series for f in report.features] == [
        "input:x[0]", "input:x[1]", "input:y",
        "prediction:a:p", "prediction:a:q", "prediction:a:r",
        "prediction:b:p", "prediction:b:q", "prediction:b:r",
    ]  # fmt: skip
    assert report.skipped_features == 3  # z, img, s
    assert report.skipped_variants == 2  # c, d
    # one NaN in "y" per request (inputs count for every variant); "s" is beyond
    # max_features, so its infinity is never extracted
    assert report.dropped_values == 4


# ---- memory ----------------------------------------------------------------------------


def test_one_million_values_keep_a_series_flat() -> None:
    """1,000,000 values through one series (chunks of 1000): after the first window the
    traced memory is flat at every 100,000-value checkpoint; the full reference list is
    gone after freezing."""
    series = SeriesDrift("x", settings=DriftSettings(), rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    chunks = rng.normal(0, 1, (20, 1000))
    tracemalloc.start()
    checkpoints = []
    try:
        for k in range(1000):
            series.add(chunks[k % 20])
            if k % 100 == 99:
                gc.collect()
                checkpoints.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert series.phase == "monitoring" and series.reference is not None
    assert series.reference.sample.size == 2000
    assert max(checkpoints) - checkpoints[0] < 16 * 1024, checkpoints
    assert series.current_histogram()[1] == 5000


def test_tracker_memory_is_bounded_by_the_settings() -> None:
    """Requests with 40 input features, 40 output features and 12 variants: at most
    max_features input series and max_features outputs for max_variants variants; memory
    is flat once every series is monitoring."""
    settings = DriftSettings(reference_size=500, window_size=500, reservoir_size=100,
                             min_current=100, max_features=8, max_variants=3)  # fmt: skip
    tracker = DriftTracker(settings)
    tracker.set_reference_variant("v0")
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(0, 1, (200, 40))}
    outputs = {f"o{j}": rng.normal(0, 1, 200) for j in range(40)}
    tracemalloc.start()
    checkpoints = []
    try:
        for step in range(40):
            for v in range(12):
                tracker.observe(f"v{v}", inputs, outputs)
            if step % 10 == 9:
                tracker.report()
                gc.collect()
                checkpoints.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert tracker.series_count() == 8 + 3 * 8 == len(tracker.report().features)
    assert max(checkpoints) - checkpoints[0] < 64 * 1024, checkpoints

"""PSI (quantile bins, histograms) and two-sample KS against scipy and hand calculations."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sidecar.core.stats import (
    DriftLevel,
    bin_counts,
    classify_psi,
    ks_two_sample,
    psi,
    psi_from_histograms,
    quantile_edges,
)

TOL = 1e-9

Sample = npt.NDArray[np.float64]


def _ks_cases(seed: int, n_cases: int) -> list[tuple[Sample, Sample]]:
    """Seeded pairs: equal and unequal sizes, ties, shifts, one pair above 10,000 values."""
    rng = np.random.default_rng(seed)
    out: list[tuple[Sample, Sample]] = []
    for i in range(n_cases):
        na = int(rng.integers(1, 3000))
        nb = na if i % 5 == 0 else int(rng.integers(1, 3000))
        a = rng.normal(0, 1, na)
        b = rng.normal(rng.normal(0, 0.2), rng.uniform(0.8, 1.2), nb)
        if i % 4 == 1:
            a, b = np.round(a, 1), np.round(b, 1)
        out.append((a, b))
    out.append((rng.normal(0, 1, 12_000), rng.normal(0.05, 1, 400)))  # asymptotic branch
    return out


KS_CASES = _ks_cases(61, 60)


def _brute_force_d(a: Sample, b: Sample) -> float:
    grid = np.concatenate([a, b])
    fa = (a[:, None] <= grid[None, :]).mean(axis=0)
    fb = (b[:, None] <= grid[None, :]).mean(axis=0)
    return float(np.max(np.abs(fa - fb)))


def test_ks_matches_scipy_ks_2samp() -> None:
    """D and p equal scipy ks_2samp(reference, current) and D equals a brute-force sup."""
    bad = []
    for a, b in KS_CASES:
        ours = ks_two_sample(a, b)
        ref = stats.ks_2samp(a, b)
        ok = math.isclose(ours.statistic, float(ref.statistic), abs_tol=TOL)
        ok = ok and math.isclose(ours.p_value, float(ref.pvalue), abs_tol=TOL)
        if not ok:
            bad.append((a.size, b.size, ours, ref))
        if a.size * b.size < 4_000_000:
            assert ours.statistic == pytest.approx(_brute_force_d(a, b), abs=1e-12)
    assert len(KS_CASES) > 40
    assert bad == []


def test_psi_hand_computed_two_bins() -> None:
    """Counts (50, 50) vs (25, 75): PSI = 0.25 ln 2 + 0.25 ln 1.5."""
    res = psi_from_histograms([50, 50], [25, 75])
    assert res.psi == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-15)
    assert res.level is DriftLevel.SIGNIFICANT  # 0.2747 >= 0.25


def test_psi_epsilon_replaces_empty_bin_proportions() -> None:
    """An empty reference bin uses epsilon (1e-4 by default) instead of 0."""
    res = psi_from_histograms([100, 0], [50, 50])
    expected = (0.5 - 1.0) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert res.psi == pytest.approx(expected, abs=1e-12)
    assert res.reference_proportions == (1.0, 1e-4)
    custom = psi_from_histograms([100, 0], [50, 50], epsilon=1e-3)
    assert custom.epsilon == 1e-3
    assert custom.psi < res.psi


def test_quantile_edges_give_equal_reference_bins() -> None:
    """10 quantile bins of 0..999 hold 10% of the reference each."""
    ref = np.arange(1000, dtype=float)
    edges = quantile_edges(ref, 10)
    assert len(edges) == 9
    assert bin_counts(ref, edges).tolist() == [100] * 10
    assert psi(ref, ref).psi == 0.0


def test_bins_are_open_ended_and_left_closed() -> None:
    """Values beyond the reference range land in the first/last bin; an edge goes up."""
    edges = (1.0, 2.0)
    counts = bin_counts([-1e9, 0.99, 1.0, 1.5, 2.0, 1e9], edges)
    assert counts.tolist() == [2, 2, 2]


def test_psi_from_raw_equals_psi_from_histograms() -> None:
    """PSI on raw samples equals PSI on their histograms over the same edges."""
    rng = np.random.default_rng(62)
    for shift in (0.0, 0.1, 0.5, 2.0):
        ref = rng.normal(0, 1, 5000)
        cur = rng.normal(shift, 1, 3000)
        raw = psi(ref, cur)
        hist = psi_from_histograms(bin_counts(ref, raw.edges), bin_counts(cur, raw.edges))
        assert raw.psi == pytest.approx(hist.psi, abs=1e-15)
        assert raw.level == hist.level


def test_psi_grows_with_shift_and_classifies() -> None:
    """No shift is stable; a 2-sigma mean shift is significant."""
    rng = np.random.default_rng(63)
    ref = rng.normal(0, 1, 20_000)
    assert psi(ref, rng.normal(0, 1, 20_000)).level is DriftLevel.STABLE
    assert psi(ref, rng.normal(2, 1, 20_000)).level is DriftLevel.SIGNIFICANT


def test_discrete_reference_deduplicates_edges() -> None:
    """Repeated quantiles collapse; each distinct reference value gets its own bin."""
    ref = np.repeat([1.0, 2.0, 3.0], [500, 300, 200])
    edges = quantile_edges(ref, 10)
    assert list(edges) == sorted(set(edges))
    assert len(edges) < 9
    counts = bin_counts(ref, edges)
    assert sorted(int(c) for c in counts if c) == [200, 300, 500]
    assert psi(ref, ref).psi == 0.0


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (0.0, DriftLevel.STABLE),
        (0.0999, DriftLevel.STABLE),
        (0.1, DriftLevel.MODERATE),
        (0.2499, DriftLevel.MODERATE),
        (0.25, DriftLevel.SIGNIFICANT),
        (3.0, DriftLevel.SIGNIFICANT),
    ],
)
def test_classify_thresholds(value: float, level: DriftLevel) -> None:
    """Stable below 0.1, moderate in [0.1, 0.25), significant from 0.25."""
    assert classify_psi(value) is level


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.integers(0, 1000), min_size=2, max_size=12).filter(lambda x: sum(x) > 0),
    st.data(),
)
def test_psi_properties(ref: list[int], data: st.DataObject) -> None:
    """PSI is non-negative, symmetric in its arguments and zero for equal proportions."""
    cur = data.draw(
        st.lists(st.integers(0, 1000), min_size=len(ref), max_size=len(ref)).filter(
            lambda x: sum(x) > 0
        )
    )
    forward = psi_from_histograms(ref, cur).psi
    backward = psi_from_histograms(cur, ref).psi
    assert forward >= 0.0
    assert forward == pytest.approx(backward, rel=1e-12, abs=1e-15)
    assert psi_from_histograms(ref, [3 * c for c in ref]).psi == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: psi_from_histograms([1, 2, 3], [1, 2]), "same number of bins"),
        (lambda: psi_from_histograms([1, -2], [1, 2]), "negative"),
        (lambda: psi_from_histograms([0, 0], [1, 2]), "at least one observation"),
        (lambda: psi_from_histograms([1.5, 2], [1, 2]), "whole numbers"),
        (lambda: psi_from_histograms([5], [5]), "two bins"),
        (lambda: psi_from_histograms([1, 2], [1, 2], epsilon=0.0), "epsilon"),
        (lambda: psi([1.0, 2.0], [1.0], bins=1), "bins"),
        (lambda: psi([], [1.0]), "at least 1"),
        (lambda: ks_two_sample([1.0, float("inf")], [1.0]), "NaN or infinite"),
        (lambda: classify_psi(-0.1), "non-negative"),
        (lambda: classify_psi(0.1, moderate=0.3, significant=0.2), "thresholds"),
        (lambda: bin_counts([1.0], (2.0, 1.0)), "strictly increasing"),
    ],
)
def test_bad_drift_input_raises(call: object, message: str) -> None:
    """Mismatched or negative histograms, empty samples and bad settings raise ValueError."""
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()

"""Holm and Benjamini-Hochberg adjustments against statsmodels multipletests."""

from __future__ import annotations

import gc

import numpy as np
import numpy.typing as npt
import pytest
from statsmodels.stats.multitest import multipletests

from sidecar.core.stats import adjust_p_values, benjamini_hochberg, holm

TOL = 1e-9


def _p_value_sets(seed: int, n_cases: int) -> list[tuple[npt.NDArray[np.float64], float]]:
    """Seeded p-value vectors: uniform, signal-rich, with ties, zeros and ones."""
    rng = np.random.default_rng(seed)
    out: list[tuple[npt.NDArray[np.float64], float]] = []
    alphas = (0.01, 0.05, 0.1, 0.25)
    for i in range(n_cases):
        m = int(rng.integers(1, 40))
        kind = i % 4
        if kind == 0:
            p = rng.uniform(0, 1, m)
        elif kind == 1:
            p = np.concatenate([rng.uniform(0, 0.01, m // 2 + 1), rng.uniform(0, 1, m // 2)])
        elif kind == 2:
            p = np.round(rng.uniform(0, 0.2, m), 2)  # many ties
        else:
            p = rng.choice([0.0, 1.0, 0.001, 0.049, 0.05, 0.5], m)
        out.append((rng.permutation(p), alphas[i % len(alphas)]))
    return out


CASES = _p_value_sets(51, 60)


@pytest.mark.parametrize(("ours_fn", "sm_method"), [(holm, "holm"), (benjamini_hochberg, "fdr_bh")])
def test_matches_statsmodels_multipletests(
    ours_fn: object, sm_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adjusted p-values (1e-9) and reject flags equal multipletests on 60 generated sets."""
    assert callable(ours_fn)
    # multipletests(method="holm") calls gc.collect() on every call (~70 ms each); skipping
    # the collection does not change its arithmetic and keeps this test fast.
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rejected_any = False
    for p, alpha in CASES:
        ours = ours_fn(p, alpha)
        reject, adjusted, _, _ = multipletests(p, alpha=alpha, method=sm_method)
        np.testing.assert_allclose(ours.adjusted, adjusted, rtol=0, atol=TOL)
        assert list(ours.reject) == reject.tolist()
        assert ours.p_values == tuple(float(x) for x in p)
        rejected_any = rejected_any or any(ours.reject)
    assert rejected_any


def test_holm_known_example() -> None:
    """Holm on (0.01, 0.04, 0.03, 0.005) gives (0.03, 0.06, 0.06, 0.02), rejects two."""
    res = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert res.adjusted == pytest.approx((0.03, 0.06, 0.06, 0.02))
    assert res.reject == (True, False, False, True)


def test_bh_known_example() -> None:
    """BH on (0.01, 0.04, 0.03, 0.005) gives (0.02, 0.04, 0.04, 0.02), rejects all."""
    res = benjamini_hochberg([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    assert res.adjusted == pytest.approx((0.02, 0.04, 0.04, 0.02))
    assert res.reject == (True, True, True, True)


def test_dispatch_and_empty_input() -> None:
    """adjust_p_values dispatches by name; an empty family gives an empty result."""
    assert adjust_p_values([0.01, 0.2], "holm") == holm([0.01, 0.2])
    assert adjust_p_values([0.01, 0.2], "bh") == benjamini_hochberg([0.01, 0.2])
    assert holm([]).adjusted == ()
    assert benjamini_hochberg([]).reject == ()


@pytest.mark.parametrize(
    ("pvals", "alpha", "message"),
    [
        ([0.1, 1.2], 0.05, r"\[0, 1\]"),
        ([-0.1, 0.2], 0.05, r"\[0, 1\]"),
        ([float("nan")], 0.05, "NaN"),
        ([0.1], 0.0, "alpha"),
        ([0.1], 1.0, "alpha"),
        ([[0.1, 0.2]], 0.05, "one-dimensional"),
    ],
)
def test_bad_p_values_raise(pvals: list[float], alpha: float, message: str) -> None:
    """p-values outside [0, 1], NaN, 2-D input and alpha outside (0, 1) raise ValueError."""
    with pytest.raises(ValueError, match=message):
        holm(pvals, alpha)
    with pytest.raises(ValueError, match=message):
        benjamini_hochberg(pvals, alpha)


def test_unknown_method_raises() -> None:
    """Only 'holm' and 'bh' are accepted by the dispatcher."""
    with pytest.raises(ValueError, match="holm"):
        adjust_p_values([0.1], "bonferroni")  # type: ignore[arg-type]

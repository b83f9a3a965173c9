"""Distribution drift: Population Stability Index (PSI) and two-sample Kolmogorov-Smirnov.

PSI conventions (see ``docs/statistics.md``):

* Bins come from the *reference* sample: interior edges are the reference quantiles at
  ``1/bins, 2/bins, ..., (bins-1)/bins`` (numpy's default linear interpolation), duplicates
  removed (so discrete data can yield fewer bins). The first bin is ``(-inf, e_1)`` and the
  last ``[e_k, +inf)``, every bin is closed on the left: ``[e_i, e_{i+1})``. Default 10 bins.
* Proportions are bin counts over the sample size. A bin with zero proportion in either
  sample gets ``epsilon`` (default 1e-4) instead of 0, without renormalising the others.
* ``PSI = sum_i (c_i - r_i) * ln(c_i / r_i)`` (reference ``r``, current ``c``).
* Levels: PSI < 0.1 stable, 0.1 <= PSI < 0.25 moderate, PSI >= 0.25 significant.

:func:`psi_from_histograms` takes counts over shared edges, which is what the sidecar keeps.
:func:`ks_two_sample` wraps scipy ``ks_2samp`` (two-sided, ``method="auto"``: exact when both
samples have at most 10,000 values, else asymptotic).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._validation import as_counts, as_sample
from .lazy import lazy

if TYPE_CHECKING:
    from scipy import stats
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    stats = lazy("scipy.stats")


__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_EPSILON",
    "MODERATE_THRESHOLD",
    "SIGNIFICANT_THRESHOLD",
    "DriftLevel",
    "KsResult",
    "PsiResult",
    "bin_counts",
    "classify_psi",
    "ks_two_sample",
    "psi",
    "psi_from_histograms",
    "quantile_edges",
]

DEFAULT_BINS = 10
DEFAULT_EPSILON = 1e-4
MODERATE_THRESHOLD = 0.1
SIGNIFICANT_THRESHOLD = 0.25


class DriftLevel(enum.Enum):
    """PSI classification."""

    STABLE = "stable"
    MODERATE = "moderate"
    SIGNIFICANT = "significant"


def classify_psi(
    value: float,
    moderate: float = MODERATE_THRESHOLD,
    significant: float = SIGNIFICANT_THRESHOLD,
) -> DriftLevel:
    """Stable below ``moderate``, moderate below ``significant``, significant above."""
    if not (0.0 < moderate < significant):
        raise ValueError(
            f"thresholds must satisfy 0 < moderate < significant; got {moderate}, {significant}"
        )
    if math.isnan(value) or value < 0.0:
        raise ValueError(f"PSI must be a non-negative number; got {value!r}")
    if value < moderate:
        return DriftLevel.STABLE
    if value < significant:
        return DriftLevel.MODERATE
    return DriftLevel.SIGNIFICANT


@dataclass(frozen=True, slots=True)
class PsiResult:
    """PSI with per-bin detail; ``edges`` are the interior edges (empty if unknown)."""

    psi: float
    level: DriftLevel
    edges: tuple[float, ...]
    reference_proportions: tuple[float, ...]
    current_proportions: tuple[float, ...]
    contributions: tuple[float, ...]
    epsilon: float


def quantile_edges(reference: npt.ArrayLike, bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """Interior bin edges: reference quantiles at k/bins for k = 1..bins-1, deduplicated."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2; got {bins!r}")
    ref = as_sample(reference, "reference", 1)
    qs = np.quantile(ref, np.arange(1, bins) / bins)
    return tuple(float(e) for e in np.unique(qs))


def bin_counts(values: npt.ArrayLike, edges: tuple[float, ...]) -> npt.NDArray[np.int64]:
    """Counts in the ``len(edges) + 1`` bins ``(-inf, e_1), [e_1, e_2), ..., [e_k, inf)``."""
    arr = as_sample(values, "values", 0)
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or np.any(~np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError("edges must be finite and strictly increasing")
    idx = np.searchsorted(e, arr, side="right")
    return np.bincount(idx, minlength=e.size + 1).astype(np.int64)


def _psi_from_counts(
    ref: npt.NDArray[np.int64],
    cur: npt.NDArray[np.int64],
    epsilon: float,
    edges: tuple[float, ...],
    moderate: float,
    significant: float,
) -> PsiResult:
    if not (0.0 < epsilon < 1.0) or math.isnan(epsilon):
        raise ValueError(f"epsilon must be in (0, 1); got {epsilon!r}")
    if ref.size != cur.size:
        raise ValueError(
            f"histograms must have the same number of bins; got {ref.size} and {cur.size}"
        )
    if ref.size < 2:
        raise ValueError("histograms need at least two bins")
    n_ref, n_cur = int(ref.sum()), int(cur.sum())
    if n_ref == 0 or n_cur == 0:
        raise ValueError("both histograms need at least one observation")
    r = ref / n_ref
    c = cur / n_cur
    r = np.where(r == 0.0, epsilon, r)
    c = np.where(c == 0.0, epsilon, c)
    contributions = (c - r) * np.log(c / r)
    value = float(np.sum(contributions))
    return PsiResult(
        psi=value,
        level=classify_psi(value, moderate, significant),
        edges=edges,
        reference_proportions=tuple(float(x) for x in r),
        current_proportions=tuple(float(x) for x in c),
        contributions=tuple(float(x) for x in contributions),
        epsilon=epsilon,
    )


def psi_from_histograms(
    reference_counts: npt.ArrayLike,
    current_counts: npt.ArrayLike,
    epsilon: float = DEFAULT_EPSILON,
    moderate: float = MODERATE_THRESHOLD,
    significant: float = SIGNIFICANT_THRESHOLD,
) -> PsiResult:
    """PSI from two histograms over the same bins (the caller guarantees shared edges)."""
    ref = as_counts(reference_counts, "reference_counts")
    cur = as_counts(current_counts, "current_counts")
    return _psi_from_counts(ref, cur, epsilon, (), moderate, significant)


def psi(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    bins: int = DEFAULT_BINS,
    epsilon: float = DEFAULT_EPSILON,
    moderate: float = MODERATE_THRESHOLD,
    significant: float = SIGNIFICANT_THRESHOLD,
) -> PsiResult:
    """PSI of ``current`` against ``reference`` with reference-quantile bins."""
    ref = as_sample(reference, "reference", 1)
    cur = as_sample(current, "current", 1)
    edges = quantile_edges(ref, bins)
    return _psi_from_counts(
        bin_counts(ref, edges), bin_counts(cur, edges), epsilon, edges, moderate, significant
    )


@dataclass(frozen=True, slots=True)
class KsResult:
    """Two-sided two-sample Kolmogorov-Smirnov test.

    ``statistic`` is ``D = sup |F_ref - F_cur|``; ``location`` is where it is attained and
    ``sign`` is +1 if ``F_ref > F_cur`` there (current shifted right), else -1.
    """

    statistic: float
    p_value: float
    location: float
    sign: int


def ks_two_sample(reference: npt.ArrayLike, current: npt.ArrayLike) -> KsResult:
    """Two-sample KS test of ``current`` against ``reference`` (scipy ``ks_2samp``)."""
    ref = as_sample(reference, "reference", 1)
    cur = as_sample(current, "current", 1)
    res = stats.ks_2samp(ref, cur, alternative="two-sided", method="auto")
    return KsResult(
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        location=float(res.statistic_location),
        sign=int(res.statistic_sign),
    )

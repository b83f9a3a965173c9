"""Sample-ratio-mismatch (SRM) check: chi-square goodness of fit of arm counts to weights.

Weights are the router's configured traffic split in basis points: non-negative integers that
sum to exactly 10,000. Expected counts are ``total * weight / 10000``; the statistic is
Pearson's ``sum((observed - expected)^2 / expected)`` over arms with a positive weight, with
``k - 1`` degrees of freedom (``k`` = number of such arms). This equals scipy
``chisquare(observed, expected)``.

An arm with weight 0 that received traffic is a routing fault that no sampling noise can
explain: the result then has ``statistic = inf``, ``p_value = 0`` and ``mismatch = True``.
Arms with weight 0 and no traffic are ignored.

The default threshold is ``p < 0.001``: SRM checks run continuously on every experiment, so a
strict threshold keeps false alarms rare while real routing bugs (which produce tiny p-values
with realistic traffic) are still caught.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsIndex

import numpy as np
import numpy.typing as npt

from ._validation import as_index_counts, check_probability_level
from .lazy import lazy

if TYPE_CHECKING:
    from scipy import special
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    special = lazy("scipy.special")


__all__ = [
    "BASIS_POINTS_TOTAL",
    "DEFAULT_SRM_THRESHOLD",
    "SrmResult",
    "is_sample_ratio_mismatch",
    "srm_test",
]

BASIS_POINTS_TOTAL = 10_000
DEFAULT_SRM_THRESHOLD = 0.001


@dataclass(frozen=True, slots=True)
class SrmResult:
    """Outcome of :func:`srm_test`."""

    statistic: float
    p_value: float
    degrees_of_freedom: int
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    threshold: float
    mismatch: bool


def _check_weights(weights_bp: Sequence[SupportsIndex], n_arms: int) -> npt.NDArray[np.int64]:
    weights = as_index_counts(weights_bp, "weights_bp")
    if weights.size != n_arms:
        raise ValueError(
            f"weights_bp has {weights.size} entries but observed has {n_arms}; "
            "give one weight per arm"
        )
    total = int(weights.sum())
    if total != BASIS_POINTS_TOTAL:
        raise ValueError(f"weights_bp must sum to {BASIS_POINTS_TOTAL} basis points; got {total}")
    if int(np.count_nonzero(weights)) < 2:
        raise ValueError("at least two arms need a positive weight for an SRM test")
    return weights


def srm_test(
    observed: Sequence[SupportsIndex],
    weights_bp: Sequence[SupportsIndex],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SrmResult:
    """Chi-square test of observed arm counts against the configured split."""
    counts = as_index_counts(observed, "observed")
    weights = _check_weights(weights_bp, counts.size)
    threshold = check_probability_level(threshold, "threshold")
    total = int(counts.sum())
    if total == 0:
        raise ValueError("observed counts are all zero; nothing to test")
    expected = total * weights.astype(np.float64) / BASIS_POINTS_TOTAL
    positive = weights > 0
    df = int(np.count_nonzero(positive)) - 1
    observed_t = tuple(int(c) for c in counts)
    expected_t = tuple(float(e) for e in expected)
    if np.any(counts[~positive] > 0):
        return SrmResult(math.inf, 0.0, df, observed_t, expected_t, threshold, True)
    obs = counts[positive].astype(np.float64)
    exp = expected[positive]
    statistic = float(np.sum((obs - exp) ** 2 / exp))
    p_value = float(special.chdtrc(df, statistic))
    return SrmResult(statistic, p_value, df, observed_t, expected_t, threshold, p_value < threshold)


def is_sample_ratio_mismatch(
    observed: Sequence[SupportsIndex],
    weights_bp: Sequence[SupportsIndex],
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> bool:
    """True when the SRM p-value is below ``threshold`` (default 0.001)."""
    return srm_test(observed, weights_bp, threshold).mismatch

"""Multiple-comparison adjustments: Holm (FWER) and Benjamini-Hochberg (FDR).

Both follow statsmodels ``multipletests`` operation by operation (``method="holm"`` and
``method="fdr_bh"``) so adjusted p-values and reject flags agree with it:

* Holm step-down: with sorted p-values ``p_(1) <= ... <= p_(m)``, the adjusted value is
  ``max_{j <= i} (m - j + 1) p_(j)`` capped at 1; reject ``p_(1..k)`` where ``k`` is the last
  index before the first ``p_(i) > alpha / (m - i + 1)``.
* Benjamini-Hochberg step-up: adjusted ``min_{j >= i} p_(j) m / j`` capped at 1; reject
  ``p_(1..k)`` for the largest ``k`` with ``p_(k) <= alpha k / m``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._validation import check_alpha

__all__ = ["AdjustedPValues", "adjust_p_values", "benjamini_hochberg", "holm"]

AdjustMethod = Literal["holm", "bh"]


@dataclass(frozen=True, slots=True)
class AdjustedPValues:
    """Adjusted p-values and reject flags, in the order of the input."""

    method: str
    alpha: float
    p_values: tuple[float, ...]
    adjusted: tuple[float, ...]
    reject: tuple[bool, ...]


def _as_p_values(p_values: Sequence[float] | npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    arr = np.asarray(p_values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional; got shape {arr.shape}")
    if np.any(np.isnan(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ValueError("p_values must all lie in [0, 1] (NaN is not allowed)")
    return arr


def _finish(
    method: str,
    alpha: float,
    pvals: npt.NDArray[np.float64],
    order: npt.NDArray[np.intp],
    adjusted_sorted: npt.NDArray[np.float64],
    reject_sorted: npt.NDArray[np.bool_],
) -> AdjustedPValues:
    adjusted_sorted = np.minimum(adjusted_sorted, 1.0)
    adjusted = np.empty_like(adjusted_sorted)
    adjusted[order] = adjusted_sorted
    reject = np.empty_like(reject_sorted)
    reject[order] = reject_sorted
    return AdjustedPValues(
        method=method,
        alpha=alpha,
        p_values=tuple(float(p) for p in pvals),
        adjusted=tuple(float(p) for p in adjusted),
        reject=tuple(bool(r) for r in reject),
    )


def holm(
    p_values: Sequence[float] | npt.NDArray[np.float64], alpha: float = 0.05
) -> AdjustedPValues:
    """Holm step-down adjustment (controls the family-wise error rate)."""
    alpha = check_alpha(alpha)
    pvals = _as_p_values(p_values)
    m = pvals.size
    order = np.argsort(pvals)
    ps = pvals[order]
    factors = np.arange(m, 0, -1)
    not_reject = ps > alpha / factors
    first = np.flatnonzero(not_reject)
    cut = m if first.size == 0 else int(first[0])
    reject_sorted = np.zeros(m, dtype=np.bool_)
    reject_sorted[:cut] = True
    adjusted_sorted = np.maximum.accumulate(ps * factors) if m else ps
    return _finish("holm", alpha, pvals, order, adjusted_sorted, reject_sorted)


def benjamini_hochberg(
    p_values: Sequence[float] | npt.NDArray[np.float64], alpha: float = 0.05
) -> AdjustedPValues:
    """Benjamini-Hochberg step-up adjustment (controls the false discovery rate)."""
    alpha = check_alpha(alpha)
    pvals = _as_p_values(p_values)
    m = pvals.size
    order = np.argsort(pvals)
    ps = pvals[order]
    ecdf = np.arange(1, m + 1) / float(m) if m else np.zeros(0)
    below = ps <= ecdf * alpha
    hits = np.flatnonzero(below)
    reject_sorted = np.zeros(m, dtype=np.bool_)
    if hits.size:
        reject_sorted[: int(hits[-1]) + 1] = True
    adjusted_sorted = np.minimum.accumulate((ps / ecdf)[::-1])[::-1] if m else ps
    return _finish("bh", alpha, pvals, order, adjusted_sorted, reject_sorted)


def adjust_p_values(
    p_values: Sequence[float] | npt.NDArray[np.float64],
    method: AdjustMethod,
    alpha: float = 0.05,
) -> AdjustedPValues:
    """Dispatch to :func:`holm` or :func:`benjamini_hochberg` by name."""
    if method == "holm":
        return holm(p_values, alpha)
    if method == "bh":
        return benjamini_hochberg(p_values, alpha)
    raise ValueError(f"method must be 'holm' or 'bh'; got {method!r}")

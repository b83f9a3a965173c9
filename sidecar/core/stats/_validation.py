"""Shared input checks for the statistics core.

Every public function validates its arguments with these helpers so that bad input fails
early with a :class:`ValueError` that names the offending argument.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import SupportsIndex

import numpy as np
import numpy.typing as npt


def check_probability_level(value: float, name: str) -> float:
    """Return ``value`` as float if it lies in the open interval (0, 1), else raise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number in the open interval (0, 1); got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number in the open interval (0, 1); got {value!r}"
        ) from None
    if not (0.0 < out < 1.0):
        raise ValueError(f"{name} must be in the open interval (0, 1); got {value!r}")
    return out


def check_alpha(alpha: float) -> float:
    """Validate a significance level."""
    return check_probability_level(alpha, "alpha")


def check_count(value: SupportsIndex, name: str) -> int:
    """Return ``value`` as a non-negative int; floats, bools and negatives are rejected."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer; got {value!r}") from None
    if out < 0:
        raise ValueError(f"{name} must be a non-negative integer; got {out}")
    return out


def check_trials(successes: SupportsIndex, n: SupportsIndex, arm: str) -> tuple[int, int]:
    """Validate ``successes`` out of ``n`` trials for one arm (``n`` >= 1)."""
    s = check_count(successes, f"successes_{arm}")
    t = check_count(n, f"n_{arm}")
    if t == 0:
        raise ValueError(f"n_{arm} must be at least 1; got 0 (no observations in arm {arm!r})")
    if s > t:
        raise ValueError(f"successes_{arm} ({s}) cannot exceed n_{arm} ({t})")
    return s, t


def check_finite(value: float, name: str) -> float:
    """Return ``value`` as float if finite, else raise."""
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return out


def as_sample(values: npt.ArrayLike, name: str, min_size: int) -> npt.NDArray[np.float64]:
    """Return a finite 1-D float64 array with at least ``min_size`` elements."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} observations; got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def as_counts(values: npt.ArrayLike, name: str) -> npt.NDArray[np.int64]:
    """Return a 1-D int64 array of non-negative integer counts."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty one-dimensional sequence of counts")
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{name} must contain integers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))
    ):
        raise ValueError(f"{name} must contain whole numbers")
    out = arr.astype(np.int64)
    if np.any(out < 0):
        raise ValueError(f"{name} must not contain negative counts; got {out.tolist()}")
    return out


def check_rates(baseline: float, minimum_effect: float) -> tuple[float, float]:
    """Validate a baseline rate and an absolute non-zero effect; return both arm rates."""
    p1 = check_probability_level(baseline, "baseline")
    if isinstance(minimum_effect, bool):
        raise ValueError(f"minimum_effect must be a finite number; got {minimum_effect!r}")
    try:
        mde = float(minimum_effect)
    except (TypeError, ValueError):
        raise ValueError(
            f"minimum_effect must be a finite number; got {minimum_effect!r}"
        ) from None
    if not math.isfinite(mde) or mde == 0.0:
        raise ValueError(
            f"minimum_effect must be a finite non-zero absolute difference; got {minimum_effect!r}"
        )
    p2 = p1 + mde
    if not (0.0 < p2 < 1.0):
        raise ValueError(f"baseline + minimum_effect must lie in (0, 1); got {p1} + {mde} = {p2}")
    return p1, p2


def as_index_counts(values: Sequence[SupportsIndex], name: str) -> npt.NDArray[np.int64]:
    """Return a non-empty 1-D int64 array from a sequence of non-negative integers."""
    checked = [check_count(v, f"{name}[{i}]") for i, v in enumerate(values)]
    if not checked:
        raise ValueError(f"{name} must not be empty")
    return np.array(checked, dtype=np.int64)

"""User buckets: bounded, mergeable sufficient statistics for user-level (clustered) analysis.

Outcomes are analysed per *user* (the routed targeting key), not per request: requests of
one user are correlated (users differ in their propensity), so a request-level variance
understates the real one and an anytime-valid test on it stops far too often (the A/A
bench measures how often: ``bench/ab_validity.py``, section ``users``).

Every user is hashed into one of ``K`` buckets (``K`` fixed, default 128; the hash does not
depend on the routing hash, see ``sidecar.core.experiment.units``). A bucket holds plain
sums over its *whole* users: outcomes (requests with an outcome), the sum and the sum of
squares of the outcome values, and users. Because a user never spans two buckets, the
``K`` bucket totals of an arm are independent and identically distributed, and the
variance of the arm's ratio metric ``R = sum(Y) / sum(N)`` follows from them by the delta
method for ratio metrics (Deng, Knoblich and Lu, "Applying the Delta Method in Metric
Analytics: A Practical Guide with Novel Ideas", KDD 2018, section 3.3, with the bucket as
the unit)::

    Var(R) ~= (s_Y^2 - 2 R s_YN + R^2 s_N^2) / (K * mean(N)^2)

with ``s_Y^2``, ``s_N^2``, ``s_YN`` the sample (co)variances (``ddof = 1``) of the bucket
totals. This is exactly the delta-method variance with buckets as units; it equals the
user-level delta method in expectation and differs from it only through the noise of
estimating a variance from ``K`` numbers (``K - 1`` degrees of freedom: with ``K = 128``
the variance estimate has a relative standard error of about ``sqrt(2 / 127) = 12.5%``).
Fewer buckets: less memory, a noisier variance; more buckets: the reverse. The bucket count
does not bias the variance, because it is computed over buckets that hold whole users.

Memory is ``4 K`` numbers per (metric, arm, segment), whatever the number of users or what
keys callers choose; totals merge across a fleet of sidecars by element-wise addition
(`BucketTotals.merge`, `to_json` / `from_json` of plain numbers), as long as every sidecar
hashes a key to the same bucket (the hash is a keyed BLAKE2b with a fixed personalisation,
not Python's per-process ``hash``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BUCKETS",
    "BucketTotals",
    "RatioEstimate",
    "ratio_from_buckets",
]

DEFAULT_BUCKETS = 128
MAX_BUCKETS = 4096

FloatArray = npt.NDArray[np.float64]


@dataclass
class BucketTotals:
    """Plain sums per bucket for one (metric, arm, segment): merge by addition.

    ``outcomes[k]``: outcomes counted in bucket ``k``; ``total[k]`` / ``total_sq[k]``: sum
    and sum of squares of their values (a boolean counts 1 or 0); ``users[k]``: users whose
    first counted outcome fell into bucket ``k``; ``keyless``: outcomes of requests without a
    targeting key (each its own unit, hashed by request id; counted again here to be shown
    apart)."""

    buckets: int = DEFAULT_BUCKETS
    outcomes: list[int] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    total_sq: list[float] = field(default_factory=list)
    users: list[int] = field(default_factory=list)
    keyless: int = 0

    def __post_init__(self) -> None:
        k = self.buckets
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_BUCKETS:
            raise ValueError(f"buckets: must be an integer within [2, {MAX_BUCKETS}], got {k!r}")
        for name in ("outcomes", "total", "total_sq", "users"):
            values = getattr(self, name)
            if not values:
                setattr(self, name, [0] * k if name in ("outcomes", "users") else [0.0] * k)
            elif len(values) != k:
                raise ValueError(f"{name}: must have {k} entries, got {len(values)}")

    def add(self, bucket: int, value: float, new_user: bool, keyless: bool = False) -> None:
        """One counted outcome of a user in ``bucket`` (hot path: four additions)."""
        self.outcomes[bucket] += 1
        self.total[bucket] += value
        self.total_sq[bucket] += value * value
        if new_user:
            self.users[bucket] += 1
        if keyless:
            self.keyless += 1

    def merge(self, other: BucketTotals) -> BucketTotals:
        """Element-wise sum (the fleet's merge); both must have the same bucket count."""
        if other.buckets != self.buckets:
            raise ValueError(f"cannot merge {other.buckets} buckets into {self.buckets}")
        return BucketTotals(
            self.buckets,
            [a + b for a, b in zip(self.outcomes, other.outcomes, strict=True)],
            [a + b for a, b in zip(self.total, other.total, strict=True)],
            [a + b for a, b in zip(self.total_sq, other.total_sq, strict=True)],
            [a + b for a, b in zip(self.users, other.users, strict=True)],
            self.keyless + other.keyless,
        )

    @property
    def n(self) -> int:
        return sum(self.outcomes)

    @property
    def n_users(self) -> int:
        return sum(self.users)

    def ratio(self) -> RatioEstimate:
        return ratio_from_buckets(self.total, self.outcomes)

    def to_json(self) -> dict[str, Any]:
        """Plain numbers only (non-finite sums cannot occur: values are finite)."""
        return {
            "buckets": self.buckets,
            "outcomes": list(self.outcomes),
            "total": list(self.total),
            "total_sq": list(self.total_sq),
            "users": list(self.users),
            "keyless": self.keyless,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BucketTotals:
        """Inverse of `to_json`; ValueError naming the field when malformed."""
        if not isinstance(data, Mapping):
            raise ValueError("bucket totals: must be a mapping")
        k = data.get("buckets")
        out = cls(k) if isinstance(k, int) and not isinstance(k, bool) else cls(-1)
        out.outcomes = _ints(data.get("outcomes"), "outcomes", out.buckets)
        out.users = _ints(data.get("users"), "users", out.buckets)
        out.total = _floats(data.get("total"), "total", out.buckets)
        out.total_sq = _floats(data.get("total_sq"), "total_sq", out.buckets)
        keyless = data.get("keyless")
        if isinstance(keyless, bool) or not isinstance(keyless, int) or keyless < 0:
            raise ValueError(f"bucket totals: keyless must be a non-negative integer; {keyless!r}")
        out.keyless = keyless
        if any(s < 0.0 for s in out.total_sq):
            raise ValueError("bucket totals: total_sq must be non-negative")
        return out


def _ints(values: Any, name: str, k: int) -> list[int]:
    if not isinstance(values, list | tuple) or len(values) != k:
        raise ValueError(f"bucket totals: {name} must be a list of {k} integers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"bucket totals: {name} must hold non-negative integers; {v!r}")
    return [int(v) for v in values]


def _floats(values: Any, name: str, k: int) -> list[float]:
    if not isinstance(values, list | tuple) or len(values) != k:
        raise ValueError(f"bucket totals: {name} must be a list of {k} numbers")
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"bucket totals: {name} must hold finite numbers; {v!r}")
        out.append(float(v))
    return out


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """``ratio = sum(Y) / sum(N)`` and its delta-method variance over buckets (arrays of the
    input's leading shape; NaN where ``sum(N) == 0``)."""

    ratio: FloatArray
    variance: FloatArray
    n: FloatArray  # sum(N)


def ratio_from_buckets(
    total: npt.ArrayLike | Sequence[float], outcomes: npt.ArrayLike | Sequence[int]
) -> RatioEstimate:
    """Delta-method ratio and variance over the last axis (the buckets); vectorised.

    ``Var(R) = (s_Y^2 - 2 R s_YN + R^2 s_N^2) / (K mean(N)^2)`` with sample (co)variances
    (``ddof = 1``) of the bucket totals ``Y`` (``total``) and ``N`` (``outcomes``); NaN
    where no outcome was counted."""
    y = np.asarray(total, dtype=np.float64)
    n = np.asarray(outcomes, dtype=np.float64)
    if y.shape != n.shape or y.ndim == 0 or y.shape[-1] < 2:
        raise ValueError("total and outcomes need the same shape with at least 2 buckets")
    k = y.shape[-1]
    sum_n = n.sum(axis=-1)
    sum_y = y.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(sum_n > 0, sum_y / np.where(sum_n > 0, sum_n, 1.0), np.nan)
        mean_y = sum_y / k
        mean_n = sum_n / k
        dy = y - mean_y[..., np.newaxis]
        dn = n - mean_n[..., np.newaxis]
        s_yy = (dy * dy).sum(axis=-1) / (k - 1)
        s_nn = (dn * dn).sum(axis=-1) / (k - 1)
        s_yn = (dy * dn).sum(axis=-1) / (k - 1)
        var = (s_yy - 2.0 * r * s_yn + r * r * s_nn) / (k * mean_n * mean_n)
    var = np.where(sum_n > 0, np.maximum(var, 0.0), np.nan)
    return RatioEstimate(np.asarray(r, dtype=np.float64), np.asarray(var, dtype=np.float64), sum_n)

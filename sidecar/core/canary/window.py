"""Bounded-memory, mergeable window statistics per variant: the canary judge's input.

Pure: callers pass ``now`` (seconds on any clock that only moves forward, e.g.
``time.monotonic()``), the latency in seconds and the gRPC status code name.

What a :class:`VariantWindow` counts:

* ``requests``: every recorded request, whatever its status;
* ``errors``: requests whose status is not ``"OK"`` (timeouts included);
* ``timeouts``: requests whose status is ``"DEADLINE_EXCEEDED"`` (also counted as errors);
* ``errors_by_status``: status name -> count, at most :data:`MAX_STATUS_NAMES` distinct
  names (further names are counted under ``"OTHER"``), like the shadow recorder;
* a latency sketch over **successful requests only**. Failed requests are left out on
  purpose: a request that fails fast would make a broken canary look fast, and a
  timeout's latency is the caller's deadline, not the model's. Errors and timeouts are
  judged by their own rate metrics instead.

The sketch is a :class:`ddsketch.LogCollapsingLowestDenseDDSketch` with relative
accuracy 1% and at most :data:`SKETCH_BIN_LIMIT` bins per store: memory is bounded
whatever the traffic, and two sketches with the same accuracy merge exactly (bucket
counts add). :meth:`VariantWindow.latency_buckets` exposes the bucket values and counts
so the judge can run a rank test on them, treating each bucket as a group of tied values.

:class:`RollingWindows` keeps, per variant, a ring of fixed time buckets (10 s each,
30 min by default) keyed by the integer bucket index ``floor(now / bucket_s)``. Reading
only ever returns **complete** buckets: ``since(v, start, now)`` merges the buckets with
index in ``[index(start), index(now))``. The bucket containing ``now`` is still filling
and is left out, so consecutive reads ``since(a, b)``, ``since(b, c)`` partition time
exactly (nothing counted twice, nothing lost) at the cost of up to ``bucket_s`` of lag.
:class:`CumulativeWindows` uses that to keep running totals since a stage started, for
stages longer than the ring's horizon.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from ddsketch import LogCollapsingLowestDenseDDSketch

__all__ = [
    "MAX_STATUS_NAMES",
    "MAX_VARIANTS",
    "OK",
    "SKETCH_BIN_LIMIT",
    "TIMEOUT",
    "CumulativeWindows",
    "LatencyBuckets",
    "RollingWindows",
    "VariantWindow",
    "WindowSource",
]

OK: Final = "OK"
"""The gRPC status code name of a successful request."""

TIMEOUT: Final = "DEADLINE_EXCEEDED"
"""The gRPC status code name counted as a timeout."""

SKETCH_BIN_LIMIT: Final = 2048
"""Bins per sketch store (DDSketch's default limit): at 1% relative accuracy that spans
~17 orders of magnitude below the slowest latency before the lowest bins collapse."""

MAX_STATUS_NAMES: Final = 32
"""Distinct error status names kept per window (gRPC has 17); more count as "OTHER"."""

MAX_VARIANTS: Final = 16
"""Distinct variants a :class:`RollingWindows` keeps by default; records for further
variants are dropped (and counted in :attr:`RollingWindows.dropped`)."""

DEFAULT_RELATIVE_ACCURACY: Final = 0.01
ZERO_KEY: Final = -(2**62)
"""Bucket key used for latencies too small for the sketch's logarithmic mapping (0 s)."""


# ------------------------------------------------------------------ latency sketch


class _LatencySketch(LogCollapsingLowestDenseDDSketch):
    """The DDSketch the windows use, plus bulk access to its buckets.

    DDSketch has no public accessor for its bins and merges one bin at a time in Python;
    reading and adding bins from this subclass keeps that reliance on ddsketch's internals
    (``_store.bins``/``offset``, ``_zero_count``, ``_count``, ``_sum``, ``_min``, ``_max``,
    pinned by ``ddsketch<4``) in one place. The unit tests check :meth:`merge_many`
    against ddsketch's own :meth:`merge`. Only non-negative values are ever added.
    """

    def __init__(self, relative_accuracy: float, bin_limit: int) -> None:
        super().__init__(relative_accuracy=relative_accuracy, bin_limit=bin_limit)
        self._key_multiplier = self._mapping._multiplier
        self._min_possible = self._mapping.min_possible

    def add(self, val: float, weight: float = 1.0) -> None:
        """ddsketch's ``add`` for the per-request path, with fewer temporary objects: the
        same key (``ceil(log2(val) * multiplier)``, the mapping's offset being 0) and the
        same store update when the key is inside the store's range (tested equal)."""
        if val > self._min_possible:
            key = math.ceil(math.log(val, 2) * self._key_multiplier)
            store = self._store
            if store.min_key <= key <= store.max_key:
                store.bins[key - store.offset] += weight
                store.count += weight
            else:
                store.add(key, weight)  # grows or collapses the range
        elif val < 0.0:
            super().add(val, weight)
            return
        else:
            self._zero_count += weight
        self._count += weight
        self._sum += val * weight
        if val < self._min:
            self._min = val
        if val > self._max:
            self._max = val

    def _bins(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        store = self._store
        bins = np.asarray(store.bins, dtype=np.float64)
        keys = np.arange(store.offset, store.offset + bins.size, dtype=np.int64)
        return keys, bins

    def buckets(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Keys and counts of the non-empty buckets, ascending; the zero bucket first."""
        keys, bins = self._bins()
        nonzero = bins != 0.0
        keys, counts = keys[nonzero], bins[nonzero]
        zero = float(self._zero_count)
        if zero > 0.0:
            keys = np.concatenate([np.array([ZERO_KEY], dtype=np.int64), keys])
            counts = np.concatenate([np.array([zero]), counts])
        return keys, counts

    def quantile_value(self, q: float) -> float | None:
        """Same as ddsketch's ``get_quantile_value(q)`` (tested equal), with a numpy
        search over the bins instead of a Python loop."""
        if q < 0.0 or q > 1.0 or self._count == 0:
            return None
        rank = q * (self._count - 1)
        if rank < self._zero_count:
            return 0.0
        store = self._store
        running = np.cumsum(np.asarray(store.bins, dtype=np.float64))
        index = int(np.searchsorted(running, rank - self._zero_count, side="right"))
        key = store.max_key if index >= running.size else index + store.offset
        return float(self._mapping.value(key))

    def key_values(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Representative values of bucket keys (the mapping's ``value``, vectorised;
        0.0 for the zero bucket)."""
        mapping = self._mapping
        scale = 2.0 / (1.0 + mapping.gamma)
        exponent = keys.astype(np.float64) / mapping._multiplier
        values = np.power(2.0, exponent) * scale
        return np.asarray(np.where(keys == ZERO_KEY, 0.0, values), dtype=np.float64)

    def _add_to_store(self, keys: npt.NDArray[np.int64], weights: npt.NDArray[np.float64]) -> None:
        """Add ``weights`` to the store's buckets ``keys`` (distinct, ascending, not the
        zero bucket); the sketch-level totals are the caller's job."""
        if keys.size == 0:
            return
        store = self._store
        add = store.add
        add(int(keys[0]), 0.0)  # size the store's range once
        add(int(keys[-1]), 0.0)
        if store.is_collapsed or int(keys[0]) < store.min_key:
            for key, weight in zip(keys.tolist(), weights.tolist(), strict=True):
                add(key, weight)  # ddsketch's own collapsing rules
            return
        bins = np.asarray(store.bins, dtype=np.float64)
        bins[keys - store.offset] += weights
        store.bins = bins.tolist()
        store.count += float(np.sum(weights))

    def add_many(self, values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]) -> None:
        """``add(values[i], weights[i])`` for all i (values finite and >= 0, weights > 0),
        with one store update."""
        if values.size == 0:
            return
        distinct, inverse = np.unique(values, return_inverse=True)
        summed = np.asarray(np.bincount(inverse, weights=weights), dtype=np.float64)
        mapping = self._mapping
        small = distinct <= mapping.min_possible
        zero = float(np.sum(summed[small]))
        key = mapping.key
        keys = np.array([key(v) for v in distinct[~small].tolist()], dtype=np.int64)
        positive = summed[~small]
        if keys.size > 1 and np.any(np.diff(keys) == 0):  # several values per bucket
            keys, inverse_keys = np.unique(keys, return_inverse=True)
            positive = np.asarray(np.bincount(inverse_keys, weights=positive), dtype=np.float64)
        self._add_to_store(keys, positive)
        self._zero_count += zero
        self._count += float(np.sum(summed))
        self._sum += float(np.dot(distinct, summed))
        self._min = min(self._min, float(distinct[0]))
        self._max = max(self._max, float(distinct[-1]))

    def merge_many(self, sketches: Iterable[_LatencySketch]) -> None:
        """Add all ``sketches``' counts into this one (same buckets as merging them one by
        one, with one store update)."""
        parts = [s for s in sketches if s._count]
        if len(parts) <= 1 and not self._count:
            for part in parts:
                self.merge(part)  # ddsketch copies the store
            return
        keys: list[npt.NDArray[np.int64]] = []
        counts: list[npt.NDArray[np.float64]] = []
        for part in parts:
            if part._mapping.gamma != self._mapping.gamma:
                raise ValueError("cannot merge sketches with different accuracies")
            k, c = part._bins()
            keys.append(k)
            counts.append(c)
            self._zero_count += part._zero_count
            self._count += part._count
            self._sum += part._sum
            self._min = min(self._min, part._min)
            self._max = max(self._max, part._max)
        if not keys:
            return
        all_keys = np.concatenate(keys)
        all_counts = np.concatenate(counts)
        nonzero = all_counts != 0.0
        distinct, inverse = np.unique(all_keys[nonzero], return_inverse=True)
        summed = np.asarray(np.bincount(inverse, weights=all_counts[nonzero]), dtype=np.float64)
        self._add_to_store(distinct, summed)


def _new_sketch(relative_accuracy: float, bin_limit: int) -> _LatencySketch:
    return _LatencySketch(relative_accuracy=relative_accuracy, bin_limit=bin_limit)


@dataclass(frozen=True, eq=False)
class LatencyBuckets:
    """The latency sketch's non-empty buckets, ascending by value.

    ``keys`` are the sketch's integer bucket keys (comparable between windows with the
    same relative accuracy), ``values`` their representative latencies in seconds (0.0 for
    the zero bucket) and ``counts`` the successful requests in each. The arrays are
    read-only.
    """

    keys: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    counts: npt.NDArray[np.float64]

    @property
    def total(self) -> int:
        """Successful requests in all buckets."""
        return round(float(np.sum(self.counts)))

    def expand(self) -> npt.NDArray[np.float64]:
        """One value per request (each bucket's value repeated by its count): the tied
        data a rank test on the buckets is equivalent to. Memory grows with the count;
        meant for tests and small windows."""
        return np.repeat(self.values, np.rint(self.counts).astype(np.int64))


def _read_only(arr: npt.NDArray[np.generic]) -> None:
    arr.setflags(write=False)


def _number(value: Any, name: str, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}: must be >= {low:g}, got {value!r}")
    return float(value)


def _count(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
    return value


def _bin(item: Any) -> tuple[int, float]:
    if not (isinstance(item, list | tuple) and len(item) == 2):
        raise ValueError("bins: each entry is a [key, count] pair")
    key, count = item
    if isinstance(key, bool) or not isinstance(key, int) or not -(2**40) < key < 2**40:
        raise ValueError(f"bins: key must be an integer, got {key!r}")
    if _number(count, "bins count", low=0.0) == 0.0:
        raise ValueError("bins: counts must be > 0")
    return key, float(count)


# ------------------------------------------------------------------ one window


class VariantWindow:
    """Request, error, timeout and latency statistics of one variant over some time.

    Memory is bounded (see the module docstring). Mutated only by :meth:`record` and
    :meth:`record_many`; :meth:`merge` returns a new window. Not thread-safe (the sidecar
    calls it from its event-loop thread only).
    """

    __slots__ = (
        "_bin_limit",
        "_errors",
        "_errors_by_status",
        "_relative_accuracy",
        "_requests",
        "_sketch",
        "_timeouts",
    )

    def __init__(
        self,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = SKETCH_BIN_LIMIT,
    ) -> None:
        if not (isinstance(relative_accuracy, int | float) and 0.0 < relative_accuracy < 1.0):
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if isinstance(bin_limit, bool) or not isinstance(bin_limit, int) or bin_limit < 1:
            raise ValueError(f"bin_limit must be a positive int, got {bin_limit!r}")
        self._relative_accuracy = float(relative_accuracy)
        self._bin_limit = bin_limit
        self._requests = 0
        self._errors = 0
        self._timeouts = 0
        self._errors_by_status: dict[str, int] = {}
        self._sketch = _new_sketch(self._relative_accuracy, bin_limit)

    # -- recording ------------------------------------------------------------------

    def _count_errors(self, status: str, count: int) -> None:
        self._errors += count
        if status == TIMEOUT:
            self._timeouts += count
        errors = self._errors_by_status
        key = status
        if key not in errors and len(errors) >= MAX_STATUS_NAMES:
            key = "OTHER"
        errors[key] = errors.get(key, 0) + count

    def record(self, latency_s: float, status: str) -> None:
        """Count one request. Its latency enters the sketch only when ``status`` is
        ``"OK"`` and the latency is finite and >= 0 (other latencies are skipped; the
        request still counts)."""
        if status == OK:
            if latency_s >= 0.0 and latency_s != math.inf:  # NaN fails the first test
                self._sketch.add(latency_s)
        else:
            self._count_errors(str(status), 1)
        self._requests += 1

    def record_many(
        self,
        status: str,
        latencies_s: npt.ArrayLike,
        counts: npt.ArrayLike | None = None,
    ) -> None:
        """Count a batch of requests that all ended with ``status``: one per latency, or
        ``counts[i]`` requests with latency ``latencies_s[i]`` when ``counts`` is given.

        Equivalent to calling :meth:`record` once per request (same counts and sketch
        buckets), with one sketch update for the whole batch. Raises ``ValueError`` on
        negative or non-integer counts or mismatched lengths (a batch API for simulations
        and replays, not the request path).
        """
        values = np.asarray(latencies_s, dtype=np.float64).reshape(-1)
        if counts is None:
            weights = np.ones(values.shape, dtype=np.int64)
        else:
            raw = np.asarray(counts).reshape(-1)
            if raw.shape != values.shape:
                raise ValueError(f"counts has {raw.size} entries but latencies_s has {values.size}")
            if raw.size and (
                not np.all(np.isfinite(raw)) or np.any(raw < 0) or np.any(raw != np.rint(raw))
            ):
                raise ValueError("counts must be non-negative integers")
            weights = raw.astype(np.int64)
        total = int(np.sum(weights))
        if total == 0:
            return
        self._requests += total
        if status != OK:
            self._count_errors(str(status), total)
            return
        keep = (weights > 0) & (values >= 0.0) & np.isfinite(values)
        if np.any(keep):
            self._sketch.add_many(values[keep], weights[keep].astype(np.float64))

    # -- combining ------------------------------------------------------------------

    def _check_mergeable(self, other: VariantWindow) -> None:
        if not isinstance(other, VariantWindow):
            raise TypeError(f"can only merge a VariantWindow, got {type(other).__name__}")
        if other._relative_accuracy != self._relative_accuracy:
            raise ValueError(
                "cannot merge windows with different sketch accuracies: "
                f"{self._relative_accuracy} vs {other._relative_accuracy}"
            )

    def _absorb(self, other: VariantWindow) -> None:
        """Add ``other``'s counters (not its sketch) into this window, in place."""
        if other._requests == 0:
            return
        self._requests += other._requests
        self._errors += other._errors
        self._timeouts += other._timeouts
        errors = self._errors_by_status
        for name, count in other._errors_by_status.items():
            key = name
            if key not in errors and len(errors) >= MAX_STATUS_NAMES:
                key = "OTHER"
            errors[key] = errors.get(key, 0) + count

    def merge(self, other: VariantWindow) -> VariantWindow:
        """A new window holding both windows' requests; neither input changes."""
        self._check_mergeable(other)
        return VariantWindow.merged((self, other), self._relative_accuracy, self._bin_limit)

    @staticmethod
    def merged(
        windows: Iterable[VariantWindow],
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = SKETCH_BIN_LIMIT,
    ) -> VariantWindow:
        """A new window holding all ``windows``' requests (empty when there are none)."""
        out = VariantWindow(relative_accuracy, bin_limit)
        parts = list(windows)
        for window in parts:
            out._check_mergeable(window)
            out._absorb(window)
        out._sketch.merge_many(w._sketch for w in parts)
        return out

    def copy(self) -> VariantWindow:
        """An independent copy."""
        return VariantWindow.merged((self,), self._relative_accuracy, self._bin_limit)

    # -- plain data (fleet statistics) ---------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers that :meth:`from_dict` turns back into an equal window (same
        counts and sketch buckets): what a fleet member publishes. ``bins`` lists the
        sketch's non-empty ``[key, count]`` pairs (the zero bucket under ``zero``)."""
        sketch = self._sketch
        keys, counts = sketch._bins()
        nonzero = counts != 0.0
        return {
            "accuracy": self._relative_accuracy,
            "requests": self._requests,
            "errors": self._errors,
            "timeouts": self._timeouts,
            "by_status": dict(self._errors_by_status),
            "zero": float(sketch._zero_count),
            "sum": float(sketch._sum),
            "min": float(sketch._min) if sketch._count else None,
            "max": float(sketch._max) if sketch._count else None,
            "bins": [
                [int(k), float(c)]
                for k, c in zip(keys[nonzero].tolist(), counts[nonzero].tolist(), strict=True)
            ],
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any], bin_limit: int = SKETCH_BIN_LIMIT) -> VariantWindow:
        """The window :meth:`to_dict` described; ``ValueError`` naming the field when the
        data is not a well-formed window (wrong types, negative or non-finite counts,
        inconsistent totals, more than ``bin_limit`` bins or status names beyond
        :data:`MAX_STATUS_NAMES`)."""
        if not isinstance(data, Mapping):
            raise ValueError("window: must be an object")
        out = VariantWindow(_number(data.get("accuracy"), "accuracy"), bin_limit)
        requests, errors = _count(data, "requests"), _count(data, "errors")
        timeouts = _count(data, "timeouts")
        if not timeouts <= errors <= requests:
            raise ValueError("window: needs timeouts <= errors <= requests")
        by_status = data.get("by_status", {})
        if not isinstance(by_status, Mapping) or len(by_status) > MAX_STATUS_NAMES:
            raise ValueError(f"by_status: at most {MAX_STATUS_NAMES} status names")
        for name in by_status:
            if not isinstance(name, str) or len(name) > 64:
                raise ValueError("by_status: names are strings of at most 64 characters")
        out._requests, out._errors, out._timeouts = requests, errors, timeouts
        out._errors_by_status = {str(k): _count(by_status, k) for k in by_status}
        raw = data.get("bins", [])
        if not isinstance(raw, list) or len(raw) > bin_limit:
            raise ValueError(f"bins: a list of at most {bin_limit} [key, count] pairs")
        pairs = sorted(_bin(item) for item in raw)
        keys = np.array([k for k, _ in pairs], dtype=np.int64)
        counts = np.array([c for _, c in pairs], dtype=np.float64)
        if keys.size > 1 and np.any(np.diff(keys) == 0):
            raise ValueError("bins: keys must be distinct")
        sketch = out._sketch
        zero = _number(data.get("zero", 0.0), "zero", low=0.0)
        total = float(np.sum(counts)) + zero
        if total > out.successes + 0.5:
            raise ValueError("bins: more latencies than successful requests")
        sketch._add_to_store(keys, counts)
        sketch._zero_count = zero
        sketch._count = total
        if total:
            sketch._sum = _number(data.get("sum", 0.0), "sum", low=0.0)
            sketch._min = _number(data.get("min"), "min", low=0.0)
            sketch._max = _number(data.get("max"), "max", low=sketch._min)
        return out

    # -- reading --------------------------------------------------------------------

    @property
    def relative_accuracy(self) -> float:
        return self._relative_accuracy

    @property
    def requests(self) -> int:
        """Requests recorded, whatever their status."""
        return self._requests

    @property
    def errors(self) -> int:
        """Requests whose status was not OK (timeouts included)."""
        return self._errors

    @property
    def timeouts(self) -> int:
        """Requests whose status was DEADLINE_EXCEEDED."""
        return self._timeouts

    @property
    def successes(self) -> int:
        """Requests whose status was OK."""
        return self._requests - self._errors

    @property
    def errors_by_status(self) -> Mapping[str, int]:
        """Status name -> requests (a read-only copy, sorted by name)."""
        return MappingProxyType(dict(sorted(self._errors_by_status.items())))

    @property
    def latency_count(self) -> int:
        """Successful requests whose latency is in the sketch."""
        return round(float(self._sketch.count))

    @property
    def error_rate(self) -> float | None:
        """``errors / requests``; None when there are no requests."""
        return self._errors / self._requests if self._requests else None

    @property
    def timeout_rate(self) -> float | None:
        """``timeouts / requests``; None when there are no requests."""
        return self._timeouts / self._requests if self._requests else None

    def quantile(self, q: float) -> float | None:
        """Latency quantile of successful requests in seconds (within 1% relative
        accuracy); None when no latency was recorded. ``q`` must be in [0, 1]."""
        if not (isinstance(q, int | float) and 0.0 <= q <= 1.0):
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        return self._sketch.quantile_value(q)

    def latency_buckets(self) -> LatencyBuckets:
        """The sketch's non-empty buckets (see :class:`LatencyBuckets`)."""
        keys, counts = self._sketch.buckets()
        values = self._sketch.key_values(keys)
        for arr in (keys, values, counts):
            _read_only(arr)
        return LatencyBuckets(keys, values, counts)

    def __repr__(self) -> str:
        return (
            f"VariantWindow(requests={self._requests}, errors={self._errors}, "
            f"timeouts={self._timeouts}, latency_count={self.latency_count})"
        )


# ------------------------------------------------------------------ time buckets


class _Ring:
    """One variant's ring of time buckets: slot ``i % n`` holds bucket index ``i``."""

    __slots__ = ("indices", "windows")

    def __init__(self, size: int) -> None:
        self.indices: list[int | None] = [None] * size
        self.windows: list[VariantWindow | None] = [None] * size


class RollingWindows:
    """Per-variant rings of fixed time buckets; read as merged :class:`VariantWindow`\\ s.

    ``bucket_s`` seconds per bucket; ``horizon_s`` seconds of complete buckets kept
    (rounded up to whole buckets), plus the bucket still filling. Memory is bounded
    whatever the traffic: at most ``max_variants`` rings of ``ceil(horizon_s / bucket_s)
    + 1`` bounded windows.

    :meth:`record` never raises: records it cannot place (a non-finite ``now``, a bucket
    already older than the horizon, a variant beyond ``max_variants``) are dropped and
    counted in :attr:`dropped`. Reads raise ``ValueError`` when asked for a range that
    starts before the oldest bucket kept, rather than silently returning less.
    """

    def __init__(
        self,
        bucket_s: float = 10.0,
        horizon_s: float = 1800.0,
        *,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = SKETCH_BIN_LIMIT,
        max_variants: int = MAX_VARIANTS,
    ) -> None:
        if not (isinstance(bucket_s, int | float) and math.isfinite(bucket_s) and bucket_s > 0):
            raise ValueError(f"bucket_s must be a positive number, got {bucket_s!r}")
        if not (isinstance(horizon_s, int | float) and math.isfinite(horizon_s) and horizon_s > 0):
            raise ValueError(f"horizon_s must be a positive number, got {horizon_s!r}")
        if isinstance(max_variants, bool) or not isinstance(max_variants, int) or max_variants < 1:
            raise ValueError(f"max_variants must be a positive int, got {max_variants!r}")
        VariantWindow(relative_accuracy, bin_limit)  # validates both
        self._bucket_s = float(bucket_s)
        self._complete = max(1, math.ceil(horizon_s / bucket_s - 1e-9))
        self._size = self._complete + 1  # plus the bucket still filling
        self._relative_accuracy = float(relative_accuracy)
        self._bin_limit = bin_limit
        self._max_variants = max_variants
        self._rings: dict[str, _Ring] = {}
        self._hot: dict[str, tuple[int, VariantWindow]] = {}
        """Per variant, the bucket last recorded into (valid until ``_latest`` moves)."""
        self._latest: int | None = None
        self._dropped = 0

    # -- properties -----------------------------------------------------------------

    @property
    def bucket_s(self) -> float:
        return self._bucket_s

    @property
    def buckets(self) -> int:
        """Complete buckets always readable per variant: ``ceil(horizon_s / bucket_s)``
        (the ring holds one more, the bucket still filling)."""
        return self._complete

    @property
    def horizon_s(self) -> float:
        """Seconds of complete buckets always readable: ``buckets * bucket_s``."""
        return self._complete * self._bucket_s

    @property
    def dropped(self) -> int:
        """Records dropped (bad ``now``, too old, too many variants)."""
        return self._dropped

    @property
    def variants(self) -> tuple[str, ...]:
        """Variants seen, in first-seen order."""
        return tuple(self._rings)

    def bucket_index(self, now: float) -> int:
        """``floor(now / bucket_s)``: the bucket a record at ``now`` goes to."""
        return math.floor(now / self._bucket_s)

    # -- recording ------------------------------------------------------------------

    def _slot(self, variant: str, index: int) -> VariantWindow | None:
        """The window of bucket ``index`` of ``variant``, or None (dropped and counted)."""
        latest = self._latest
        if latest is None or index > latest:
            self._latest = latest = index
            self._hot.clear()  # slots may now be reused: cached windows may be stale
        elif index <= latest - self._size:
            self._dropped += 1  # older than the horizon
            return None
        ring = self._rings.get(variant)
        if ring is None:
            if len(self._rings) >= self._max_variants:
                self._dropped += 1
                return None
            ring = self._rings[variant] = _Ring(self._size)
        slot = index % self._size
        held = ring.indices[slot]
        window = ring.windows[slot]
        if held != index or window is None:
            if held is not None and held > index:
                self._dropped += 1  # the slot already moved on past this bucket
                return None
            window = VariantWindow(self._relative_accuracy, self._bin_limit)
            ring.indices[slot] = index
            ring.windows[slot] = window
        self._hot[variant] = (index, window)
        return window

    def record(self, variant: str, now: float, latency_s: float, status: str) -> None:
        """Count one request of ``variant`` that ended at ``now`` (see
        :meth:`VariantWindow.record`). Never raises."""
        try:
            index = math.floor(now / self._bucket_s)  # NaN, inf: raises, dropped below
            hot = self._hot.get(variant)
            if hot is not None and hot[0] == index:
                window: VariantWindow | None = hot[1]
            else:
                window = self._slot(variant, index)
            if window is not None:
                window.record(latency_s, status)
        except Exception:  # e.g. a latency that is not a number: drop, never raise
            self._dropped += 1

    def record_many(
        self,
        variant: str,
        now: float,
        status: str,
        latencies_s: npt.ArrayLike,
        counts: npt.ArrayLike | None = None,
    ) -> None:
        """Count a batch of requests of ``variant`` that ended at ``now``, all with
        ``status`` (see :meth:`VariantWindow.record_many`, whose errors it raises)."""
        try:
            index = math.floor(now / self._bucket_s)
        except (ValueError, OverflowError, TypeError):
            self._dropped += 1
            return
        window = self._slot(variant, index)
        if window is not None:
            window.record_many(status, latencies_s, counts)

    # -- reading --------------------------------------------------------------------

    def since(self, variant: str, start: float, now: float) -> VariantWindow:
        """Merge of ``variant``'s complete buckets from the one containing ``start`` up to,
        not including, the one containing ``now`` (a new window; empty for an unknown
        variant or when ``start`` and ``now`` fall in the same bucket).

        Raises ``ValueError`` if ``start > now``, if either is not finite, or if
        ``start``'s bucket is no longer kept (``horizon_s`` of complete buckets before
        the latest record's bucket always is).
        """
        if not (math.isfinite(start) and math.isfinite(now)):
            raise ValueError(f"start and now must be finite, got {start!r} and {now!r}")
        if start > now:
            raise ValueError(f"start ({start}) must not be after now ({now})")
        first = self.bucket_index(start)
        end = self.bucket_index(now)
        if self._latest is not None and first <= self._latest - self._size:
            raise ValueError(
                f"start {start} is older than the buckets kept (the oldest starts at "
                f"{(self._latest - self._size + 1) * self._bucket_s:g}; horizon "
                f"{self.horizon_s:g} s); use CumulativeWindows for longer spans"
            )
        ring = self._rings.get(variant)
        parts: list[VariantWindow] = []
        if ring is not None:
            for index in range(first, end):
                slot = index % self._size
                window = ring.windows[slot]
                if window is not None and ring.indices[slot] == index:
                    parts.append(window)
        return VariantWindow.merged(parts, self._relative_accuracy, self._bin_limit)

    def window(self, variant: str, now: float, span_s: float) -> VariantWindow:
        """The complete buckets covering the ``span_s`` seconds before ``now``:
        ``since(variant, now - span_s, now)`` (the span's start is rounded down to a
        bucket boundary)."""
        if not (math.isfinite(span_s) and span_s >= 0):
            raise ValueError(f"span_s must be a finite number >= 0, got {span_s!r}")
        return self.since(variant, now - span_s, now)

    def export(self, first: int) -> dict[str, dict[int, VariantWindow]]:
        """Per variant, the buckets kept with index >= ``first`` (the one still filling
        included), as ``{index: window}``; the windows are the ring's own (read only)."""
        out: dict[str, dict[int, VariantWindow]] = {}
        for variant, ring in self._rings.items():
            held = {
                index: window
                for index, window in zip(ring.indices, ring.windows, strict=True)
                if index is not None and window is not None and index >= first
            }
            if held:
                out[variant] = held
        return out


class WindowSource(Protocol):
    """What the rollout controller reads: :class:`RollingWindows`, or a fleet's merged
    view of every member's windows (``sidecar.core.canary.merged.MergedWindows``)."""

    @property
    def variants(self) -> tuple[str, ...]: ...

    @property
    def bucket_s(self) -> float: ...

    @property
    def horizon_s(self) -> float: ...

    def since(self, variant: str, start: float, now: float) -> VariantWindow: ...

    def window(self, variant: str, now: float, span_s: float) -> VariantWindow: ...


# ------------------------------------------------------------------ since a stage began


class CumulativeWindows:
    """Running windows since a stage started, fed from :class:`RollingWindows`.

    Call :meth:`advance` at each evaluation (at least once per horizon); it merges the
    complete buckets since the previous call into per-variant totals, so a 2-hour stage
    can be judged on all its data with a 30-minute ring. Memory: one bounded window per
    variant.
    """

    def __init__(self, start: float) -> None:
        if not math.isfinite(start):
            raise ValueError(f"start must be finite, got {start!r}")
        self._start = float(start)
        self._last = float(start)
        self._totals: dict[str, VariantWindow] = {}

    @property
    def start(self) -> float:
        return self._start

    @property
    def last(self) -> float:
        """The ``now`` of the latest :meth:`advance` (the stage start before any)."""
        return self._last

    def advance(self, rolling: WindowSource, now: float) -> None:
        """Add every variant's complete buckets in ``[last, now)`` to its total.

        Raises ``ValueError`` as :meth:`RollingWindows.since` does (e.g. when more than the
        ring's horizon passed since the previous call); nothing changes then.
        """
        fresh = {v: rolling.since(v, self._last, now) for v in rolling.variants}
        for variant, window in fresh.items():
            total = self._totals.get(variant)
            self._totals[variant] = window if total is None else total.merge(window)
        self._last = max(self._last, float(now))

    def window(self, variant: str) -> VariantWindow:
        """``variant``'s requests since the stage start, up to the last :meth:`advance`
        (a new window; empty if none were seen)."""
        total = self._totals.get(variant)
        return VariantWindow() if total is None else total.copy()

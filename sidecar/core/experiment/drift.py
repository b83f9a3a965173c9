"""Drift monitoring: a reference window against the current window, per numeric input
feature and per variant's prediction distribution, in bounded memory. Pure.

Each monitored series (:class:`SeriesDrift`) first builds or receives a *reference*
(the first ``reference_size`` values it sees, or configured values), freezes it into bins
(reference quantiles, or categories for discrete data) plus a reservoir sample for KS,
and then counts *tumbling windows* of ``window_size`` values into a histogram over those
bins and an Algorithm R reservoir. PSI (:func:`sidecar.core.stats.psi_from_histograms`)
and KS (:func:`sidecar.core.stats.ks_two_sample`) compare the reported current window
with the reference. :class:`DriftTracker` maps requests onto series: one per input
feature (all variants' traffic) and one per (variant, output feature); non-reference
variants' predictions are compared with the reference variant's frozen reference.

Conventions are documented in ``docs/statistics.md`` ("Drift monitoring"). Randomness
comes only from a seeded numpy ``Generator``; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from sidecar.core.stats.drift import (
    DEFAULT_EPSILON,
    DriftLevel,
    ks_two_sample,
    psi_from_histograms,
    quantile_edges,
)

__all__ = [
    "LEVELS",
    "MAX_CATEGORIES",
    "DriftResult",
    "DriftSettings",
    "DriftTracker",
    "ExtractedFeatures",
    "FeatureDrift",
    "FrozenReference",
    "Reservoir",
    "SeriesDrift",
    "extract_features",
    "features_from_tensors",
    "freeze_reference",
]

Kind = Literal["input", "prediction"]
FloatArray = npt.NDArray[np.float64]

NONE, MODERATE, MAJOR, INSUFFICIENT = "NONE", "MODERATE", "MAJOR", "INSUFFICIENT"
LEVELS = (NONE, MODERATE, MAJOR, INSUFFICIENT)
# Severity for `worst_level`: too little data ranks below any computed level.
_SEVERITY = {INSUFFICIENT: 0, NONE: 1, MODERATE: 2, MAJOR: 3}
_FROM_PSI_LEVEL = {
    DriftLevel.STABLE: NONE,
    DriftLevel.MODERATE: MODERATE,
    DriftLevel.SIGNIFICANT: MAJOR,
}
MAX_CATEGORIES = 20  # a reference of integers with at most this many values is categorical
_MAX_SKIPPED_NAMES = 1024  # distinct skipped names remembered (the count saturates here)
MAX_NAME_CHARS = 256  # longer tensor names are never monitored (skipped, counted, not kept)
_STAGE_VALUES = 512  # small adds are staged and binned together (see SeriesDrift.add)
_STAGE_CHUNKS = 128


# ---- settings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """`drift:` in the configuration: sizes and thresholds of drift monitoring; every size
    bounds memory.

    `enabled`, `sample_every` (one request in that many is offered: drift needs a sample,
    not every request) and `reference_file` (JSON ``{series name: [values]}``; empty: the
    baseline variant's first window) are read by the application. Validated at
    construction; a bad field raises ValueError with one line per problem, each naming its
    field.
    """

    enabled: bool = True
    sample_every: int = 10
    reference_size: int = 5000
    window_size: int = 5000
    bins: int = 10
    reservoir_size: int = 2000
    min_current: int = 500
    moderate: float = 0.1
    major: float = 0.25
    max_features: int = 32
    max_variants: int = 8
    seed: int = 0
    reference_file: str = ""

    def __post_init__(self) -> None:
        problems = [*self._integer_problems(), *self._level_problems()]
        if not isinstance(self.enabled, bool):
            problems.append(f"enabled: must be true or false, got {self.enabled!r}")
        if not isinstance(self.reference_file, str):
            problems.append(f"reference_file: must be a file path, got {self.reference_file!r}")
        if problems:
            raise ValueError("\n".join(problems))

    def _integer_problems(self) -> list[str]:
        problems = []
        for name, (least, most) in _INTEGER_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name}: must be an integer, got {value!r}")
            elif most is not None and not least <= value <= most:
                problems.append(f"{name}: must be {least}..{most}, got {value}")
            elif value < least:
                problems.append(f"{name}: must be >= {least}, got {value}")
        return problems

    def _level_problems(self) -> list[str]:
        problems = []
        for name in ("moderate", "major"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(f"{name}: must be a number, got {value!r}")
        if problems:
            return problems
        if not (math.isfinite(self.moderate) and self.moderate > 0.0):
            problems.append(f"moderate: must be a positive number, got {self.moderate!r}")
        elif not (math.isfinite(self.major) and self.major > self.moderate):
            problems.append(
                f"major: must exceed drift.moderate ({self.moderate}), got {self.major!r}"
            )
        return problems


_INTEGER_RANGES: dict[str, tuple[int, int | None]] = {
    "sample_every": (1, None),
    "reference_size": (1, None),
    "window_size": (1, None),
    "bins": (2, 100),
    "reservoir_size": (1, None),
    "min_current": (1, None),
    "max_features": (1, None),
    "max_variants": (1, None),
    "seed": (0, None),
}


# ---- feature extraction ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtractedFeatures:
    """Numeric features of one request or response.

    ``skipped`` names what was not extracted: non-numeric tensors (BYTES, strings,
    undecodable ones), tensors of rank > 2, tensors named with more than
    ``MAX_NAME_CHARS`` characters (their label is cut, see :func:`bounded_name`), and
    features beyond ``max_features`` (at most 1024 names per call).
    ``dropped_values`` counts NaN and infinite values removed from extracted features.
    """

    values: dict[str, FloatArray]
    skipped: tuple[str, ...]
    dropped_values: int


def extract_features(tensors: Mapping[str, np.ndarray], max_features: int) -> ExtractedFeatures:
    """Features of a batch of tensors (see :func:`features_from_tensors`) with what was
    skipped and how many non-finite values were dropped."""
    if isinstance(max_features, bool) or operator.index(max_features) < 0:
        raise ValueError(f"max_features must be a non-negative integer; got {max_features!r}")
    out: dict[str, FloatArray] = {}
    skipped: list[str] = []
    dropped = 0

    def skip(feature: str) -> None:
        if len(skipped) < _MAX_SKIPPED_NAMES:
            skipped.append(feature)

    for name, tensor in tensors.items():
        arr = _monitored(name, tensor)
        if arr is None:
            skip(bounded_name(name))
            continue
        values = arr.astype(np.float64, copy=False)
        finite = np.isfinite(values)
        all_finite = bool(finite.all())
        if values.ndim == 2 and values.shape[1] != 1:
            width = int(values.shape[1])
            room = min(max(max_features - len(out), 0), width)
            for j in range(room):
                column = values[:, j]
                if not all_finite:
                    keep = finite[:, j]
                    dropped += int(keep.size - np.count_nonzero(keep))
                    column = column[keep]
                out[f"{name}[{j}]"] = column
            for j in range(room, min(width, room + _MAX_SKIPPED_NAMES)):
                skip(f"{name}[{j}]")
            continue
        # a scalar, [N] or [N, 1]: the tensor is one feature
        if len(out) >= max_features:
            skip(name)
            continue
        column = values.reshape(-1)
        if not all_finite:
            keep = finite.reshape(-1)
            dropped += int(keep.size - np.count_nonzero(keep))
            column = column[keep]
        out[name] = column
    return ExtractedFeatures(out, tuple(skipped), dropped)


def _monitored(name: str, tensor: np.ndarray) -> np.ndarray | None:
    """The tensor as an array when it can be monitored: a name of at most
    `MAX_NAME_CHARS` characters, a numeric datatype, rank 2 at most; else None."""
    if len(name) > MAX_NAME_CHARS:
        return None
    arr = np.asarray(tensor)
    return arr if arr.dtype.kind in "biuf" and arr.ndim <= 2 else None


def bounded_name(name: str) -> str:
    """`name` when at most `MAX_NAME_CHARS` characters; else its first 64 characters and
    a hash of the whole (a label of bounded size)."""
    if len(name) <= MAX_NAME_CHARS:
        return name
    return f"{name[:64]}...#{hash(name) & 0xFFFFFFFFFFFFFFFF:016x}"


def features_from_tensors(
    tensors: Mapping[str, np.ndarray], max_features: int
) -> dict[str, FloatArray]:
    """Numeric features of a batch of tensors, as float64 arrays of finite values.

    A tensor of shape ``[N]`` (or ``[N, 1]``) is feature ``name`` with N values; shape
    ``[N, F]`` gives features ``name[j]`` for every column j; a scalar is one value.
    bool/int/uint/float tensors only; others and ranks above 2 are skipped, as are
    features beyond ``max_features`` (in tensor order, then column order). NaN and
    infinite values are dropped."""
    return extract_features(tensors, max_features).values


# ---- reservoir sampling ----------------------------------------------------------------


class Reservoir:
    """A uniform sample of at most ``capacity`` values of a stream (Algorithm R).

    Vectorised over a chunk, with exactly the sequential algorithm's semantics: the i-th
    value (0-based, ``i >= capacity``) draws ``j`` uniform in ``[0, i]`` and replaces slot
    ``j`` if ``j < capacity``; when several values of a chunk pick the same slot, the
    latest wins. After n values each one is in the sample with probability
    ``min(1, capacity / n)``.
    """

    __slots__ = ("_rng", "_values", "seen")

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1; got {capacity}")
        self._values = np.empty(capacity, dtype=np.float64)
        self._rng = rng
        self.seen = 0

    @property
    def capacity(self) -> int:
        return int(self._values.size)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def clear(self) -> None:
        self.seen = 0

    def sample(self) -> FloatArray:
        """A copy of the current sample (in slot order)."""
        return self._values[: len(self)].copy()

    def add(self, values: FloatArray) -> None:
        k, t, m = self.capacity, self.seen, int(values.size)
        fill = min(max(k - t, 0), m)
        if fill:
            self._values[t : t + fill] = values[:fill]
        if m > fill:
            rest = values[fill:]
            # value at 0-based stream position i draws j in [0, i]
            positions = np.arange(t + fill, t + m, dtype=np.int64)
            slots = self._rng.integers(0, positions + 1)
            accepted = np.flatnonzero(slots < k)
            if accepted.size:
                picked = slots[accepted]
                # the last value to pick a slot wins: first occurrence in reverse order
                unique, first_in_reverse = np.unique(picked[::-1], return_index=True)
                winners = accepted[::-1][first_in_reverse]
                self._values[unique] = rest[winners]
        self.seen = t + m


# ---- frozen reference ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class FrozenReference:
    """What a series keeps of its reference once frozen: bins, counts, a KS sample.

    Continuous: ``edges`` are the interior quantile edges and bin i is
    ``[e_i, e_{i+1})`` (open-ended first and last bins). Categorical: ``edges`` are the
    categories (sorted) and there is one bin per category plus a last "other" bin.
    """

    edges: tuple[float, ...]
    categorical: bool
    counts: npt.NDArray[np.int64]
    sample: FloatArray
    n: int
    source: str  # "baseline" | "configured"

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1

    def bin_index(self, values: FloatArray) -> npt.NDArray[np.intp]:
        edges = np.asarray(self.edges, dtype=np.float64)
        if not self.categorical:
            return np.searchsorted(edges, values, side="right")
        idx = np.minimum(np.searchsorted(edges, values, side="left"), edges.size - 1)
        return np.where(edges[idx] == values, idx, edges.size)

    def histogram(self, values: FloatArray) -> npt.NDArray[np.int64]:
        return np.bincount(self.bin_index(values), minlength=self.n_bins).astype(np.int64)


def _is_discrete(values: FloatArray) -> bool:
    if not np.array_equal(values, np.round(values)):
        return False
    return int(np.unique(values).size) <= MAX_CATEGORIES


def freeze_reference(
    values: npt.ArrayLike,
    *,
    bins: int,
    reservoir_size: int,
    rng: np.random.Generator,
    source: str = "baseline",
) -> FrozenReference:
    """Freeze reference values: quantile edges (or categories when every value is an
    integer and there are at most MAX_CATEGORIES distinct ones), the reference counts and
    a uniform sample without replacement of at most ``reservoir_size`` values."""
    ref = np.asarray(values, dtype=np.float64).reshape(-1)
    if ref.size == 0:
        raise ValueError("a reference needs at least one value")
    if not np.all(np.isfinite(ref)):
        raise ValueError("a reference must contain only finite values")
    categorical = _is_discrete(ref)
    edges = tuple(float(v) for v in np.unique(ref)) if categorical else quantile_edges(ref, bins)
    proto = FrozenReference(edges, categorical, np.zeros(0, np.int64), ref[:0], 0, source)
    counts = proto.histogram(ref)
    if ref.size > reservoir_size:
        sample = ref[np.sort(rng.choice(ref.size, size=reservoir_size, replace=False))]
    else:
        sample = ref.copy()
    counts.setflags(write=False)
    sample.setflags(write=False)
    return FrozenReference(edges, categorical, counts, sample, int(ref.size), source)


# ---- one series ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """One series' drift, field for field the ``sidecar.v1.DriftFeature`` message, plus
    ``current_complete`` (whether the reported current window is a completed one).

    Shares are raw proportions (count / n, no epsilon); ``edges`` and shares are empty
    until the reference is frozen. ``psi``/``ks_*`` are NaN when they cannot be computed
    (no frozen reference or an empty current window); with level INSUFFICIENT they are
    informative only."""

    name: str
    kind: str
    variant: str
    reference_n: int
    current_n: int
    psi: float
    level: str
    ks_statistic: float
    ks_p_value: float
    edges: tuple[float, ...]
    reference_share: tuple[float, ...]
    current_share: tuple[float, ...]
    categorical: bool
    current_complete: bool

    @property
    def series(self) -> str:
        """A unique label: ``input:<feature>`` or ``prediction:<variant>:<feature>``."""
        return series_label(self.kind, self.name, self.variant)


def series_label(kind: str, name: str, variant: str) -> str:
    return f"input:{name}" if kind == "input" else f"prediction:{variant}:{name}"


@dataclass(slots=True)
class _Window:
    counts: npt.NDArray[np.int64]
    n: int
    sample: FloatArray


class SeriesDrift:
    """One feature's (or one variant's prediction) series: reference, then windows.

    Phases: *baseline* (collecting its own reference: the first ``reference_size``
    values, kept in full), *waiting* (a prediction series of a non-reference variant,
    until the reference variant's reference is frozen: the latest ``window_size`` values
    are kept raw and replayed into the first window), then *monitoring* (tumbling windows
    of ``window_size`` values: a histogram over the frozen bins and a reservoir).
    """

    __slots__ = (
        "_baseline",
        "_baseline_n",
        "_completed",
        "_cur_counts",
        "_cur_n",
        "_cur_res",
        "_rng",
        "_staged",
        "_staged_n",
        "_waiting",
        "_waiting_n",
        "_waiting_pos",
        "dropped_values",
        "kind",
        "name",
        "reference",
        "settings",
        "variant",
    )

    def __init__(
        self,
        name: str,
        *,
        kind: Kind = "input",
        variant: str = "",
        settings: DriftSettings | None = None,
        rng: np.random.Generator | None = None,
        reference: FrozenReference | None = None,
        own_baseline: bool = True,
    ) -> None:
        if kind not in ("input", "prediction"):
            raise ValueError(f"kind must be 'input' or 'prediction'; got {kind!r}")
        self.name = name
        self.kind: Kind = kind
        self.variant = variant
        self.settings = settings or DriftSettings()
        self._rng = rng if rng is not None else np.random.default_rng(self.settings.seed)
        self.reference: FrozenReference | None = None
        self._baseline: FloatArray | None = None
        self._baseline_n = 0
        self._waiting: FloatArray | None = None
        self._waiting_n = 0
        self._waiting_pos = 0
        self._cur_counts = np.zeros(0, np.int64)
        self._cur_n = 0
        self._cur_res = Reservoir(self.settings.reservoir_size, self._rng)
        self._completed: _Window | None = None
        self._staged: list[FloatArray] = []
        self._staged_n = 0
        self.dropped_values = 0
        if reference is not None:
            self.set_reference(reference)
        elif own_baseline:
            self._baseline = np.empty(self.settings.reference_size, dtype=np.float64)
        else:
            self._waiting = np.empty(self.settings.window_size, dtype=np.float64)

    # -- state ---------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        if self.reference is not None:
            return "monitoring"
        return "baseline" if self._baseline is not None else "waiting"

    @property
    def label(self) -> str:
        return series_label(self.kind, self.name, self.variant)

    # -- input ---------------------------------------------------------------------------

    def add(self, values: npt.ArrayLike, *, finite: bool = False) -> None:
        """Add values; NaN and infinities are dropped (counted in ``dropped_values``)
        unless the caller vouches that all are ``finite``. Vectorised; small arrays are
        staged (at most 512 values or 128 arrays) and binned together, which is invisible
        to every reader (they flush first)."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if not finite:
            keep = np.isfinite(arr)
            if not keep.all():
                self.dropped_values += int(arr.size - np.count_nonzero(keep))
                arr = arr[keep]
        if arr.size == 0:
            return
        if arr.size >= _STAGE_VALUES:
            self.flush()
            self._add(arr)
            return
        self._staged.append(arr.copy())  # may be a view of the caller's array
        self._staged_n += int(arr.size)
        if self._staged_n >= _STAGE_VALUES or len(self._staged) >= _STAGE_CHUNKS:
            self.flush()

    def flush(self) -> None:
        """Bin staged values now."""
        if self._staged:
            arr = self._staged[0] if len(self._staged) == 1 else np.concatenate(self._staged)
            self._staged.clear()
            self._staged_n = 0
            self._add(arr)

    def _add(self, arr: FloatArray) -> None:
        if self._baseline is not None:
            take = min(self._baseline.size - self._baseline_n, arr.size)
            self._baseline[self._baseline_n : self._baseline_n + take] = arr[:take]
            self._baseline_n += take
            if self._baseline_n == self._baseline.size:
                collected, self._baseline = self._baseline, None
                self._freeze(freeze_reference(
                    collected,
                    bins=self.settings.bins,
                    reservoir_size=self.settings.reservoir_size,
                    rng=self._rng,
                    source="baseline",
                ))  # fmt: skip
            arr = arr[take:]
            if arr.size == 0:
                return
        if self.reference is None:
            self._wait(arr)
            return
        self._window_add(arr)

    def _wait(self, arr: FloatArray) -> None:
        if self._waiting is None:
            self._waiting = np.empty(self.settings.window_size, dtype=np.float64)
        cap = self._waiting.size
        if arr.size >= cap:
            self._waiting[:] = arr[-cap:]
            self._waiting_pos = 0
        else:
            end = self._waiting_pos + arr.size
            if end <= cap:
                self._waiting[self._waiting_pos : end] = arr
            else:
                split = cap - self._waiting_pos
                self._waiting[self._waiting_pos :] = arr[:split]
                self._waiting[: end - cap] = arr[split:]
            self._waiting_pos = end % cap
        self._waiting_n = min(self._waiting_n + int(arr.size), cap)

    def _waiting_values(self) -> FloatArray:
        if self._waiting is None or self._waiting_n == 0:
            return np.zeros(0, np.float64)
        if self._waiting_n < self._waiting.size:
            return self._waiting[: self._waiting_n].copy()
        return np.concatenate(
            [self._waiting[self._waiting_pos :], self._waiting[: self._waiting_pos]]
        )

    def _window_add(self, arr: FloatArray) -> None:
        ref = self.reference
        assert ref is not None
        size = self.settings.window_size
        while arr.size:
            take = min(size - self._cur_n, arr.size)
            part = arr[:take]
            self._cur_counts += ref.histogram(part)
            self._cur_res.add(part)
            self._cur_n += take
            arr = arr[take:]
            if self._cur_n == size:
                self._completed = _Window(self._cur_counts, self._cur_n, self._cur_res.sample())
                self._cur_counts = np.zeros(ref.n_bins, np.int64)
                self._cur_n = 0
                self._cur_res.clear()

    # -- reference -----------------------------------------------------------------------

    def set_reference(self, reference: FrozenReference) -> None:
        """Use ``reference`` (configured, or the reference variant's): windows restart;
        values held raw (a baseline being collected, or waiting values) are replayed into
        the first window, oldest first."""
        self.flush()
        held: FloatArray = np.zeros(0, np.float64)
        if self._baseline is not None:
            held = self._baseline[: self._baseline_n].copy()
        elif self._waiting is not None:
            held = self._waiting_values()
        self._baseline = None
        self._waiting = None
        self._waiting_n = self._waiting_pos = 0
        self._freeze(reference)
        if held.size:
            self._window_add(held)

    def _freeze(self, reference: FrozenReference) -> None:
        self.reference = reference
        self._cur_counts = np.zeros(reference.n_bins, np.int64)
        self._cur_n = 0
        self._cur_res.clear()
        self._completed = None

    # -- output --------------------------------------------------------------------------

    def _current(self) -> tuple[_Window | None, bool]:
        """The reported window: the filling one if it holds >= min_current values, else
        the last completed one, else the filling one (insufficient)."""
        filling = (
            _Window(self._cur_counts, self._cur_n, np.zeros(0))
            if self.reference is not None
            else None
        )
        if filling is not None and self._cur_n >= self.settings.min_current:
            return filling, False
        if self._completed is not None:
            return self._completed, True
        return filling, False

    def current_histogram(self) -> tuple[npt.NDArray[np.int64], int, bool]:
        """Counts over the frozen bins, n and completeness of the reported window."""
        self.flush()
        window, complete = self._current()
        if window is None:
            return np.zeros(0, np.int64), 0, False
        return window.counts.copy(), window.n, complete

    def current_sample(self) -> FloatArray:
        """The KS sample (reservoir) of the reported window."""
        self.flush()
        window, complete = self._current()
        if window is None:
            return np.zeros(0, np.float64)
        return window.sample.copy() if complete else self._cur_res.sample()

    def reference_sample(self) -> FloatArray:
        self.flush()
        return np.zeros(0) if self.reference is None else self.reference.sample.copy()

    def _psi_level(self) -> tuple[float, str, _Window | None, bool]:
        window, complete = self._current()
        ref = self.reference
        if ref is None or window is None or window.n == 0:
            return math.nan, INSUFFICIENT, window, complete
        result = psi_from_histograms(
            ref.counts,
            window.counts,
            DEFAULT_EPSILON,
            self.settings.moderate,
            self.settings.major,
        )
        enough = complete or window.n >= self.settings.min_current
        level = _FROM_PSI_LEVEL[result.level] if enough else INSUFFICIENT
        return result.psi, level, window, complete

    def level(self) -> tuple[float, str]:
        """PSI and level of the reported window (no KS: cheap enough for every tick)."""
        self.flush()
        value, level, _, _ = self._psi_level()
        return value, level

    def result(self) -> FeatureDrift:
        self.flush()
        value, level, window, complete = self._psi_level()
        ref = self.reference
        reference_n = ref.n if ref is not None else self._baseline_n
        current_n = window.n if window is not None else self._waiting_n
        ks_stat = ks_p = math.nan
        edges: tuple[float, ...] = ()
        ref_share: tuple[float, ...] = ()
        cur_share: tuple[float, ...] = ()
        if ref is not None and window is not None and window.n > 0:
            sample = window.sample if complete else self._cur_res.sample()
            ks = ks_two_sample(ref.sample, sample)
            ks_stat, ks_p = ks.statistic, ks.p_value
            edges = ref.edges
            ref_share = tuple(float(c) / ref.n for c in ref.counts)
            cur_share = tuple(float(c) / window.n for c in window.counts)
        elif ref is not None:
            edges = ref.edges
            ref_share = tuple(float(c) / ref.n for c in ref.counts)
        return FeatureDrift(
            name=self.name,
            kind=self.kind,
            variant=self.variant,
            reference_n=reference_n,
            current_n=current_n,
            psi=value,
            level=level,
            ks_statistic=ks_stat,
            ks_p_value=ks_p,
            edges=edges,
            reference_share=ref_share,
            current_share=cur_share,
            categorical=ref.categorical if ref is not None else False,
            current_complete=complete,
        )


# ---- the tracker -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftResult:
    """Everything ``sidecar.v1.DriftReport`` needs from the core (the monitor adds the
    sampled/dropped counters). ``skipped_features`` counts distinct feature or tensor names
    not monitored (non-numeric, rank > 2, beyond max_features; saturates at 1024);
    ``skipped_variants`` distinct variants beyond max_variants (their predictions are not
    monitored); ``dropped_values`` NaN/infinite values removed."""

    features: tuple[FeatureDrift, ...]
    worst_level: str
    reference: str
    moderate: float
    major: float
    skipped_features: int
    dropped_values: int
    skipped_variants: int


class DriftTracker:
    """Input and prediction drift of the traffic, in memory bounded by the settings:
    at most ``max_features`` input series, ``max_features`` output features and
    ``max_variants`` variants, so at most ``max_features * (1 + max_variants)`` series,
    each holding O(reference_size + window_size + 3 * reservoir_size) floats at most."""

    def __init__(self, settings: DriftSettings | None = None) -> None:
        self.settings = settings or DriftSettings()
        self._rng = np.random.default_rng(self.settings.seed)
        self._inputs: dict[str, SeriesDrift] = {}
        self._predictions: dict[tuple[str, str], SeriesDrift] = {}
        self._outputs: set[str] = set()
        self._variants: set[str] = set()
        self._configured: dict[str, FrozenReference] = {}
        self._reference_variant: str | None = None
        # hashes of skipped names (at most _MAX_SKIPPED_NAMES): counted, never kept
        self._skipped_names: set[int] = set()
        self._skipped_variants: set[int] = set()
        self.dropped_values = 0
        self._levels: dict[str, str] = {}

    # -- configuration -------------------------------------------------------------------

    @property
    def reference_variant(self) -> str | None:
        return self._reference_variant

    def set_reference_variant(self, name: str | None) -> None:
        """The variant whose predictions are the reference for every variant's prediction
        series (the stable). Changing it restarts every prediction series whose reference
        is not configured: the new reference variant collects a new baseline."""
        if name == self._reference_variant:
            return
        self._reference_variant = name
        for key, series in list(self._predictions.items()):
            if series.reference is None or series.reference.source != "configured":
                del self._predictions[key]

    def set_configured_reference(self, values: Mapping[str, Sequence[float] | FloatArray]) -> None:
        """Configured references by series name: an input feature name (``"x[2]"``) and/or
        an output feature name (used for every variant's predictions). Existing series
        restart their windows on it. Raises ValueError naming a bad series."""
        if not isinstance(values, Mapping):
            raise ValueError(
                f"a configured reference maps series names to values; got {type(values).__name__}"
            )
        frozen: dict[str, FrozenReference] = {}
        for name, series_values in values.items():
            if not isinstance(name, str):
                raise ValueError(f"configured reference names must be strings; got {name!r}")
            try:
                frozen[name] = freeze_reference(
                    np.asarray(series_values, dtype=np.float64),
                    bins=self.settings.bins,
                    reservoir_size=self.settings.reservoir_size,
                    rng=self._rng,
                    source="configured",
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"configured reference {name!r}: {exc}") from None
        if len(self._configured.keys() | frozen.keys()) > 2 * self.settings.max_features:
            raise ValueError(
                f"at most {2 * self.settings.max_features} configured references "
                f"(2 * max_features); got {len(self._configured.keys() | frozen.keys())}"
            )
        self._configured.update(frozen)
        for name, ref in frozen.items():
            if name in self._inputs:
                self._inputs[name].set_reference(ref)
            for (_, output), series in self._predictions.items():
                if output == name:
                    series.set_reference(ref)

    # -- observation ---------------------------------------------------------------------

    def observe(
        self,
        variant: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """One request: inputs feed the input series (all variants), outputs the
        prediction series of ``variant``."""
        max_features = self.settings.max_features
        extracted = extract_features(inputs, max_features)
        self.dropped_values += extracted.dropped_values
        self._skip(extracted.skipped, self._skipped_names)
        for name, column in extracted.values.items():
            series = self._inputs.get(name)
            if series is None:
                if len(self._inputs) >= max_features:
                    self._skip((name,), self._skipped_names)
                    continue
                series = self._inputs[name] = self._new_series(name, "input", "")
            series.add(column, finite=True)  # extract_features dropped the rest

        if variant not in self._variants:
            if len(self._variants) >= self.settings.max_variants:
                self._skip((variant,), self._skipped_variants)
                return
            self._variants.add(variant)
        extracted = extract_features(outputs, max_features)
        self.dropped_values += extracted.dropped_values
        self._skip(extracted.skipped, self._skipped_names)
        for name, column in extracted.values.items():
            key = (variant, name)
            series = self._predictions.get(key)
            if series is None:
                if name not in self._outputs:
                    if len(self._outputs) >= max_features:
                        self._skip((name,), self._skipped_names)
                        continue
                    self._outputs.add(name)
                series = self._predictions[key] = self._new_series(name, "prediction", variant)
            if series.reference is None and self._reference_variant not in (None, variant):
                self._adopt_one(name, series, flush=False)
            series.add(column, finite=True)  # extract_features dropped the rest

    def _skip(self, names: Iterable[str], into: set[int]) -> None:
        """Count distinct skipped names: a hash of each is kept (a fixed size whatever the
        name's length), at most _MAX_SKIPPED_NAMES of them."""
        for name in names:
            if len(into) < _MAX_SKIPPED_NAMES:
                into.add(hash(name))

    def _new_series(self, name: str, kind: Kind, variant: str) -> SeriesDrift:
        configured = self._configured.get(name)
        own = kind == "input" or self._reference_variant in (None, variant)
        return SeriesDrift(
            name,
            kind=kind,
            variant=variant,
            settings=self.settings,
            rng=self._rng,
            reference=configured,
            own_baseline=own,
        )

    def _adopt(self) -> None:
        """Waiting prediction series take the reference variant's frozen reference."""
        ref_variant = self._reference_variant
        if ref_variant is None:
            return
        for (variant, name), series in self._predictions.items():
            if variant != ref_variant and series.phase == "waiting":
                self._adopt_one(name, series, flush=True)

    def _adopt_one(self, name: str, series: SeriesDrift, *, flush: bool) -> None:
        source = self._predictions.get((str(self._reference_variant), name))
        if source is None:
            return
        if flush:
            source.flush()
        if source.reference is not None:
            series.set_reference(source.reference)

    def _all_series(self) -> list[SeriesDrift]:
        self._adopt()
        ordered = sorted(self._predictions.items(), key=lambda item: item[0])
        return [*self._inputs.values(), *(series for _, series in ordered)]

    # -- results -------------------------------------------------------------------------

    def series(self, label: str) -> SeriesDrift | None:
        """A series by label (``input:<feature>`` / ``prediction:<variant>:<feature>``)."""
        for s in self._all_series():
            if s.label == label:
                return s
        return None

    def _reference_text(self) -> str:
        size = self.settings.reference_size
        if self._reference_variant is not None:
            whose = f"for every variant, those of the reference variant {self._reference_variant!r}"
        else:
            whose = "each variant's own"
        text = f"baseline: the first {size} values of each series (predictions: {whose})"
        if self._configured:
            text = f"configured: {', '.join(sorted(self._configured))}; other series: {text}"
        return text

    def report(self) -> DriftResult:
        features = tuple(series.result() for series in self._all_series())
        worst = max((f.level for f in features), key=_SEVERITY.__getitem__, default=INSUFFICIENT)
        return DriftResult(
            features=features,
            worst_level=worst,
            reference=self._reference_text(),
            moderate=self.settings.moderate,
            major=self.settings.major,
            skipped_features=len(self._skipped_names),
            dropped_values=self.dropped_values,
            skipped_variants=len(self._skipped_variants),
        )

    def level_changes(self) -> list[tuple[str, str, str]]:
        """(series label, old level, new level) for every series whose level changed since
        the last call (a new series starts at INSUFFICIENT; a series that disappears, after
        a change of reference variant, goes to INSUFFICIENT)."""
        now = {series.label: series.level()[1] for series in self._all_series()}
        changes = [
            (label, self._levels.get(label, INSUFFICIENT), level)
            for label, level in now.items()
            if level != self._levels.get(label, INSUFFICIENT)
        ]
        changes += [
            (label, old, INSUFFICIENT)
            for label, old in self._levels.items()
            if label not in now and old != INSUFFICIENT
        ]
        self._levels = {label: level for label, level in now.items() if level != INSUFFICIENT}
        return changes

    def max_psi(
        self, include: str = "all", *, variant: str | None = None
    ) -> tuple[float, str] | None:
        """The largest PSI over series with a level other than INSUFFICIENT, and the
        series' label; None when there is none. ``include``: "all", "input" or
        "prediction"; ``variant`` restricts prediction series to one variant."""
        if include not in ("all", "input", "prediction"):
            raise ValueError(f"include must be 'all', 'input' or 'prediction'; got {include!r}")
        best: tuple[float, str] | None = None
        for series in self._all_series():
            if include != "all" and series.kind != include:
                continue
            if variant is not None and series.kind == "prediction" and series.variant != variant:
                continue
            value, level = series.level()
            if level != INSUFFICIENT and (best is None or value > best[0]):
                best = (value, series.label)
        return best

    def series_count(self) -> int:
        return len(self._inputs) + len(self._predictions)

"""Bounded in-memory record of shadow traffic: counters, latency sketches, examples.

Pure: callers pass latencies (seconds, or any unit used consistently) and wall-clock
timestamps in. Memory is bounded whatever the traffic:

* counters are plain ints;
* errors are keyed by gRPC status code name, at most :data:`MAX_STATUS_NAMES` distinct
  names (anything beyond is counted under ``"OTHER"``);
* latencies and latency ratios go into DDSketches whose stores keep at most
  :data:`SKETCH_BIN_LIMIT` bins, collapsing the lowest ones: at 1% relative accuracy
  that covers ~17 orders of magnitude below the largest value recorded (ample for
  latencies); smaller values are merged into the lowest kept bin, so only quantiles
  that fall that far below the maximum lose accuracy;
* disagreement examples live in a ``deque(maxlen=keep_examples)`` and hold short
  renderings, never the arrays themselves;
* latency outliers (the compared pairs with the largest ``shadow / primary`` latency
  ratio) live in a min-heap of at most ``keep_outliers`` entries: a pair is only turned
  into an entry when its ratio beats the heap's smallest (O(log k) then, O(1) otherwise).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from ddsketch import LogCollapsingLowestDenseDDSketch

from sidecar.core.shadow.compare import Comparison, Outputs

__all__ = [
    "MAX_STATUS_NAMES",
    "SKETCH_BIN_LIMIT",
    "DisagreementExample",
    "LatencyOutlier",
    "ShadowRecorder",
    "ShadowSummary",
    "render_outputs",
]

SKETCH_BIN_LIMIT: Final = 2048
"""Bins per sketch store (DDSketch's default limit): 16 KiB of counts at most."""

MAX_STATUS_NAMES: Final = 32
"""Distinct error status names kept (gRPC has 17); more are counted under "OTHER"."""

_RENDER_LIMIT: Final = 200  # characters of an example's primary/shadow rendering
_TEXT_LIMIT: Final = 200  # characters of an example's ids and variant name
_DETAIL_LIMIT: Final = 500  # characters of an example's detail


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


# ------------------------------------------------------------------ rendering


def _render_scalar(value: Any, budget: int) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float | complex):
        return format(value, ".6g")
    if isinstance(value, bytes | str):
        # Slice first (an element may be huge); cut text is still informative.
        return _truncate(repr(value[: budget + 1]), max(budget, 1))
    return _truncate(str(value), max(budget, 1))


def _render_array(arr: np.ndarray[Any, Any], budget: int) -> str:
    """Nested-list rendering that stops once ``budget`` characters are spent, so the
    work is bounded by the budget, not by the array's size."""
    if arr.ndim == 0:
        return _render_scalar(arr[()], budget)
    parts: list[str] = []
    used = 2  # the brackets
    for i in range(arr.shape[0]):
        if used + 3 > budget:  # keep room for ", …"
            parts.append("…")
            break
        part = _render_array(arr[i, ...], budget - used - 3)  # [i, ...]: stays an array
        if parts and used + len(part) + 3 > budget:
            parts.append("…")
            break
        parts.append(part)
        used += len(part) + 2  # ", "
    return "[" + ", ".join(parts) + "]"


def render_outputs(outputs: Outputs, limit: int = 200) -> str:
    """Compact rendering such as ``"label=[0, 2, 1], scores=[[0.1, 0.9], …]"``,
    at most ``limit`` characters (cut with "…"). Never raises."""
    parts: list[str] = []
    used = 0
    try:
        for name, value in outputs.items():
            if parts and used + 3 > limit:
                parts.append("…")
                break
            prefix = f"{name}="
            try:
                arr = value if isinstance(value, np.ndarray) else np.asarray(value)
                rendered = _render_array(arr, limit - used - len(prefix) - 3)
            except Exception:
                rendered = f"<{type(value).__name__}>"
            part = prefix + rendered
            if parts and used + len(part) + 3 > limit:
                parts.append("…")
                break
            parts.append(part)
            used += len(part) + 2
    except Exception as exc:
        parts.append(f"<unrenderable: {type(exc).__name__}>")
    return _truncate(", ".join(parts), limit)


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class DisagreementExample:
    """One shadow answer that disagreed with the primary, in short."""

    request_id: str
    targeting_key: str
    primary_variant: str
    detail: str
    primary_output: str
    """:func:`render_outputs` of the primary answer (at most ~200 characters)."""
    shadow_output: str
    unix_time: float


@dataclass(frozen=True)
class LatencyOutlier:
    """One compared pair whose shadow call was slow relative to its primary call."""

    request_id: str
    targeting_key: str
    primary_seconds: float
    shadow_seconds: float
    ratio: float
    """``shadow_seconds / primary_seconds`` (finite; pairs with a zero primary latency
    have no ratio and are never outliers)."""
    unix_time: float


@dataclass(frozen=True)
class ShadowSummary:
    """A snapshot of a :class:`ShadowRecorder` since it was created or last reset."""

    shadow_variant: str
    comparator: str
    sampled: int
    """Requests chosen for mirroring."""
    sent: int
    """Shadow calls started."""
    dropped: int
    """Sampled copies not sent (e.g. the in-flight limit was reached)."""
    compared: int
    agreed: int
    agreement_rate: float | None
    """``agreed / compared``; None when nothing was compared."""
    errors_by_status: Mapping[str, int]
    """gRPC status code name -> shadow calls that ended with it (read-only)."""
    latency_count: int
    """Compared pairs whose latencies were recorded (both finite and >= 0)."""
    primary_p50: float | None
    primary_p95: float | None
    shadow_p50: float | None
    shadow_p95: float | None
    ratio_p50: float | None
    """Quantiles of the per-pair ``shadow / primary`` latency ratio (pairs with a
    zero primary latency are left out of the ratio)."""
    ratio_p95: float | None
    examples: tuple[DisagreementExample, ...]
    """The latest disagreements, newest last."""
    in_flight: int
    """Shadow calls started and not yet finished (a gauge: not cleared by reset)."""
    latency_outliers: tuple[LatencyOutlier, ...] = ()
    """The compared pairs with the largest ``shadow / primary`` latency ratio, at most
    ``keep_outliers`` of them, largest ratio first (equal ratios: earliest recorded
    first; a later pair replaces a kept one only with a strictly larger ratio)."""

    @property
    def errors(self) -> int:
        """Shadow calls that ended with an error (the sum of :attr:`errors_by_status`)."""
        return sum(self.errors_by_status.values())


def _new_sketch(relative_accuracy: float) -> LogCollapsingLowestDenseDDSketch:
    return LogCollapsingLowestDenseDDSketch(
        relative_accuracy=relative_accuracy, bin_limit=SKETCH_BIN_LIMIT
    )


def _quantile(sketch: LogCollapsingLowestDenseDDSketch, q: float) -> float | None:
    value = sketch.get_quantile_value(q)
    return None if value is None else float(value)


class ShadowRecorder:
    """Counts and samples what happened to one shadow variant's mirrored calls.

    Memory stays bounded whatever the traffic (see the module docstring).

    Not thread-safe, by design: the sidecar calls it from its single asyncio event
    loop thread only, and no method awaits, so no lock is needed. Calling it from
    other threads needs external locking.

    Lifecycle of one mirrored request: :meth:`sampled`, then either :meth:`dropped`
    or :meth:`started` followed by exactly one of :meth:`finished_error` or
    :meth:`finished_compared`.
    """

    def __init__(
        self,
        shadow_variant: str,
        comparator_name: str,
        keep_examples: int = 20,
        relative_accuracy: float = 0.01,
        keep_outliers: int = 10,
    ) -> None:
        for name, value in (("keep_examples", keep_examples), ("keep_outliers", keep_outliers)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not (isinstance(relative_accuracy, int | float) and 0 < relative_accuracy < 1):
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        self._shadow_variant = shadow_variant
        self._comparator = comparator_name
        self._keep_examples = keep_examples
        self._keep_outliers = keep_outliers
        self._relative_accuracy = float(relative_accuracy)
        self._in_flight = 0
        self._clear()

    def _clear(self) -> None:
        self._sampled = 0
        self._sent = 0
        self._dropped = 0
        self._compared = 0
        self._agreed = 0
        self._errors: dict[str, int] = {}
        self._latency_count = 0
        self._primary = _new_sketch(self._relative_accuracy)
        self._shadow = _new_sketch(self._relative_accuracy)
        self._ratio = _new_sketch(self._relative_accuracy)
        self._examples: deque[DisagreementExample] = deque(maxlen=self._keep_examples)
        # (ratio, sequence number, outlier): a min-heap on the ratio; the sequence number
        # breaks ties so that outliers themselves are never compared.
        self._outliers: list[tuple[float, int, LatencyOutlier]] = []
        self._outlier_seq = 0

    # -- events -------------------------------------------------------------------

    def sampled(self) -> None:
        """A request was chosen for mirroring."""
        self._sampled += 1

    def dropped(self) -> None:
        """A sampled copy was not sent (e.g. too many shadow calls in flight)."""
        self._dropped += 1

    def started(self) -> None:
        """A shadow call was sent."""
        self._sent += 1
        self._in_flight += 1

    def _finished(self) -> None:
        # Clamped so a caller's double-finish cannot drive the gauge negative.
        if self._in_flight > 0:
            self._in_flight -= 1

    def finished_error(self, status_name: str) -> None:
        """A shadow call ended without an answer to compare (gRPC status code name,
        e.g. ``"DEADLINE_EXCEEDED"``)."""
        self._finished()
        key = str(status_name)
        errors = self._errors
        if key not in errors and len(errors) >= MAX_STATUS_NAMES:
            key = "OTHER"
        errors[key] = errors.get(key, 0) + 1

    def finished_compared(
        self,
        comparison: Comparison,
        primary_latency: float,
        shadow_latency: float,
        *,
        request_id: str,
        targeting_key: str,
        primary_variant: str,
        primary: Outputs,
        shadow: Outputs,
        unix_time: float,
    ) -> None:
        """A shadow call answered and its answer was compared with the primary's.

        Latencies that are negative or not finite are not recorded (the comparison
        still counts). Outputs are only rendered, and only on disagreement.
        """
        self._finished()
        self._compared += 1
        if comparison.agreed:
            self._agreed += 1
        if (
            primary_latency >= 0.0
            and shadow_latency >= 0.0
            and math.isfinite(primary_latency)
            and math.isfinite(shadow_latency)
        ):
            self._latency_count += 1
            self._primary.add(primary_latency)
            self._shadow.add(shadow_latency)
            if primary_latency > 0.0:
                ratio = shadow_latency / primary_latency
                if math.isfinite(ratio):
                    self._ratio.add(ratio)
                    heap = self._outliers
                    # O(1) unless the pair is slower than the kept outliers.
                    if len(heap) < self._keep_outliers or (heap and ratio > heap[0][0]):
                        self._keep_outlier(
                            ratio,
                            primary_latency,
                            shadow_latency,
                            request_id,
                            targeting_key,
                            unix_time,
                        )
        if not comparison.agreed and self._keep_examples:
            self._examples.append(
                DisagreementExample(
                    request_id=_truncate(str(request_id), _TEXT_LIMIT),
                    targeting_key=_truncate(str(targeting_key), _TEXT_LIMIT),
                    primary_variant=_truncate(str(primary_variant), _TEXT_LIMIT),
                    detail=_truncate(str(comparison.detail), _DETAIL_LIMIT),
                    primary_output=render_outputs(primary, _RENDER_LIMIT),
                    shadow_output=render_outputs(shadow, _RENDER_LIMIT),
                    unix_time=float(unix_time),
                )
            )

    def _keep_outlier(
        self,
        ratio: float,
        primary_latency: float,
        shadow_latency: float,
        request_id: str,
        targeting_key: str,
        unix_time: float,
    ) -> None:
        """Add a pair to the outlier heap, replacing the smallest ratio when full."""
        heap = self._outliers
        entry = (
            ratio,
            self._outlier_seq,
            LatencyOutlier(
                request_id=_truncate(str(request_id), _TEXT_LIMIT),
                targeting_key=_truncate(str(targeting_key), _TEXT_LIMIT),
                primary_seconds=float(primary_latency),
                shadow_seconds=float(shadow_latency),
                ratio=ratio,
                unix_time=float(unix_time),
            ),
        )
        self._outlier_seq += 1
        if len(heap) >= self._keep_outliers:
            heapq.heapreplace(heap, entry)
        else:
            heapq.heappush(heap, entry)

    # -- reading --------------------------------------------------------------------

    def summary(self) -> ShadowSummary:
        """A snapshot; later events do not change it."""
        compared = self._compared
        return ShadowSummary(
            shadow_variant=self._shadow_variant,
            comparator=self._comparator,
            sampled=self._sampled,
            sent=self._sent,
            dropped=self._dropped,
            compared=compared,
            agreed=self._agreed,
            agreement_rate=self._agreed / compared if compared else None,
            errors_by_status=MappingProxyType(dict(sorted(self._errors.items()))),
            latency_count=self._latency_count,
            primary_p50=_quantile(self._primary, 0.5),
            primary_p95=_quantile(self._primary, 0.95),
            shadow_p50=_quantile(self._shadow, 0.5),
            shadow_p95=_quantile(self._shadow, 0.95),
            ratio_p50=_quantile(self._ratio, 0.5),
            ratio_p95=_quantile(self._ratio, 0.95),
            examples=tuple(self._examples),
            in_flight=self._in_flight,
            latency_outliers=tuple(
                outlier for _, _, outlier in sorted(self._outliers, key=lambda e: (-e[0], e[1]))
            ),
        )

    def reset(self) -> None:
        """Start a new window: clear counters, sketches, examples and latency outliers.
        ``in_flight`` is kept, since those calls are still running and will finish after
        the reset."""
        self._clear()

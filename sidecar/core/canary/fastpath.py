"""The fast path for a hard canary failure: a bounded count of the canary's and the
stable's recent outcomes that says at once when the canary is broken.

The statistical judge checks every `analysis.interval` (60 s by default); a canary whose
model server is dead fails every request until then. `HardFailureDetector` watches every
finished request instead and trips when the canary failed hard on at least
`failure_ratio` of its most recent counted requests, at least `min_requests` of them,
within the last `window` seconds, while the stable variant did not fail the same way over
that window. Everything subtler (error-rate ratios, latency, timeouts) stays the judge's.

"Most recent" is any run of the newest time slots (the newest one, the newest two, ...
up to the whole window) holding at least `min_requests`: a canary that served well for
the whole window and then died trips once its recent failures outnumber its recent
successes (about `min_requests / failure_ratio` requests after its death), not once its
failures outnumber the whole window's successes (half the window later). A canary that
fails rarely does not trip by chance: at a 10% hard-failure rate, 13 failures of 25
requests has probability about 1.5e-7.

What counts (`FastRollbackSettings.outcome`):

* a **hard failure**: a status in `hard_failures`, by default UNAVAILABLE and DATA_LOSS
  (`DEFAULT_HARD_FAILURES`): the variant's model server, or the way to it, is broken,
  whatever the caller sent. INTERNAL and UNKNOWN (`SERVER_FAILURES`) may be added where
  callers are trusted: model servers also answer malformed input with them (MLServer
  1.7: a tensor of the wrong width, NaN, BYTES for FP64 are all INTERNAL), so a caller
  that learns which keys the canary serves (`x-variant`) could steer a rollback with them;
* a **success**: OK;
* nothing else. Client errors (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...),
  cancellations, the caller's own deadline (DEADLINE_EXCEEDED), size limits
  (RESOURCE_EXHAUSTED) and the server failures not chosen are caused by callers or left
  to the judge: they neither count as failures nor dilute the ratio, so a hostile caller
  cannot steer a rollback either way with them. A hung canary (every call ends at the
  caller's deadline) is the judge's (its timeout rate).

Memory and time are bounded: per watched variant (the canary and the stable), a ring of
`SLOTS` time slots of `window / SLOTS` seconds, each holding two counters. `record` is
constant time; the read on a hard canary failure walks the ring once (`SLOTS` slots). Time
spans are therefore exact to one slot (`window / SLOTS`, 0.25 s by default).

Pure: callers pass `now` (seconds, e.g. the request's end on the wall clock); a time that
goes back by more than the window is ignored rather than counted into the wrong slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from sidecar.core.canary.window import OK
from sidecar.core.duration import Duration

__all__ = [
    "DEFAULT_HARD_FAILURES",
    "SERVER_FAILURES",
    "SLOTS",
    "FastRollbackSettings",
    "HardFailureDetector",
    "Trip",
]

SERVER_FAILURES: Final = ("UNAVAILABLE", "DATA_LOSS", "INTERNAL", "UNKNOWN")
"""The gRPC status names `hard_failures` may name: failures of the server side."""

DEFAULT_HARD_FAILURES: Final = ("UNAVAILABLE", "DATA_LOSS")
"""What counts as a hard failure by default: nothing a caller's input can cause."""

SLOTS: Final = 20
"""Time slots per window: the window's edge moves in steps of `window / SLOTS`."""

MAX_MIN_REQUESTS: Final = 1_000_000
MAX_WINDOW_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class FastRollbackSettings:
    """`analysis.fast_rollback` in the configuration: roll back at once when, within the
    last `window` seconds, the canary failed hard (a status of `hard_failures`) on at
    least `failure_ratio` of its latest counted requests, at least `min_requests` of them,
    and the stable variant did not fail the same way. `enabled: false` leaves every
    rollback to the statistical judge. Validated at construction; a bad field raises
    ValueError with one line per problem, each naming its field."""

    enabled: bool = True
    min_requests: int = 20
    failure_ratio: float = 0.5
    window: Duration = 5.0
    hard_failures: tuple[str, ...] = DEFAULT_HARD_FAILURES

    def __post_init__(self) -> None:
        problems = self._hard_failure_problems()
        if not isinstance(self.enabled, bool):
            problems.append(f"enabled: must be true or false, got {self.enabled!r}")
        n = self.min_requests
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_MIN_REQUESTS:
            problems.append(f"min_requests: must be an integer 1..{MAX_MIN_REQUESTS}, got {n!r}")
        if not _number_within(self.failure_ratio, 0.0, 1.0):
            problems.append(
                f"failure_ratio: must be a number in (0, 1], got {self.failure_ratio!r}"
            )
        if not _number_within(self.window, 0.0, MAX_WINDOW_S):
            problems.append(
                f"window: must be a duration in (0, {MAX_WINDOW_S:g}] seconds, got {self.window!r}"
            )
        if problems:
            raise ValueError("\n".join(problems))

    def _hard_failure_problems(self) -> list[str]:
        names = self.hard_failures
        if (
            not isinstance(names, tuple)
            or not names
            or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n in SERVER_FAILURES for n in names)
        ):
            return [
                f"hard_failures: must be distinct names among {', '.join(SERVER_FAILURES)} "
                f"(at least one), got {names!r}"
            ]
        return []

    def outcome(self, status: str) -> bool | None:
        """True for a hard failure, False for a success, None for a status that does not
        count (the caller's doing, or the judge's to weigh)."""
        if status == OK:
            return False
        if status in self.hard_failures:
            return True
        return None


def _number_within(value: object, low: float, high: float) -> bool:
    """A finite number (not a bool) in (low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and low < value <= high


@dataclass(frozen=True, slots=True)
class Tally:
    """Counted requests and hard failures of one variant over the window."""

    counted: int
    failed: int

    def failing(self, ratio: float) -> bool:
        return self.counted > 0 and self.failed >= ratio * self.counted


@dataclass(frozen=True, slots=True)
class Trip:
    """Why the fast path fired: the canary's tally over its most recent `span_s` seconds
    (the longest run of newest slots that fails) and the stable's over `window_s`."""

    canary: str
    stable: str
    span_s: float
    window_s: float
    canary_tally: Tally
    stable_tally: Tally

    @property
    def reason(self) -> str:
        """E.g. ``canary failed 23 of 25 requests in the last 1 s (stable: 0 of 31 in 5 s)``."""
        c, s = self.canary_tally, self.stable_tally
        return (
            f"{self.canary} failed {c.failed} of {c.counted} requests in the last "
            f"{self.span_s:g} s ({self.stable}: {s.failed} of {s.counted} in {self.window_s:g} s)"
        )


class _Ring:
    """Counted requests and hard failures per time slot; slots older than the window are
    reused (reset) when time reaches them again."""

    __slots__ = ("counted", "failed", "index")

    def __init__(self) -> None:
        self.index = [-1] * SLOTS  # the absolute slot number each position holds
        self.counted = [0] * SLOTS
        self.failed = [0] * SLOTS

    def add(self, slot: int, failed: bool) -> bool:
        """Count one request in absolute slot `slot`; False (not counted) when that slot
        has already been overwritten by a newer one (time went back past the window)."""
        pos = slot % SLOTS
        held = self.index[pos]
        if held != slot:
            if held > slot:
                return False
            self.index[pos], self.counted[pos], self.failed[pos] = slot, 0, 0
        self.counted[pos] += 1
        self.failed[pos] += failed
        return True

    def tally(self, newest: int) -> Tally:
        """The slots in (newest - SLOTS, newest]."""
        oldest = newest - SLOTS
        counted = failed = 0
        for pos in range(SLOTS):
            if oldest < self.index[pos] <= newest:
                counted += self.counted[pos]
                failed += self.failed[pos]
        return Tally(counted, failed)

    def failing_run(self, newest: int, least: int, ratio: float) -> tuple[Tally, int] | None:
        """The longest run of the newest slots (1 to SLOTS, ending at `newest`) holding at
        least `least` requests of which at least `ratio` failed, with its length in slots;
        None when no run does."""
        counted = failed = 0
        found: tuple[Tally, int] | None = None
        for k in range(SLOTS):
            slot = newest - k
            pos = slot % SLOTS
            if self.index[pos] != slot or not self.counted[pos]:
                continue  # an empty slot lengthens no run's evidence
            counted += self.counted[pos]
            failed += self.failed[pos]
            if counted >= least and failed >= ratio * counted:
                found = (Tally(counted, failed), k + 1)
        return found


class HardFailureDetector:
    """Counts the canary's and the stable's outcomes (`record`) and says when the canary is
    failing hard on its own (`record` returns a `Trip`). `watch` names the variants (a
    change of either starts the count afresh); `reset` forgets everything (after a
    rollback, so what was in flight then cannot trip it again)."""

    def __init__(self, settings: FastRollbackSettings) -> None:
        self.settings = settings
        self._slot_s = settings.window / SLOTS
        self._canary: str | None = None
        self._stable = ""
        self._rings = (_Ring(), _Ring())  # canary, stable

    @property
    def canary(self) -> str | None:
        return self._canary

    def watch(self, canary: str | None, stable: str) -> None:
        """The variants to judge; counting starts afresh when either changed."""
        if canary != self._canary or stable != self._stable:
            self._canary, self._stable = canary, stable
            self.reset()

    def reset(self) -> None:
        self._rings = (_Ring(), _Ring())

    def record(self, variant: str, now: float, status: str) -> Trip | None:
        """Count one finished request of `variant` ending at `now` with gRPC status name
        `status`; a `Trip` when it was a hard canary failure that makes the canary fail
        the window on its own. Constant time."""
        if not self.settings.enabled or self._canary is None:
            return None
        if variant == self._canary:
            ring = self._rings[0]
        elif variant == self._stable:
            ring = self._rings[1]
        else:
            return None
        failed = self.settings.outcome(status)
        if failed is None or not math.isfinite(now):
            return None
        slot = math.floor(now / self._slot_s)
        if not ring.add(slot, failed) or not failed or variant != self._canary:
            return None
        return self._judge(slot)

    def _judge(self, slot: int) -> Trip | None:
        s = self.settings
        found = self._rings[0].failing_run(slot, s.min_requests, s.failure_ratio)
        if found is None:
            return None
        stable = self._rings[1].tally(slot)
        if stable.failing(s.failure_ratio):  # not the canary's fault: the judge decides
            return None
        assert self._canary is not None
        canary, slots = found
        return Trip(self._canary, self._stable, slots * self._slot_s, s.window, canary, stable)

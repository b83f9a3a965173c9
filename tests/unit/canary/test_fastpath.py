"""The fast path's detector (`sidecar.core.canary.fastpath`), request by request on a fake
clock: when it trips, what it ignores, and how its window moves."""

from __future__ import annotations

import random

import pytest

from sidecar.core.canary.fastpath import (
    DEFAULT_HARD_FAILURES,
    FastRollbackSettings,
    HardFailureDetector,
    Trip,
)
from sidecar.testing.clock import FakeClock

CLIENT_ERRORS = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "RESOURCE_EXHAUSTED",
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "ABORTED",
    "UNIMPLEMENTED",
    "INTERNAL",  # model servers answer malformed input with these two (not by default)
    "UNKNOWN",
)


def detector(**settings: object) -> HardFailureDetector:
    d = HardFailureDetector(FastRollbackSettings(**settings))  # type: ignore[arg-type]
    d.watch("canary", "stable")
    return d


def feed(d: HardFailureDetector, clock: FakeClock, variant: str, status: str, n: int) -> list[Trip]:
    """`n` requests of `variant` ending now with `status`; the trips they caused."""
    trips = [d.record(variant, clock(), status) for _ in range(n)]
    return [t for t in trips if t is not None]


def test_trips_at_the_ratio_once_the_minimum_is_reached() -> None:
    """19 failures of 19 requests: not yet (minimum 20); the 20th trips, naming the
    counts and the window."""
    d, clock = detector(), FakeClock()
    assert feed(d, clock, "canary", "UNAVAILABLE", 19) == []
    trip = d.record("canary", clock(), "UNAVAILABLE")
    assert trip is not None
    assert (trip.canary_tally.failed, trip.canary_tally.counted) == (20, 20)
    assert (
        trip.reason == "canary failed 20 of 20 requests in the last 0.25 s (stable: 0 of 0 in 5 s)"
    )


def test_below_the_ratio_does_not_trip_and_at_it_does() -> None:
    """30 successes then 29 failures (49%): no trip; the 30th failure (50%) trips."""
    d, clock = detector(), FakeClock()
    assert feed(d, clock, "canary", "OK", 30) == []
    assert feed(d, clock, "canary", "UNAVAILABLE", 29) == []
    trips = feed(d, clock, "canary", "UNAVAILABLE", 1)
    assert len(trips) == 1 and trips[0].canary_tally.failed == 30
    assert trips[0].canary_tally.counted == 60


def test_a_stricter_configuration_is_followed() -> None:
    """min_requests 50, failure_ratio 0.9, window 2 s, UNKNOWN and DATA_LOSS hard: 45 of 50
    trips, 44 of 50 does not."""
    d = detector(
        min_requests=50, failure_ratio=0.9, window=2.0, hard_failures=("UNKNOWN", "DATA_LOSS")
    )
    clock = FakeClock()
    assert feed(d, clock, "canary", "OK", 6) == []
    assert feed(d, clock, "canary", "UNKNOWN", 44) == []  # 44 of 50
    d.reset()
    assert feed(d, clock, "canary", "OK", 5) == []
    trips = feed(d, clock, "canary", "DATA_LOSS", 45)  # 45 of 50
    assert [(t.canary_tally.failed, t.canary_tally.counted) for t in trips] == [(45, 50)]


def test_a_canary_that_dies_after_serving_well_trips_on_its_recent_requests() -> None:
    """50 successes a second for 5 s, then it dies: its recent failures outnumber its
    recent successes after about 20 failures, long before they would outnumber the
    window's 250 successes; the reason names the recent run it judged."""
    d, clock = detector(), FakeClock(start=1000.0)
    for _ in range(100):  # 5 s at 50 requests a second, 0.05 s apart
        assert d.record("canary", clock(), "OK") is None
        clock.advance(0.05)
    failures = 0
    trip = None
    while trip is None and failures < 250:
        trip = d.record("canary", clock(), "UNAVAILABLE")
        failures += 1
        clock.advance(0.02)
    assert trip is not None and failures <= 30, failures
    assert trip.canary_tally.failed >= trip.canary_tally.counted / 2
    assert trip.span_s < 5.0


def test_a_canary_failing_rarely_does_not_trip_by_chance() -> None:
    """200,000 canary requests at 200 a second with 10% hard failures at random (seeded):
    no trip (the judge is in charge of that)."""
    rng = random.Random(14)
    d, clock = detector(), FakeClock()
    for _ in range(200_000):
        status = "UNAVAILABLE" if rng.random() < 0.10 else "OK"
        assert d.record("canary", clock(), status) is None
        clock.advance(0.005)


def test_failures_older_than_the_window_are_forgotten() -> None:
    """15 failures, 6 s later 15 more: only 15 are in the 5 s window (no trip); 5 more
    within it trip with 20."""
    d, clock = detector(), FakeClock()
    assert feed(d, clock, "canary", "UNAVAILABLE", 15) == []
    clock.advance(6.0)
    assert feed(d, clock, "canary", "UNAVAILABLE", 15) == []
    clock.advance(1.0)
    trips = feed(d, clock, "canary", "UNAVAILABLE", 5)
    assert [t.canary_tally.counted for t in trips] == [20]


def test_failures_spread_over_the_window_still_count() -> None:
    """Four failures a second over 5 s (slots of 0.25 s): all 20 inside the window trip."""
    d, clock = detector(), FakeClock(start=1000.0)
    trips: list[Trip] = []
    for _ in range(10):
        trips += feed(d, clock, "canary", "UNAVAILABLE", 2)
        clock.advance(0.49)
    assert len(trips) == 1 and trips[0].canary_tally.counted == 20


def test_client_errors_neither_trip_nor_dilute() -> None:
    """Every caller-caused status, 1,000 of each, trips nothing; they are not counted, so
    20 successes and 20 hard failures among them still trip (20 of 40)."""
    d, clock = detector(), FakeClock()
    for status in CLIENT_ERRORS:
        assert d.settings.outcome(status) is None
        assert feed(d, clock, "canary", status, 1000) == []
    assert feed(d, clock, "canary", "OK", 20) == []
    trips = feed(d, clock, "canary", "UNAVAILABLE", 20)
    assert [(t.canary_tally.failed, t.canary_tally.counted) for t in trips] == [(20, 40)]
    assert DEFAULT_HARD_FAILURES == ("UNAVAILABLE", "DATA_LOSS")


def test_internal_and_unknown_count_only_when_chosen() -> None:
    """INTERNAL (what MLServer answers a malformed tensor with) trips nothing by default;
    with `hard_failures` naming it (trusted callers), 20 of 20 trip."""
    d, clock = detector(), FakeClock()
    assert feed(d, clock, "canary", "INTERNAL", 100) == []
    assert feed(d, clock, "canary", "UNKNOWN", 100) == []
    trusting, clock = detector(hard_failures=("UNAVAILABLE", "INTERNAL")), FakeClock()
    assert len(feed(trusting, clock, "canary", "INTERNAL", 20)) == 1


def test_stable_failing_the_same_way_blocks_the_trip() -> None:
    """Stable fails 30 of 40 too: not the canary's fault, no trip; once the stable's
    failures have left the window (and it serves well), the canary's failures trip."""
    d, clock = detector(), FakeClock()
    feed(d, clock, "stable", "OK", 10)
    feed(d, clock, "stable", "UNAVAILABLE", 30)
    assert feed(d, clock, "canary", "UNAVAILABLE", 100) == []
    clock.advance(5.5)
    feed(d, clock, "stable", "OK", 30)
    trips = feed(d, clock, "canary", "UNAVAILABLE", 20)
    assert len(trips) == 1
    assert trips[0].reason == (
        "canary failed 20 of 20 requests in the last 0.25 s (stable: 0 of 30 in 5 s)"
    )


def test_stable_failing_a_little_does_not_block() -> None:
    """Stable fails 5 of 50 (10%, below the ratio): the canary's 20 of 20 trip."""
    d, clock = detector(), FakeClock()
    feed(d, clock, "stable", "OK", 45)
    feed(d, clock, "stable", "UNAVAILABLE", 5)
    trips = feed(d, clock, "canary", "DATA_LOSS", 20)
    assert [t.stable_tally.failed for t in trips] == [5]


def test_other_variants_and_stable_alone_never_trip() -> None:
    """Only a hard canary failure can trip: a failing shadow or stable does not."""
    d, clock = detector(), FakeClock()
    assert feed(d, clock, "shadow", "UNAVAILABLE", 100) == []
    assert feed(d, clock, "stable", "UNAVAILABLE", 100) == []


def test_reset_and_a_new_canary_start_afresh() -> None:
    """`reset` (after a rollback) forgets the window; a changed canary or stable too;
    watching the same variants again keeps it."""
    d, clock = detector(), FakeClock()
    feed(d, clock, "canary", "UNAVAILABLE", 19)
    d.reset()
    assert feed(d, clock, "canary", "UNAVAILABLE", 19) == []
    d.watch("canary", "stable")  # unchanged: the 19 stay
    assert len(feed(d, clock, "canary", "UNAVAILABLE", 1)) == 1
    d.watch("canary-2", "stable")
    assert d.canary == "canary-2"
    assert feed(d, clock, "canary-2", "UNAVAILABLE", 19) == []
    d.watch(None, "stable")  # no canary: nothing is judged
    assert feed(d, clock, "canary-2", "UNAVAILABLE", 100) == []


def test_disabled_never_trips() -> None:
    d, clock = detector(enabled=False), FakeClock()
    assert feed(d, clock, "canary", "UNAVAILABLE", 1000) == []


def test_time_going_back_past_the_window_is_not_counted() -> None:
    """A request ending 60 s before the newest one (a wall clock stepped back) is ignored
    rather than counted into a newer slot; non-finite times are ignored."""
    d, clock = detector(), FakeClock()
    clock.advance(60.0)
    feed(d, clock, "canary", "OK", 20)  # fills the slot that the old time would reuse
    for _ in range(40):
        assert d.record("canary", clock() - 60.0, "UNAVAILABLE") is None
        assert d.record("canary", float("nan"), "UNAVAILABLE") is None
    assert feed(d, clock, "canary", "UNAVAILABLE", 19) == []  # 19 of 39
    assert len(feed(d, clock, "canary", "UNAVAILABLE", 1)) == 1  # 20 of 40


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"min_requests": 0}, "min_requests: must be an integer 1..1000000"),
        ({"min_requests": True}, "min_requests: must be an integer"),
        ({"failure_ratio": 0.0}, "failure_ratio: must be a number in (0, 1]"),
        ({"failure_ratio": 1.5}, "failure_ratio: must be a number in (0, 1]"),
        ({"failure_ratio": float("nan")}, "failure_ratio: must be a number in (0, 1]"),
        ({"window": 0.0}, "window: must be a duration in (0, 300] seconds"),
        ({"window": 301.0}, "window: must be a duration in (0, 300] seconds"),
        ({"enabled": "yes"}, "enabled: must be true or false"),
        ({"hard_failures": ()}, "hard_failures: must be distinct names among UNAVAILABLE"),
        ({"hard_failures": ("INVALID_ARGUMENT",)}, "hard_failures: must be distinct names"),
        ({"hard_failures": ("UNAVAILABLE", "UNAVAILABLE")}, "hard_failures: must be distinct"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(
    settings: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        FastRollbackSettings(**settings)  # type: ignore[arg-type]

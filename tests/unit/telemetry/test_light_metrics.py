"""The request path's light Prometheus instruments expose what prometheus_client's own
Counter and Histogram expose for the same updates (names, labels, buckets, counts, sums)."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram

from sidecar.adapters.telemetry.metrics import LATENCY_BUCKETS, LightCounter, LightHistogram


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_light_instruments_expose_what_prometheus_client_does() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ["model", "variant", "status"]
    light_c = LightCounter("sidecar_requests", "Requests", labels, ours)
    light_h = LightHistogram(
        "sidecar_request_duration_seconds", "Latency", labels, buckets=LATENCY_BUCKETS,
        registry=ours,
    )  # fmt: skip
    ref_c = Counter("sidecar_requests", "Requests", labels, registry=theirs)
    ref_h = Histogram(
        "sidecar_request_duration_seconds", "Latency", labels, buckets=LATENCY_BUCKETS,
        registry=theirs,
    )  # fmt: skip
    rng = random.Random(12)
    values = [rng.choice(LATENCY_BUCKETS) for _ in range(200)]  # exactly on a bound: le
    values += [rng.expovariate(50.0) for _ in range(2000)] + [0.0, 99.0]
    for value in values:
        key = ("m", rng.choice(("stable", "canary")), rng.choice(("OK", "UNAVAILABLE")))
        light_c.labels(*key).inc()
        ref_c.labels(*key).inc()
        light_h.labels(*key).observe(value)
        ref_h.labels(*key).observe(value)
    got, want = _samples(ours), _samples(theirs)
    assert set(got) == set(want)
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key

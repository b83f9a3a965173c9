"""SidecarMetrics gets its scrape-time readings once, through `bind`."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from sidecar.adapters.telemetry.metrics import Readings, SidecarMetrics


def test_bound_readings_are_scraped_and_bind_happens_once() -> None:
    """Request metrics work before `bind`; after it the readings appear in the scrape;
    a second `bind` is refused (readings are never swapped or patched)."""
    metrics = SidecarMetrics()
    metrics.record("stable", 0.0, 0.01, "OK")
    before = generate_latest(metrics.registry).decode()
    assert (
        'sidecar_requests_total{model="",model_version="",status="OK",variant="stable"} 1.0'
        in before
    )
    assert "sidecar_drift_series" not in before
    metrics.bind(Readings(drift=lambda: {"input.x": "MAJOR"}))
    after = generate_latest(metrics.registry).decode()
    assert 'sidecar_drift_series{level="MAJOR",model="",series="input.x"} 1.0' in after
    with pytest.raises(RuntimeError):
        metrics.bind(Readings())

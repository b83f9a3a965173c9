"""Several routed models: the span processor hands each model's spans only to that
model's sinks, and every request series carries the routed `model`."""

from __future__ import annotations

from prometheus_client import generate_latest

from sidecar.adapters.telemetry import spans
from sidecar.adapters.telemetry.metrics import Readings, SidecarMetrics
from sidecar.adapters.telemetry.processor import VariantStatsProcessor
from sidecar.core.canary.window import RollingWindows


def span(model: str | None, variant: str, status: int = 0) -> dict[str, object]:
    attributes: dict[str, object] = {spans.FLAG_VARIANT: variant, spans.RPC_STATUS: status}
    if model is not None:
        attributes[spans.ROUTED_MODEL] = model
    return attributes


def test_a_span_of_one_model_never_reaches_another_models_window() -> None:
    """Both models have a `canary`: A's failing canary requests land in A's window only;
    a span naming no routed model (or an unknown one) reaches neither."""
    windows = {m: RollingWindows(1.0, 60.0) for m in ("a", "b")}
    processor = VariantStatsProcessor([], models={m: [w.record] for m, w in windows.items()})
    for i in range(30):
        processor.record_span(span("a", "canary", 14), i * 10**8, i * 10**8 + 10**6)
    for i in range(20):
        processor.record_span(span("b", "canary"), i * 10**8, i * 10**8 + 10**6)
    processor.record_span(span(None, "canary"), 0, 10**6)
    processor.record_span(span("c", "canary"), 0, 10**6)
    a = windows["a"].window("canary", 100.0, 100.0)
    b = windows["b"].window("canary", 100.0, 100.0)
    assert (a.requests, a.errors) == (30, 30)
    assert (b.requests, b.errors) == (20, 0)
    assert processor.failures == 0


def test_request_series_and_scrape_time_series_carry_the_model() -> None:
    """Each routed model's counters start at 0 with `model`; scrape-time gauges of
    several models share one family, told apart by `model`."""
    metrics = SidecarMetrics(versions={"stable": "v1", "canary": "v2"}, model="a")
    b = metrics.add_model("b", {"stable": "b1", "canary": "b2"})
    b.record("canary", 0.0, 0.01, "UNAVAILABLE")
    metrics.record("stable", 0.0, 0.01, "OK")
    metrics.bind(
        {
            "a": Readings(state=lambda: {"revision": 3, "kill_switch": False, "weights": {}}),
            "b": Readings(state=lambda: {"revision": 7, "kill_switch": True, "weights": {}}),
        }
    )
    text = generate_latest(metrics.registry).decode()
    assert (
        'sidecar_requests_total{model="a",model_version="v1",status="OK",variant="stable"} 1.0'
        in text
    )
    assert (
        'sidecar_requests_total{model="a",model_version="v2",status="OK",variant="canary"} 0.0'
        in text
    )
    assert (
        'sidecar_requests_total{model="b",model_version="b2",status="UNAVAILABLE",variant="canary"} 1.0'
        in text
    )
    assert 'sidecar_request_errors_total{model="a",model_version="v2",variant="canary"} 0.0' in text
    assert 'sidecar_state_revision{model="a"} 3.0' in text
    assert 'sidecar_state_revision{model="b"} 7.0' in text
    assert 'sidecar_kill_switch{model="b"} 1.0' in text
    assert text.count("# TYPE sidecar_state_revision gauge") == 1

"""Alerts of several routed models share one sink; each says which model it is about."""

from __future__ import annotations

from structlog.testing import capture_logs

from sidecar.adapters.alerts import Alerts, ModelAlerts


def test_each_models_alerts_carry_its_name() -> None:
    """`ModelAlerts` adds `model` to every alert's fields (logged and posted)."""
    shared = Alerts()
    with capture_logs() as logs:
        ModelAlerts(shared, "ranker").alert("rollout.finished", {"phase": "ROLLED_BACK"})
        ModelAlerts(shared, "classifier").alert("rollout.finished", {"phase": "SUCCEEDED"})
    alerts = [(e["model"], e["phase"]) for e in logs if e.get("alert") == "rollout.finished"]
    assert alerts == [("ranker", "ROLLED_BACK"), ("classifier", "SUCCEEDED")]

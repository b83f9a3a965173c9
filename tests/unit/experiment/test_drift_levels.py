"""DriftLevels: what the drift monitor's level changes become (alerts, warnings, metrics)."""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.app.experiment import DriftLevels


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    def alert(self, event: str, fields: Mapping[str, object]) -> None:
        self.sent.append((event, dict(fields)))


def test_drift_levels_alert_and_warn_while_drifted() -> None:
    """A series reaching MODERATE or MAJOR is alerted once and warned about until it
    returns to NONE."""
    sink = Sink()
    levels = DriftLevels(sink)
    levels.on_change("input.x", "NONE", "MAJOR")
    assert levels.current() == {"input.x": "MAJOR"}
    assert levels.warnings() == ["drift MAJOR: input.x (was NONE)"]
    assert sink.sent == [
        ("drift.detected", {"series": "input.x", "drift_level": "MAJOR", "was": "NONE"})
    ]
    levels.on_change("input.x", "MAJOR", "NONE")
    assert levels.current() == {}
    assert levels.warnings() == []
    assert len(sink.sent) == 1

"""Experiment core: outcome attribution and counters. Pure."""

from sidecar.core.experiment.outcomes import (
    Attribution,
    MetricCounters,
    OutcomeError,
    OutcomeLedger,
    UnknownRequest,
    WrongValueType,
)

__all__ = [
    "Attribution",
    "MetricCounters",
    "OutcomeError",
    "OutcomeLedger",
    "UnknownRequest",
    "WrongValueType",
]

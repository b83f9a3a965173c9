"""Shadow comparison core: compare a shadow variant's outputs with the primary's, keep a
bounded record of the results, and turn a record into a report with a recommendation.
Pure (no grpc, asyncio, clock or I/O)."""

from sidecar.core.shadow.compare import (
    BUILTIN_COMPARATORS,
    Comparator,
    Comparison,
    Outputs,
    auto,
    exact,
    exact_outputs,
    load_comparator,
    tolerance,
    top1,
)
from sidecar.core.shadow.record import (
    MAX_STATUS_NAMES,
    SKETCH_BIN_LIMIT,
    DisagreementExample,
    LatencyOutlier,
    ShadowRecorder,
    ShadowSummary,
    render_outputs,
)
from sidecar.core.shadow.report import (
    Estimate,
    NoiseAdjustment,
    Recommendation,
    ShadowAnalysis,
    ShadowThresholds,
    analyse_shadow,
)

__all__ = [
    "BUILTIN_COMPARATORS",
    "MAX_STATUS_NAMES",
    "SKETCH_BIN_LIMIT",
    "Comparator",
    "Comparison",
    "DisagreementExample",
    "Estimate",
    "LatencyOutlier",
    "NoiseAdjustment",
    "Outputs",
    "Recommendation",
    "ShadowAnalysis",
    "ShadowRecorder",
    "ShadowSummary",
    "ShadowThresholds",
    "analyse_shadow",
    "auto",
    "exact",
    "exact_outputs",
    "load_comparator",
    "render_outputs",
    "tolerance",
    "top1",
]

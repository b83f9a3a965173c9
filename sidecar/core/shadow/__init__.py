"""Shadow comparison core: compare a shadow variant's outputs with the primary's and
keep a bounded record of the results. Pure (no grpc, asyncio, clock or I/O)."""

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
    ShadowRecorder,
    ShadowSummary,
    render_outputs,
)

__all__ = [
    "BUILTIN_COMPARATORS",
    "MAX_STATUS_NAMES",
    "SKETCH_BIN_LIMIT",
    "Comparator",
    "Comparison",
    "DisagreementExample",
    "Outputs",
    "ShadowRecorder",
    "ShadowSummary",
    "auto",
    "exact",
    "exact_outputs",
    "load_comparator",
    "render_outputs",
    "tolerance",
    "top1",
]

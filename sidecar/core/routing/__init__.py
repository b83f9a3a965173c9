"""Routing core: flag model and validation, stable bucketing, evaluation. Pure."""

from sidecar.core.routing.bucketing import bucket, shadow_sampled
from sidecar.core.routing.evaluate import Resolution, RoutingContext, evaluate
from sidecar.core.routing.model import (
    BASIS_POINTS,
    ROUTING_FIELDS,
    Flag,
    FlagError,
    Overrides,
    Reason,
    RoutingState,
    RoutingView,
    SegmentRule,
)
from sidecar.core.routing.versions import (
    served_variants,
    variants_for_version,
)

__all__ = [
    "BASIS_POINTS",
    "ROUTING_FIELDS",
    "Flag",
    "FlagError",
    "Overrides",
    "Reason",
    "Resolution",
    "RoutingContext",
    "RoutingState",
    "RoutingView",
    "SegmentRule",
    "bucket",
    "evaluate",
    "served_variants",
    "shadow_sampled",
    "variants_for_version",
]

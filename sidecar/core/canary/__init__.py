"""Canary analysis: bounded window statistics, the judge, and the repeated-check layer.

Pure: standard library, numpy, scipy and ddsketch only; callers pass ``now``. See
``docs/canary.md``.
"""

from __future__ import annotations

from .analysis import AnalysisDecision, CanaryAnalysis, CanaryAnalysisConfig, Decision, check_alpha
from .judge import (
    METRICS,
    Classification,
    JudgeConfig,
    Judgement,
    Measurement,
    MetricResult,
    RankTest,
    Verdict,
    classify,
    classify_latency,
    classify_rate,
    conditional_binomial_p,
    judge,
    judge_measurement,
    mann_whitney_buckets,
    measure,
    score,
    verdict,
)
from .sequential import (
    DeploymentAnalysis,
    DeploymentDecision,
    IntervalCounts,
    RecordedBaseline,
    SequentialConfig,
    interval_counts,
    quantile_ratios,
)
from .window import (
    MAX_STATUS_NAMES,
    MAX_VARIANTS,
    OK,
    SKETCH_BIN_LIMIT,
    TIMEOUT,
    CumulativeWindows,
    LatencyBuckets,
    RollingWindows,
    VariantWindow,
)

__all__ = [
    "MAX_STATUS_NAMES",
    "MAX_VARIANTS",
    "METRICS",
    "OK",
    "SKETCH_BIN_LIMIT",
    "TIMEOUT",
    "AnalysisDecision",
    "CanaryAnalysis",
    "CanaryAnalysisConfig",
    "Classification",
    "CumulativeWindows",
    "Decision",
    "DeploymentAnalysis",
    "DeploymentDecision",
    "IntervalCounts",
    "JudgeConfig",
    "Judgement",
    "LatencyBuckets",
    "Measurement",
    "MetricResult",
    "RankTest",
    "RecordedBaseline",
    "RollingWindows",
    "SequentialConfig",
    "VariantWindow",
    "Verdict",
    "check_alpha",
    "classify",
    "classify_latency",
    "classify_rate",
    "conditional_binomial_p",
    "interval_counts",
    "judge",
    "judge_measurement",
    "mann_whitney_buckets",
    "measure",
    "quantile_ratios",
    "score",
    "verdict",
]

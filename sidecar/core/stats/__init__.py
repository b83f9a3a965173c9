"""Pure statistics core for canary and A/B analysis.

Standard library, numpy and scipy only (statsmodels is the tests' oracle); no I/O, no clock,
no global randomness.
Conventions are documented in ``docs/statistics.md``.
"""

from __future__ import annotations

from .drift import (
    DriftLevel,
    KsResult,
    PsiResult,
    bin_counts,
    classify_psi,
    ks_two_sample,
    psi,
    psi_from_histograms,
    quantile_edges,
)
from .intervals import Interval
from .multiple import AdjustedPValues, adjust_p_values, benjamini_hochberg, holm
from .power import SampleSize, cohens_h, power_per_arm, sample_size_per_arm
from .proportions import (
    ProportionComparison,
    ZTestResult,
    compare_proportions,
    difference_interval,
    ratio_interval,
    two_proportion_ztest,
    wilson_interval,
)
from .ranks import (
    MannWhitneyResult,
    SampleSummary,
    WelchResult,
    mann_whitney_u,
    welch_t_test,
    welch_t_test_from_stats,
)
from .sequential import (
    SequentialDecision,
    SequentialLook,
    SequentialPaths,
    SequentialPlan,
    SequentialState,
    Verdict,
    boundary_z,
    confidence_halfwidth,
    optimal_mixing_ratio,
    plan_sequential,
    sequential_paths,
    sequential_power_lower_bound,
    sequential_update,
    sequential_update_means,
    sequential_verdict,
    start_sequential,
)
from .srm import SrmResult, is_sample_ratio_mismatch, srm_test

__all__ = [
    "AdjustedPValues",
    "DriftLevel",
    "Interval",
    "KsResult",
    "MannWhitneyResult",
    "ProportionComparison",
    "PsiResult",
    "SampleSize",
    "SampleSummary",
    "SequentialDecision",
    "SequentialLook",
    "SequentialPaths",
    "SequentialPlan",
    "SequentialState",
    "SrmResult",
    "Verdict",
    "WelchResult",
    "ZTestResult",
    "adjust_p_values",
    "benjamini_hochberg",
    "bin_counts",
    "boundary_z",
    "classify_psi",
    "cohens_h",
    "compare_proportions",
    "confidence_halfwidth",
    "difference_interval",
    "holm",
    "is_sample_ratio_mismatch",
    "ks_two_sample",
    "mann_whitney_u",
    "optimal_mixing_ratio",
    "plan_sequential",
    "power_per_arm",
    "psi",
    "psi_from_histograms",
    "quantile_edges",
    "ratio_interval",
    "sample_size_per_arm",
    "sequential_paths",
    "sequential_power_lower_bound",
    "sequential_update",
    "sequential_update_means",
    "sequential_verdict",
    "srm_test",
    "start_sequential",
    "two_proportion_ztest",
    "welch_t_test",
    "welch_t_test_from_stats",
    "wilson_interval",
]

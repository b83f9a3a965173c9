"""The canary judge: a pipeline of small pure stages, after Kayenta's NetflixACAJudge.

``measure`` (two :class:`~sidecar.core.canary.window.VariantWindow`\\ s -> :class:`Measurement`)
-> ``classify`` (one :class:`MetricResult` per metric: PASS, HIGH, LOW or NODATA)
-> ``score`` (0..100) -> ``verdict`` (PASS, FAIL or INCONCLUSIVE, with the reason).
:func:`judge` runs them in order. The canary is compared with the baseline (the stable
variant serving at the same time), never with a fixed number, so that a bad hour for
every variant does not roll the canary back.

Metrics and tests (all one-sided; the canary is the first sample):

* ``error_rate`` (non-OK requests / requests) and ``timeout_rate`` (DEADLINE_EXCEEDED /
  requests): the exact conditional binomial test. Given ``T`` events in both arms, under
  H0 (same rate) the canary's count is ``Binomial(T, n_canary / (n_canary + n_baseline))``;
  HIGH uses ``scipy.stats.binomtest(..., alternative="greater")``, LOW ``"less"``.
  Exact, so valid at any count; with ``T = 0`` there is no evidence and ``p = 1``.
* ``latency`` (successful requests): Mann-Whitney U on the latency sketches' buckets,
  each bucket a group of tied values (normal approximation with tie-corrected variance
  and continuity correction: scipy's ``mannwhitneyu(canary, baseline,
  method="asymptotic")`` on the expanded data), plus the p50 and p95 ratios.

A metric is HIGH only when the canary is **significantly** worse (``p < alpha``) **and**
beyond its **guard** (practical margin) from :class:`JudgeConfig`: error rate ratio > 2,
timeout rate ratio > 2, p50 ratio > 1.2 or p95 ratio > 1.5. Ratios divide by
``max(baseline, floor)``: with the default 0.1% floor a canary at 0.1% against a baseline
with no errors has ratio 1.0, not infinity. LOW is the mirror image (significantly better
and beyond ``1 / guard``). A metric below its minimum sample count is NODATA.

Verdict: any HIGH -> FAIL; otherwise any NODATA -> INCONCLUSIVE (hold: no data is never a
pass); otherwise PASS (LOW metrics pass: a better canary is not a reason to roll back).
Every metric is critical, so the score informs but does not decide: it is the share of
metrics with data that passed (PASS or LOW), 0 when none has data.

``alpha`` is the significance level of each one-sided test at one check. Repeated checks
of one stage need a smaller level per check: :class:`~sidecar.core.canary.analysis.
CanaryAnalysis` passes the level its alpha-spending plan allots to each check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from sidecar.core.canary.window import LatencyBuckets, VariantWindow
from sidecar.core.stats.lazy import lazy

if TYPE_CHECKING:
    from scipy import special, stats
else:  # imported on first use, off the start-up path (sidecar.core.stats.lazy)
    special, stats = lazy("scipy.special"), lazy("scipy.stats")


__all__ = [
    "METRICS",
    "Classification",
    "JudgeConfig",
    "Judgement",
    "Measurement",
    "MetricResult",
    "RankTest",
    "Verdict",
    "classify",
    "classify_latency",
    "classify_rate",
    "conditional_binomial_p",
    "judge",
    "judge_measurement",
    "mann_whitney_buckets",
    "measure",
    "score",
    "verdict",
]

METRICS: Final = ("error_rate", "timeout_rate", "latency")
"""The metrics the judge classifies, in order; every one is critical."""

Alternative = Literal["greater", "less", "two-sided"]


class Classification(StrEnum):
    """One metric's outcome (Kayenta's words)."""

    PASS = "PASS"
    HIGH = "HIGH"
    """The canary is significantly worse and beyond the guard."""
    LOW = "LOW"
    """The canary is significantly better and beyond the inverse guard."""
    NODATA = "NODATA"
    """Too few samples in either arm to judge."""


class Verdict(StrEnum):
    """The judge's answer for one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    """Hold: not enough data (never treated as a pass)."""


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds of the judge; validated on construction (``ValueError``).

    Guards are ratios canary / max(baseline, floor) beyond which a significant difference
    counts; floors keep ratios finite when the baseline is (near) zero.
    """

    alpha: float = 1e-4
    """Significance level of each one-sided test at one check (see the module docstring
    for repeated checks)."""
    max_error_ratio: float = 2.0
    max_timeout_ratio: float = 2.0
    max_p50_ratio: float = 1.2
    max_p95_ratio: float = 1.5
    error_rate_floor: float = 0.001
    """Baseline error rates below this count as this in the guard ratio (0.1%)."""
    timeout_rate_floor: float = 0.001
    latency_floor_s: float = 0.001
    """Baseline latency quantiles below this count as this in the guard ratios (1 ms)."""
    min_requests: int = 200
    """Requests needed in each arm to judge the error and timeout rates."""
    min_latency_samples: int = 100
    """Successful requests needed in each arm to judge latency."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("min_"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{f.name} must be an int >= 1, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
            if f.name == "alpha" and not 0.0 < value < 1.0:
                raise ValueError(f"alpha must be in (0, 1), got {value!r}")
            if f.name.startswith("max_") and value <= 1.0:
                raise ValueError(f"{f.name} must be > 1, got {value!r}")
            if f.name.endswith("_floor") and not 0.0 < value < 1.0:
                raise ValueError(f"{f.name} must be in (0, 1), got {value!r}")
            if f.name == "latency_floor_s" and value <= 0.0:
                raise ValueError(f"latency_floor_s must be > 0, got {value!r}")


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class MetricResult:
    """One metric's classification with the values and thresholds it was based on."""

    name: str
    classification: Classification
    canary_value: float | None
    """Error rate, timeout rate, or p50 latency in seconds; None without data."""
    baseline_value: float | None
    ratio: float | None
    """``canary_value / max(baseline_value, floor)``; None without data."""
    guard: float
    """The ratio beyond which a significant difference is HIGH (p50 guard for latency)."""
    p_value: float | None
    """One-sided p-value: of "canary worse" unless LOW ("canary better"); None without
    data."""
    alpha: float
    canary_count: int
    """Requests (rates) or successful requests (latency) in the canary's window."""
    baseline_count: int
    reason: str
    """Human-readable, with the evaluated values and thresholds."""
    details: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Extra figures (latency: p95s, p95 ratio and guard, U, z)."""


@dataclass(frozen=True)
class Judgement:
    """The judge's answer for one check."""

    verdict: Verdict
    score: float
    """0..100: share of metrics with data that passed (PASS or LOW)."""
    metrics: tuple[MetricResult, ...]
    reason: str
    """Why, e.g. ``"FAIL: error_rate HIGH: canary 1.02% vs baseline 0.10% (ratio 10.2 >
    2.0), p=3e-9 < 1e-4"``."""
    alpha: float
    """Significance level used for every test of this check."""

    def metric(self, name: str) -> MetricResult:
        """The result of metric ``name`` (``KeyError`` if absent)."""
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(name)


@dataclass(frozen=True, eq=False)
class Measurement:
    """What the judge reads from the canary's and the baseline's windows."""

    canary_requests: int
    baseline_requests: int
    canary_errors: int
    baseline_errors: int
    canary_timeouts: int
    baseline_timeouts: int
    canary_latency: LatencyBuckets
    baseline_latency: LatencyBuckets
    canary_p50: float | None
    canary_p95: float | None
    baseline_p50: float | None
    baseline_p95: float | None


@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U of the canary against the baseline (normal approximation)."""

    u: float
    """The canary's U: pairs (canary, baseline) with the canary slower, ties one half."""
    z: float
    p_value: float
    alternative: Alternative
    probability_superiority: float
    """``U / (n_canary n_baseline)``: estimates P(canary slower) + P(tie) / 2."""


# ------------------------------------------------------------------ tests


def conditional_binomial_p(
    canary_events: int,
    canary_n: int,
    baseline_events: int,
    baseline_n: int,
    alternative: Alternative = "greater",
) -> float:
    """Exact conditional test of equal event rates: given ``T`` events in both arms, the
    canary's count is ``Binomial(T, canary_n / (canary_n + baseline_n))`` under H0.
    ``"greater"``: the canary's rate is higher. Returns 1.0 when ``T = 0``."""
    for name, value in (
        ("canary_events", canary_events),
        ("canary_n", canary_n),
        ("baseline_events", baseline_events),
        ("baseline_n", baseline_n),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if canary_n == 0 or baseline_n == 0:
        raise ValueError("both arms need at least one request")
    if canary_events > canary_n or baseline_events > baseline_n:
        raise ValueError("events cannot exceed requests")
    total = int(canary_events) + int(baseline_events)
    if total == 0:
        return 1.0
    share = canary_n / (canary_n + baseline_n)
    result = stats.binomtest(int(canary_events), total, share, alternative=alternative)
    return float(result.pvalue)


def mann_whitney_buckets(
    canary: LatencyBuckets, baseline: LatencyBuckets, alternative: Alternative = "greater"
) -> RankTest:
    """Mann-Whitney U on bucketed samples, each bucket a group of tied values.

    Equal to ``scipy.stats.mannwhitneyu(canary.expand(), baseline.expand(),
    alternative=alternative, method="asymptotic")`` (tie-corrected variance, continuity
    correction) without expanding: the work grows with the number of buckets, not of
    requests. ``"greater"``: the canary tends to be slower. Both sides need a request.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
    keys = np.union1d(canary.keys, baseline.keys)
    c = np.zeros(keys.size, dtype=np.float64)
    b = np.zeros(keys.size, dtype=np.float64)
    c[np.searchsorted(keys, canary.keys)] = canary.counts
    b[np.searchsorted(keys, baseline.keys)] = baseline.counts
    n_c = float(np.sum(c))
    n_b = float(np.sum(b))
    if n_c <= 0.0 or n_b <= 0.0:
        raise ValueError("both samples need at least one value")
    below = np.cumsum(b) - b  # baseline values strictly below each bucket
    u = float(np.sum(c * (below + 0.5 * b)))
    pairs = n_c * n_b
    n = n_c + n_b
    t = c + b
    tie_term = float(np.sum(t**3 - t))
    variance = pairs / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0))) if n > 1 else 0.0
    mu = pairs / 2.0
    if variance <= 0.0:  # every value tied: no evidence either way
        return RankTest(u, 0.0, 1.0, alternative, u / pairs)
    sd = math.sqrt(variance)
    if alternative == "greater":
        z = (u - mu - 0.5) / sd
        p = float(special.ndtr(-z))
    elif alternative == "less":
        z = (u - mu + 0.5) / sd
        p = float(special.ndtr(z))
    else:
        z = (max(u, pairs - u) - mu - 0.5) / sd
        p = min(1.0, 2.0 * float(special.ndtr(-z)))
    return RankTest(u, z, p, alternative, u / pairs)


# ------------------------------------------------------------------ formatting


def _fmt_p(p: float) -> str:
    """Compact p-value or level: ``3e-9``, ``1e-4``, ``0.0012``, ``0.35``."""
    if p == 0.0:
        return "0"
    if p < 1e-3:
        mantissa, exponent = f"{p:.1e}".split("e")
        return f"{mantissa.removesuffix('.0')}e{int(exponent)}"
    return f"{p:.2g}"


def _num(x: float) -> str:
    """A guard: ``2.0``, ``1.2``, ``1.25``."""
    text = f"{x:.3g}"
    return text if any(ch in text for ch in ".en") else text + ".0"


def _pct(rate: float) -> str:
    return f"{100.0 * rate:.2f}%" if rate == 0.0 or rate >= 0.001 else f"{100.0 * rate:.3f}%"


def _p(p: float) -> str:
    """``p=3e-9``, or ``p<1e-300`` when the p-value underflowed to 0."""
    return "p<1e-300" if p == 0.0 else f"p={_fmt_p(p)}"


def _ms(seconds: float) -> str:
    return f"{1000.0 * seconds:.3g} ms"


def _ratio(r: float) -> str:
    return f"{r:.3g}"


# ------------------------------------------------------------------ stages


def measure(canary: VariantWindow, baseline: VariantWindow) -> Measurement:
    """Stage 1: read the counts, latency buckets and quantiles of both windows."""
    if canary.relative_accuracy != baseline.relative_accuracy:
        raise ValueError("canary and baseline windows need the same sketch accuracy")
    return Measurement(
        canary_requests=canary.requests,
        baseline_requests=baseline.requests,
        canary_errors=canary.errors,
        baseline_errors=baseline.errors,
        canary_timeouts=canary.timeouts,
        baseline_timeouts=baseline.timeouts,
        canary_latency=canary.latency_buckets(),
        baseline_latency=baseline.latency_buckets(),
        canary_p50=canary.quantile(0.5),
        canary_p95=canary.quantile(0.95),
        baseline_p50=baseline.quantile(0.5),
        baseline_p95=baseline.quantile(0.95),
    )


def _too_few(what: str, canary_n: int, baseline_n: int, minimum: int) -> str:
    short = [
        f"{arm} {n} {what} < {minimum} minimum"
        for arm, n in (("canary", canary_n), ("baseline", baseline_n))
        if n < minimum
    ]
    return ", ".join(short)


def classify_rate(
    name: str,
    canary_events: int,
    canary_n: int,
    baseline_events: int,
    baseline_n: int,
    *,
    max_ratio: float,
    floor: float,
    min_requests: int,
    alpha: float,
) -> MetricResult:
    """Stage 2 for a rate (errors or timeouts per request): the conditional binomial test
    and the guard ratio ``canary_rate / max(baseline_rate, floor)``."""
    if canary_n < min_requests or baseline_n < min_requests:
        return MetricResult(
            name=name,
            classification=Classification.NODATA,
            canary_value=canary_events / canary_n if canary_n else None,
            baseline_value=baseline_events / baseline_n if baseline_n else None,
            ratio=None,
            guard=max_ratio,
            p_value=None,
            alpha=alpha,
            canary_count=canary_n,
            baseline_count=baseline_n,
            reason=f"{name} NODATA: " + _too_few("requests", canary_n, baseline_n, min_requests),
        )
    c_rate = canary_events / canary_n
    b_rate = baseline_events / baseline_n
    denominator = max(b_rate, floor)
    ratio = c_rate / denominator
    versus = f"canary {_pct(c_rate)} vs baseline {_pct(b_rate)}"
    to = f" to the {_pct(floor)} floor" if b_rate < floor else ""
    p_high = conditional_binomial_p(canary_events, canary_n, baseline_events, baseline_n)
    significant = p_high < alpha
    beyond = ratio > max_ratio
    p_value = p_high
    if significant and beyond:
        label = Classification.HIGH
        detail = (
            f"{versus} (ratio {_ratio(ratio)}{to} > {_num(max_ratio)}), "
            f"{_p(p_high)} < {_fmt_p(alpha)}"
        )
    elif significant:
        label = Classification.PASS
        detail = (
            f"{versus} (ratio {_ratio(ratio)}{to} <= guard {_num(max_ratio)}), "
            f"{_p(p_high)} < {_fmt_p(alpha)} but within the guard"
        )
    else:
        label = Classification.PASS
        detail = (
            f"{versus} (ratio {_ratio(ratio)}{to}, guard {_num(max_ratio)}), "
            f"{_p(p_high)} >= {_fmt_p(alpha)}"
        )
        if c_rate < b_rate and ratio < 1.0 / max_ratio:
            p_low = conditional_binomial_p(
                canary_events, canary_n, baseline_events, baseline_n, "less"
            )
            if p_low < alpha:
                label = Classification.LOW
                p_value = p_low
                detail = (
                    f"{versus} (ratio {_ratio(ratio)}{to} < {1.0 / max_ratio:.3g}), "
                    f"{_p(p_low)} < {_fmt_p(alpha)}"
                )
    return MetricResult(
        name=name,
        classification=label,
        canary_value=c_rate,
        baseline_value=b_rate,
        ratio=ratio,
        guard=max_ratio,
        p_value=p_value,
        alpha=alpha,
        canary_count=canary_n,
        baseline_count=baseline_n,
        reason=f"{name} {label.value}: {detail}",
    )


def classify_latency(m: Measurement, config: JudgeConfig, alpha: float) -> MetricResult:
    """Stage 2 for latency: Mann-Whitney on the sketch buckets and the p50/p95 ratios.
    HIGH when the canary is significantly slower and its p50 or p95 is beyond its guard."""
    name = "latency"
    n_c = m.canary_latency.total
    n_b = m.baseline_latency.total
    minimum = config.min_latency_samples
    if (
        n_c < minimum
        or n_b < minimum
        or m.canary_p50 is None
        or m.baseline_p50 is None
        or m.canary_p95 is None
        or m.baseline_p95 is None
    ):
        return MetricResult(
            name=name,
            classification=Classification.NODATA,
            canary_value=m.canary_p50,
            baseline_value=m.baseline_p50,
            ratio=None,
            guard=config.max_p50_ratio,
            p_value=None,
            alpha=alpha,
            canary_count=n_c,
            baseline_count=n_b,
            reason=f"{name} NODATA: " + _too_few("successful requests", n_c, n_b, minimum),
        )
    floor = config.latency_floor_s
    r50 = m.canary_p50 / max(m.baseline_p50, floor)
    r95 = m.canary_p95 / max(m.baseline_p95, floor)
    g50, g95 = config.max_p50_ratio, config.max_p95_ratio
    test = mann_whitney_buckets(m.canary_latency, m.baseline_latency, "greater")
    p_high = test.p_value
    quantiles = (
        f"canary p50 {_ms(m.canary_p50)} vs baseline {_ms(m.baseline_p50)} "
        f"(ratio {_ratio(r50)}{{c50}}), p95 {_ms(m.canary_p95)} vs {_ms(m.baseline_p95)} "
        f"(ratio {_ratio(r95)}{{c95}})"
    )
    p_value = p_high
    if p_high < alpha and (r50 > g50 or r95 > g95):
        label = Classification.HIGH
        text = quantiles.format(
            c50=f" > {_num(g50)}" if r50 > g50 else f" <= {_num(g50)}",
            c95=f" > {_num(g95)}" if r95 > g95 else f" <= {_num(g95)}",
        )
        detail = f"{text}, Mann-Whitney {_p(p_high)} < {_fmt_p(alpha)}"
    else:
        label = Classification.PASS
        text = quantiles.format(c50=f", guard {_num(g50)}", c95=f", guard {_num(g95)}")
        if p_high < alpha:
            detail = f"{text}, Mann-Whitney {_p(p_high)} < {_fmt_p(alpha)} but within the guards"
        else:
            detail = f"{text}, Mann-Whitney {_p(p_high)} >= {_fmt_p(alpha)}"
        if r50 < 1.0 / g50 or r95 < 1.0 / g95:
            p_low = mann_whitney_buckets(m.canary_latency, m.baseline_latency, "less").p_value
            if p_low < alpha:
                label = Classification.LOW
                p_value = p_low
                text = quantiles.format(
                    c50=f" < {1.0 / g50:.3g}" if r50 < 1.0 / g50 else "",
                    c95=f" < {1.0 / g95:.3g}" if r95 < 1.0 / g95 else "",
                )
                detail = f"{text}, Mann-Whitney {_p(p_low)} < {_fmt_p(alpha)} (faster)"
    return MetricResult(
        name=name,
        classification=label,
        canary_value=m.canary_p50,
        baseline_value=m.baseline_p50,
        ratio=r50,
        guard=g50,
        p_value=p_value,
        alpha=alpha,
        canary_count=n_c,
        baseline_count=n_b,
        reason=f"{name} {label.value}: {detail}",
        details=MappingProxyType(
            {
                "canary_p95": m.canary_p95,
                "baseline_p95": m.baseline_p95,
                "p95_ratio": r95,
                "p95_guard": g95,
                "u": test.u,
                "z": test.z,
                "probability_superiority": test.probability_superiority,
            }
        ),
    )


def classify(m: Measurement, config: JudgeConfig, alpha: float) -> tuple[MetricResult, ...]:
    """Stage 2: classify every metric of :data:`METRICS`."""
    return (
        classify_rate(
            "error_rate",
            m.canary_errors,
            m.canary_requests,
            m.baseline_errors,
            m.baseline_requests,
            max_ratio=config.max_error_ratio,
            floor=config.error_rate_floor,
            min_requests=config.min_requests,
            alpha=alpha,
        ),
        classify_rate(
            "timeout_rate",
            m.canary_timeouts,
            m.canary_requests,
            m.baseline_timeouts,
            m.baseline_requests,
            max_ratio=config.max_timeout_ratio,
            floor=config.timeout_rate_floor,
            min_requests=config.min_requests,
            alpha=alpha,
        ),
        classify_latency(m, config, alpha),
    )


def score(metrics: Sequence[MetricResult]) -> float:
    """Stage 3: 100 x the share of metrics with data that are PASS or LOW (0 if none)."""
    judged = [m for m in metrics if m.classification is not Classification.NODATA]
    if not judged:
        return 0.0
    passed = sum(m.classification in (Classification.PASS, Classification.LOW) for m in judged)
    return 100.0 * passed / len(judged)


def verdict(metrics: Sequence[MetricResult]) -> tuple[Verdict, str]:
    """Stage 4: any HIGH -> FAIL; else any NODATA (or no metric) -> INCONCLUSIVE; else
    PASS. Returns the verdict and its reason."""
    high = [m for m in metrics if m.classification is Classification.HIGH]
    if high:
        return Verdict.FAIL, "FAIL: " + "; ".join(m.reason for m in high)
    missing = [m for m in metrics if m.classification is Classification.NODATA]
    if missing or not metrics:
        why = "; ".join(m.reason for m in missing) or "no metrics"
        return Verdict.INCONCLUSIVE, "INCONCLUSIVE (hold): " + why
    return Verdict.PASS, "PASS: " + "; ".join(m.reason for m in metrics)


def judge_measurement(
    m: Measurement, config: JudgeConfig = JudgeConfig(), *, alpha: float | None = None
) -> Judgement:
    """Stages 2-4 on a measurement (``alpha`` overrides ``config.alpha``)."""
    level = config.alpha if alpha is None else replace(config, alpha=alpha).alpha
    metrics = classify(m, config, level)
    outcome, reason = verdict(metrics)
    return Judgement(outcome, score(metrics), metrics, reason, level)


def judge(
    canary: VariantWindow,
    baseline: VariantWindow,
    config: JudgeConfig = JudgeConfig(),
    *,
    alpha: float | None = None,
) -> Judgement:
    """Judge the canary's window against the baseline's (same time span): measure ->
    classify -> score -> verdict. ``alpha`` overrides ``config.alpha`` (validated)."""
    return judge_measurement(measure(canary, baseline), config, alpha=alpha)

"""The shadow report: what a :class:`ShadowSummary` says, and what to do next.

:func:`analyse_shadow` turns a candidate's summary (the shadow variant compared with the
primary) into the agreement rate with its Wilson interval, the error rates, and a
:class:`Recommendation` with one reason line per check. When a *noise* summary is given
(a second mirror that sends copies of the requests to the primary model itself, Diffy's
"primary vs secondary"), the primary's own disagreement rate is subtracted from the
candidate's before the agreement check.

Checks, in this order; the first that fails decides (see ``docs/shadow.md``):

1. errors, on calls (needs ``min_comparisons`` calls): shadow error rate above
   ``max(max_error_ratio * primary_error_rate, error_rate_floor)`` -> FIX_ERRORS;
2. data: fewer than ``min_comparisons`` comparisons -> INSUFFICIENT_DATA;
3. agreement: the effective agreement (point estimate) below ``min_agreement``
   -> INVESTIGATE_DISAGREEMENT;
4. latency: ``shadow_p95 / primary_p95`` (the rollout gate's measure; the p95 of per-pair
   ratios only when the p95s are missing) above ``max_p95_ratio`` -> OPTIMISE_LATENCY;
5. otherwise PROMOTE_TO_CANARY.

The error check is judged on shadow calls rather than comparisons so that a shadow whose
calls all fail (and so is never compared) is told to fix its errors instead of waiting
forever for comparisons. With at least ``min_comparisons`` comparisons this is exactly the
order "insufficient data, errors, disagreement, latency".

Conventions:

* Decisions use point estimates against the thresholds, like the rollout's shadow gates
  (agreement ``>= min_agreement`` passes, p95 ratio ``<= max_p95_ratio`` passes, error
  rate ``<= limit`` passes). The intervals only qualify the reason line: "confidently"
  below when even the interval's upper bound is below ``min_agreement``, "not yet
  conclusive" when the point is below but the interval reaches it.
* Intervals are two-sided at level ``1 - alpha``: Wilson score for one rate (statsmodels
  ``proportion_confint(method="wilson")``), Newcombe's hybrid score interval for the
  difference of two independent rates (statsmodels
  ``confint_proportions_2indep(compare="diff", method="newcomb")``).
* Noise subtraction is at rate level: ``adjusted = d_candidate - d_noise`` with
  ``d = 1 - agreed / compared``. The adjusted estimate is reported unclamped (it may be
  negative: the candidate disagreed less often than the model with itself, by chance);
  the effective agreement is ``1 - max(0, adjusted)``. Subtracting rates assumes the
  noise disagreements are a subset of the candidate's (a request on which the model is
  unstable with itself is counted once, not twice); Diffy filters noise field by field,
  which opaque tensor outputs do not allow.

Pure: no I/O, clock or logging.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NamedTuple

from sidecar.core.shadow.record import ShadowSummary
from sidecar.core.stats.intervals import Estimate, Interval
from sidecar.core.stats.proportions import difference_interval, wilson_interval

__all__ = [
    "Estimate",
    "NoiseAdjustment",
    "Recommendation",
    "ShadowAnalysis",
    "ShadowThresholds",
    "analyse_shadow",
    "shadow_error_rate",
]


class Recommendation(enum.Enum):
    """What to do with the shadow variant. Values are the ``ShadowRecommendation`` proto
    numbers (``RECOMMEND_<name>``)."""

    INSUFFICIENT_DATA = 1
    FIX_ERRORS = 2
    INVESTIGATE_DISAGREEMENT = 3
    OPTIMISE_LATENCY = 4
    PROMOTE_TO_CANARY = 5


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return out


@dataclass(frozen=True)
class ShadowThresholds:
    """When the shadow report recommends what; the rollout's shadow stage gates on the same
    thresholds."""

    min_comparisons: int = 1000
    """Comparisons needed before anything but FIX_ERRORS is recommended; also the
    comparisons a noise mirror needs before its noise is subtracted, and the shadow calls
    needed before errors are judged."""
    min_agreement: float = 0.85
    """Effective agreement (point estimate) below this -> INVESTIGATE_DISAGREEMENT."""
    max_p95_ratio: float = 1.5
    """p95 shadow / primary latency ratio above this -> OPTIMISE_LATENCY."""
    max_error_ratio: float = 2.0
    """Shadow error rate above this many times the primary's -> FIX_ERRORS ..."""
    error_rate_floor: float = 0.005
    """... unless it is at most this rate (a ratio against ~0 primary errors uses it)."""
    alpha: float = 0.05
    """Intervals are at level ``1 - alpha``."""

    def __post_init__(self) -> None:
        mc = self.min_comparisons
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            raise ValueError(f"min_comparisons must be an int >= 1, got {mc!r}")
        if not 0.0 <= _number("min_agreement", self.min_agreement) <= 1.0:
            raise ValueError(f"min_agreement must be in [0, 1], got {self.min_agreement!r}")
        if not _number("max_p95_ratio", self.max_p95_ratio) > 0.0:
            raise ValueError(f"max_p95_ratio must be > 0, got {self.max_p95_ratio!r}")
        if not _number("max_error_ratio", self.max_error_ratio) >= 0.0:
            raise ValueError(f"max_error_ratio must be >= 0, got {self.max_error_ratio!r}")
        if not 0.0 <= _number("error_rate_floor", self.error_rate_floor) <= 1.0:
            raise ValueError(f"error_rate_floor must be in [0, 1], got {self.error_rate_floor!r}")
        if not 0.0 < _number("alpha", self.alpha) < 1.0:
            raise ValueError(f"alpha must be in the open interval (0, 1), got {self.alpha!r}")


def _estimate(value: float, interval: Interval) -> Estimate:
    return Estimate(value, interval.lower, interval.upper, interval.confidence, interval.method)


@dataclass(frozen=True)
class NoiseAdjustment:
    """The primary model compared with itself, subtracted from the candidate."""

    compared: int
    """Comparisons of the noise mirror."""
    agreed: int
    noise_disagreement: Estimate
    """``1 - agreed / compared`` of the noise mirror (Wilson)."""
    candidate_disagreement: Estimate
    """``1 - agreed / compared`` of the candidate (Wilson)."""
    adjusted_disagreement: Estimate
    """Candidate minus noise disagreement (Newcombe interval of the difference of two
    independent proportions); not clamped, so it may be negative."""


@dataclass(frozen=True)
class ShadowAnalysis:
    """The shadow report: the summary, the estimates and the recommendation."""

    summary: ShadowSummary
    agreement: Estimate | None
    """Agreement rate with its Wilson interval; None when nothing was compared."""
    error_rate: float | None
    """Shadow calls that failed / shadow calls sent (see :func:`analyse_shadow`); None
    when no call was sent."""
    primary_error_rate: float | None
    """The primary's error rate over the same period, as given."""
    recommendation: Recommendation
    reasons: tuple[str, ...]
    """One line per check, in order: data, errors, agreement, latency."""
    noise: NoiseAdjustment | None
    """Set when the noise was subtracted (a noise summary with at least
    ``min_comparisons`` comparisons, the same comparator, and a compared candidate)."""
    effective_agreement: float | None
    """``1 - max(0, adjusted disagreement)`` when :attr:`noise` is set, else the agreement
    rate; None when nothing was compared. The agreement check uses it."""


def _pct(x: float) -> str:
    return f"{x:.2%}"


def _level(level: float) -> str:
    return f"{level * 100:g}%"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _noise_adjustment(
    candidate: ShadowSummary, noise: ShadowSummary, t: ShadowThresholds
) -> tuple[NoiseAdjustment | None, str]:
    """The adjustment, or None with the reason it is not applied."""
    if noise.compared < t.min_comparisons:
        return None, (
            f"noise not subtracted: the noise mirror has {noise.compared} of "
            f"{t.min_comparisons} comparisons"
        )
    if noise.comparator != candidate.comparator:
        return None, (
            f"noise not subtracted: the noise mirror compares with {noise.comparator!r}, "
            f"the candidate with {candidate.comparator!r}"
        )
    nn, nd = noise.compared, noise.compared - noise.agreed
    cn, cd = candidate.compared, candidate.compared - candidate.agreed
    d_noise, d_candidate = nd / nn, cd / cn
    adjustment = NoiseAdjustment(
        compared=nn,
        agreed=noise.agreed,
        noise_disagreement=_estimate(d_noise, wilson_interval(nd, nn, t.alpha)),
        candidate_disagreement=_estimate(d_candidate, wilson_interval(cd, cn, t.alpha)),
        # difference_interval(control, treatment) is treatment - control.
        adjusted_disagreement=_estimate(
            d_candidate - d_noise, difference_interval(nd, nn, cd, cn, t.alpha, "newcombe")
        ),
    )
    return adjustment, ""


class _Check(NamedTuple):
    """One check of the report: its reason line and whether it failed."""

    line: str
    failed: bool


def shadow_error_rate(summary: ShadowSummary) -> float | None:
    """The shadow error rate: ``errors / max(sent, errors + compared)`` (None when no call
    was sent). Normally ``errors / sent``; the max keeps it in [0, 1] after a reset, when
    calls started before the reset finish (and are counted) after it. The rollout's shadow
    gate reads this figure through :func:`analyse_shadow`."""
    calls = max(summary.sent, summary.errors + summary.compared)
    return summary.errors / calls if calls else None


def analyse_shadow(
    candidate: ShadowSummary,
    *,
    primary_error_rate: float | None,
    noise: ShadowSummary | None = None,
    thresholds: ShadowThresholds = ShadowThresholds(),
) -> ShadowAnalysis:
    """Analyse a shadow variant's summary and recommend what to do (see the module doc).

    ``primary_error_rate`` is the primary's error rate over the same period (None when
    unknown: the error limit is then the floor). ``noise`` is the summary of a mirror that
    sends copies to the primary model itself. The error rate is
    :func:`shadow_error_rate`.

    Raises ValueError when ``primary_error_rate`` is not None nor a rate in [0, 1].
    """
    t = thresholds
    if primary_error_rate is not None:
        rate = _number("primary_error_rate", primary_error_rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"primary_error_rate must be in [0, 1], got {primary_error_rate!r}")
        primary_error_rate = rate

    compared = candidate.compared
    enough = compared >= t.min_comparisons
    provisional = "" if enough else f"; provisional: {compared} of {t.min_comparisons} comparisons"
    error_rate = shadow_error_rate(candidate)
    errors = _error_check(candidate, error_rate, primary_error_rate, t)
    agreement, adjustment, effective, agrees = _agreement_check(candidate, noise, t)
    latency = _latency_check(candidate, t)
    if compared:
        agrees = agrees._replace(line=agrees.line + provisional)
    if latency.line != _NO_LATENCY:
        latency = latency._replace(line=latency.line + provisional)

    if errors.failed:
        recommendation = Recommendation.FIX_ERRORS
    elif not enough:
        recommendation = Recommendation.INSUFFICIENT_DATA
    elif agrees.failed:
        recommendation = Recommendation.INVESTIGATE_DISAGREEMENT
    elif latency.failed:
        recommendation = Recommendation.OPTIMISE_LATENCY
    else:
        recommendation = Recommendation.PROMOTE_TO_CANARY

    return ShadowAnalysis(
        summary=candidate,
        agreement=agreement,
        error_rate=error_rate,
        primary_error_rate=primary_error_rate,
        recommendation=recommendation,
        reasons=(_data_line(compared, t), errors.line, agrees.line, latency.line),
        noise=adjustment,
        effective_agreement=effective,
    )


def _error_check(
    candidate: ShadowSummary,
    error_rate: float | None,
    primary_error_rate: float | None,
    t: ShadowThresholds,
) -> _Check:
    """Errors, judged on calls (so a shadow whose calls all fail is told so)."""
    if error_rate is None:
        return _Check("errors: no shadow calls sent yet: not checked", False)
    errors = candidate.errors
    calls = max(candidate.sent, errors + candidate.compared)
    limit = max(t.max_error_ratio * (primary_error_rate or 0.0), t.error_rate_floor)
    primary_text = (
        _pct(primary_error_rate) if primary_error_rate is not None else "unknown (0 assumed)"
    )
    statuses = sorted(candidate.errors_by_status.items(), key=lambda kv: (-kv[1], kv[0]))
    by_status = ", ".join(f"{name} {count}" for name, count in statuses[:3])
    if len(statuses) > 3:
        by_status += ", …"
    if error_rate > limit:
        verdict = (
            "too high"
            if calls >= t.min_comparisons
            else f"too high (provisional: {calls} of {t.min_comparisons} calls)"
        )
    else:
        verdict = "ok"
    line = (
        f"errors: shadow error rate {_pct(error_rate)} ({errors} of {calls} calls"
        + (f": {by_status}" if by_status else "")
        + f") vs primary {primary_text}; limit {_pct(limit)} = max({t.max_error_ratio:g} "
        f"x primary, floor {_pct(t.error_rate_floor)}): {verdict}"
    )
    return _Check(line, calls >= t.min_comparisons and error_rate > limit)


def _data_line(compared: int, t: ShadowThresholds) -> str:
    if compared >= t.min_comparisons:
        return f"data: {compared} comparisons (needs >= {t.min_comparisons}): ok"
    return (
        f"insufficient data: {compared} of {t.min_comparisons} comparisons; "
        f"{t.min_comparisons - compared} more needed"
    )


def _agreement_check(
    candidate: ShadowSummary, noise: ShadowSummary | None, t: ShadowThresholds
) -> tuple[Estimate | None, NoiseAdjustment | None, float | None, _Check]:
    """The agreement, the noise adjustment, the effective agreement and the check (the
    caller appends the provisional note)."""
    compared, agreed = candidate.compared, candidate.agreed
    if compared == 0:
        return None, None, None, _Check("agreement: no comparisons yet: not checked", False)
    wilson = wilson_interval(agreed, compared, t.alpha)
    agreement = _estimate(agreed / compared, wilson)
    line = (
        f"agreement: {_pct(agreement.value)} ({agreed} of {compared}; "
        f"{_level(wilson.confidence)} Wilson {_pct(wilson.lower)} to {_pct(wilson.upper)})"
    )
    adjustment, note = _noise_adjustment(candidate, noise, t) if noise is not None else (None, "")
    if adjustment is not None:
        adj = adjustment.adjusted_disagreement
        effective = 1.0 - max(0.0, adj.value)
        low, high = 1.0 - max(0.0, adj.upper), 1.0 - max(0.0, adj.lower)
        nd = adjustment.compared - adjustment.agreed
        line += (
            f"; noise mirror disagreement {_pct(adjustment.noise_disagreement.value)} "
            f"({nd} of {adjustment.compared}); adjusted disagreement {_pct(adj.value)} "
            f"({_level(adj.level)} Newcombe {_pct(adj.lower)} to {_pct(adj.upper)}); "
            f"effective agreement {_pct(effective)}"
        )
    else:
        effective = agreement.value
        low, high = wilson.lower, wilson.upper
        if note:
            line += f"; {note}"
    failed = effective < t.min_agreement
    line += _agreement_verdict(failed, low, high, t.min_agreement)
    return agreement, adjustment, effective, _Check(line, failed)


def _agreement_verdict(failed: bool, low: float, high: float, minimum: float) -> str:
    if failed:
        how = (
            f"confidently (upper bound {_pct(high)})"
            if high < minimum
            else f"not yet conclusive (upper bound {_pct(high)})"
        )
        return f": below the minimum {_pct(minimum)}, {how}"
    if low < minimum:
        return f": ok (>= {_pct(minimum)}; lower bound {_pct(low)} still below)"
    return f": ok (>= {_pct(minimum)})"


_NO_LATENCY = "latency: no latency ratio recorded: not checked"


def _latency_check(candidate: ShadowSummary, t: ShadowThresholds) -> _Check:
    """The same measure as the rollout's shadow gate: the ratio of the two p95s. The p95
    of per-pair ratios carries both calls' jitter and is shown for reading only (used
    only when the p95s are missing). The caller appends the provisional note."""
    s95, p95 = candidate.shadow_p95, candidate.primary_p95
    if s95 is not None and p95:
        ratio, source = s95 / p95, "shadow p95 / primary p95"
    elif candidate.ratio_p95 is not None:
        ratio, source = candidate.ratio_p95, "p95 of per-pair shadow/primary"
    else:
        return _Check(_NO_LATENCY, False)
    failed = ratio > t.max_p95_ratio
    pair = (
        f"; shadow p95 {_ms(s95)}, primary p95 {_ms(p95)}"
        if s95 is not None and p95 is not None
        else ""
    )
    if candidate.ratio_p95 is not None and source.startswith("shadow p95"):
        pair += f"; p95 of per-pair ratios {candidate.ratio_p95:.2f}"
    line = f"latency: p95 ratio {ratio:.2f} ({source}{pair}) vs max {t.max_p95_ratio:g}: " + (
        "too slow" if failed else "ok"
    )
    return _Check(line, failed)

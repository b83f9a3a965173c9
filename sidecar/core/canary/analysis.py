"""Repeated checks of one canary stage (Argo Rollouts' AnalysisRun): judgements -> decision.

A health checker judges the canary once per evaluation interval, e.g. every minute of a
2-hour stage: 120 looks at the same stage. Testing each look at ``alpha`` would roll back
a healthy canary with probability up to ``120 x alpha x metrics``. This layer keeps the
family-wise false-rollback rate of a healthy stage at or below
``CanaryAnalysisConfig.false_rollback_rate`` (1% by default) by **alpha spending**:

* the budget is split evenly across the judge's metrics (Bonferroni over metrics);
* each metric's share is spread over the planned looks. ``spending="harmonic"`` (default)
  gives look ``k`` of ``K`` the level ``share / (H_K * k)``, where ``H_K = 1 + 1/2 + ... +
  1/K``: the early looks, when a bad canary has hurt few users and each new minute of
  data adds most information, get more (look 1 of 120 at 1%: 6.2e-4 per metric; look 5:
  1.2e-4; look 120: 5.2e-6). ``spending="flat"`` is plain Bonferroni, ``share / K``
  per look (2.8e-5).

Either way the levels sum to the budget over all looks and metrics, so by the union bound
the chance that a healthy canary gets one false FAIL in the whole stage is at most the
budget, however the looks are correlated (they are: the recommended windows are
cumulative since the stage start), provided each test's p-value is valid under H0 (the
binomial tests are exact; Mann-Whitney's normal approximation is used far in its tail:
see ``docs/canary.md`` for the simulated rate).

Windows: judge the canary's and the baseline's windows **cumulative since the stage
start** (:class:`~sidecar.core.canary.window.CumulativeWindows`): the most data, so the
most power against a regression present from the start. A regression that begins late in
a long stage is diluted in them, so :meth:`CanaryAnalysis.check` also takes optional
``recent`` windows (e.g. the last 10 minutes, once the stage is older than that); the
look's level is then split between the two judgements (``recent_share``, half by
default), which keeps the union bound. ``docs/canary.md`` has the simulated figures.

On top, ``failure_limit`` (Argo's ``failureLimit``: FAIL verdicts tolerated in total) and
``consecutive_failure_limit`` (FAILs tolerated in a row) can require repeated FAILs;
both only lower the false-rollback rate, at the cost of slower detection. Defaults: roll
back on the first FAIL (the spending already holds the rate).

Decisions: ROLLBACK as soon as the FAILs exceed a limit; CONTINUE until the planned
number of looks; then PASSED if the last verdict is PASS, else INCONCLUSIVE (hold for an
operator: no data, or a tolerated FAIL at the end, is never a pass). Once decided, the
analysis stays decided.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Literal

from sidecar.core.canary.judge import METRICS, JudgeConfig, Judgement, Verdict, judge
from sidecar.core.canary.window import VariantWindow

__all__ = [
    "AnalysisDecision",
    "CanaryAnalysis",
    "CanaryAnalysisConfig",
    "Decision",
    "check_alpha",
]

Spending = Literal["harmonic", "flat"]

_ALPHA_TOLERANCE: Final = 1e-9  # relative slack when checking a judgement's alpha


class Decision(StrEnum):
    """What the rollout should do after a check."""

    CONTINUE = "CONTINUE"
    ROLLBACK = "ROLLBACK"
    PASSED = "PASSED"
    """The stage ran its planned checks and the last verdict was PASS: promote."""
    INCONCLUSIVE = "INCONCLUSIVE"
    """The stage ran its planned checks without a final PASS: hold for an operator."""


@dataclass(frozen=True)
class CanaryAnalysisConfig:
    """Plan of one stage's repeated checks; validated on construction (``ValueError``)."""

    planned_checks: int = 120
    """Looks in the stage (e.g. a 2-hour stage checked every minute)."""
    false_rollback_rate: float = 0.01
    """Family-wise budget: chance that a healthy stage is rolled back."""
    metrics_per_check: int = len(METRICS)
    """Tests per look sharing the budget (the judge's metrics)."""
    spending: Spending = "harmonic"
    failure_limit: int = 0
    """FAIL verdicts tolerated in total; the next one rolls back (Argo's failureLimit)."""
    consecutive_failure_limit: int | None = None
    """FAIL verdicts tolerated in a row; None: no such limit."""
    recent_share: float = 0.5
    """Share of a look's level given to the recent windows when :meth:`CanaryAnalysis.check`
    gets them."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Thresholds of the judge; its ``alpha`` is replaced by the per-check level."""

    def __post_init__(self) -> None:
        for name in ("planned_checks", "metrics_per_check"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        rate = self.false_rollback_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 < rate < 1.0:
            raise ValueError(f"false_rollback_rate must be in (0, 1), got {rate!r}")
        share = self.recent_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0.0 < share < 1.0:
            raise ValueError(f"recent_share must be in (0, 1), got {share!r}")
        if self.spending not in ("harmonic", "flat"):
            raise ValueError(f"spending must be 'harmonic' or 'flat', got {self.spending!r}")
        limit = self.failure_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"failure_limit must be an int >= 0, got {limit!r}")
        consecutive = self.consecutive_failure_limit
        if consecutive is not None and (
            isinstance(consecutive, bool) or not isinstance(consecutive, int) or consecutive < 0
        ):
            raise ValueError(
                f"consecutive_failure_limit must be None or an int >= 0, got {consecutive!r}"
            )
        if not isinstance(self.judge, JudgeConfig):
            raise ValueError(f"judge must be a JudgeConfig, got {self.judge!r}")


def check_alpha(check: int, config: CanaryAnalysisConfig) -> float:
    """Per-metric significance level of look ``check`` (1-based, at most
    ``planned_checks``) under ``config``'s spending plan."""
    k, total = check, config.planned_checks
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= total:
        raise ValueError(f"check must be an int in [1, {total}], got {check!r}")
    share = config.false_rollback_rate / config.metrics_per_check
    if config.spending == "flat":
        return share / total
    harmonic = math.fsum(1.0 / i for i in range(1, total + 1))
    return share / (harmonic * k)


@dataclass(frozen=True)
class AnalysisDecision:
    """The analysis's answer after one check."""

    decision: Decision
    check: int
    """Looks taken so far (1-based number of this look)."""
    planned_checks: int
    alpha: float
    """Per-metric level allotted to this look."""
    verdict: Verdict
    failures: int
    """FAIL verdicts so far."""
    consecutive_failures: int
    reason: str
    judgement: Judgement
    """The judgement that decided: the first FAIL of the look, else the main one."""
    judgements: tuple[Judgement, ...]
    """All judgements of this look, the main one first."""


class CanaryAnalysis:
    """One stage's repeated checks: feed one :class:`Judgement` per evaluation interval.

    Pure (no clock; the caller decides when to check) but stateful: it counts looks and
    FAILs. Use :meth:`check` to judge windows with the right level, or :meth:`observe` for
    a judgement made with ``judge(..., alpha=analysis.next_alpha)``.
    """

    def __init__(self, config: CanaryAnalysisConfig | None = None) -> None:
        self._config = CanaryAnalysisConfig() if config is None else config
        if not isinstance(self._config, CanaryAnalysisConfig):
            raise ValueError(f"config must be an CanaryAnalysisConfig, got {config!r}")
        self._checks = 0
        self._failures = 0
        self._consecutive = 0
        self._last: AnalysisDecision | None = None

    @property
    def config(self) -> CanaryAnalysisConfig:
        return self._config

    @property
    def checks(self) -> int:
        """Looks taken so far."""
        return self._checks

    @property
    def last(self) -> AnalysisDecision | None:
        """The latest decision (None before the first look)."""
        return self._last

    @property
    def done(self) -> bool:
        """True once the decision is ROLLBACK, PASSED or INCONCLUSIVE."""
        return self._last is not None and self._last.decision is not Decision.CONTINUE

    @property
    def next_alpha(self) -> float | None:
        """Per-metric level for the next look; None once done."""
        if self.done:
            return None
        return check_alpha(self._checks + 1, self._config)

    def check(
        self,
        canary: VariantWindow,
        baseline: VariantWindow,
        *,
        recent: tuple[VariantWindow, VariantWindow] | None = None,
    ) -> AnalysisDecision:
        """Judge this look and :meth:`observe` it. Once done, returns the final decision
        without judging.

        ``canary``/``baseline``: the windows that decide PASS (recommended: cumulative since
        the stage start). ``recent``: optionally (canary, baseline) windows of the last few
        minutes, which can only add a FAIL (a regression that starts late in a long stage
        is diluted in the cumulative windows). With ``recent`` the look's level is split:
        ``config.recent_share`` of it for the recent windows, the rest for the others.
        """
        if self._last is not None and self.done:
            return self._last
        alpha = check_alpha(self._checks + 1, self._config)
        config = self._config.judge
        if recent is None:
            return self.observe(judge(canary, baseline, config, alpha=alpha))
        share = self._config.recent_share
        main = judge(canary, baseline, config, alpha=alpha * (1.0 - share))
        late = judge(recent[0], recent[1], config, alpha=alpha * share)
        return self.observe(main, late)

    def observe(self, judgement: Judgement, *recent: Judgement) -> AnalysisDecision:
        """Take one look's judgement(s) and decide.

        The first judgement decides PASS or INCONCLUSIVE; any of them can FAIL the look
        (``recent``: judgements of other windows at the same look, see :meth:`check`).
        Raises ``ValueError`` if the judgements' levels add up to more than this look's
        (that would break the false-rollback budget). Once done, returns the final
        decision unchanged.
        """
        if self._last is not None and self.done:
            return self._last
        config = self._config
        k = self._checks + 1
        total = config.planned_checks
        alpha = check_alpha(k, config)
        judgements = (judgement, *recent)
        spent = math.fsum(j.alpha for j in judgements)
        if spent > alpha * (1.0 + _ALPHA_TOLERANCE):
            raise ValueError(
                f"judgements made at alpha={spent:.3g} in total but check {k}/{total} "
                f"allots {alpha:.3g} per metric; use CanaryAnalysis.check or "
                "judge(..., alpha=analysis.next_alpha)"
            )
        self._checks = k
        at = f"check {k}/{total} (alpha {alpha:.2g} per metric)"
        failed = [j for j in judgements if j.verdict is Verdict.FAIL]
        deciding = failed[0] if failed else judgement
        outcome = deciding.verdict
        which = "" if deciding is judgement else "recent window "
        if failed:
            self._failures += 1
            self._consecutive += 1
        else:
            self._consecutive = 0
        over: list[str] = []
        if self._failures > config.failure_limit:
            over.append(f"{self._failures} FAIL > failure_limit {config.failure_limit}")
        limit = config.consecutive_failure_limit
        if limit is not None and self._consecutive > limit:
            over.append(f"{self._consecutive} consecutive FAIL > consecutive_failure_limit {limit}")
        if failed and over:
            decision = Decision.ROLLBACK
            reason = f"ROLLBACK at {at}: {which}{deciding.reason} [{'; '.join(over)}]"
        elif k >= total:
            if outcome is Verdict.PASS:
                decision = Decision.PASSED
                reason = f"PASSED after {at}: {deciding.reason}"
            else:
                decision = Decision.INCONCLUSIVE
                reason = f"INCONCLUSIVE after {at}, last verdict not PASS: {which}{deciding.reason}"
        else:
            decision = Decision.CONTINUE
            tolerated = f" [FAIL {self._failures} within failure limits]" if failed else ""
            reason = f"CONTINUE at {at}: {which}{deciding.reason}{tolerated}"
        self._last = AnalysisDecision(
            decision=decision,
            check=k,
            planned_checks=total,
            alpha=alpha,
            verdict=outcome,
            failures=self._failures,
            consecutive_failures=self._consecutive,
            reason=reason,
            judgement=deciding,
            judgements=judgements,
        )
        return self._last

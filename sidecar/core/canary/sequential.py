"""One false-rollback budget per deployment: anytime-valid sequential tests.

A *deployment* is one canary variant against one stable variant, from its first check to
a promote, a rollback or a new canary variant: every canary stage of a plan, any stage
length, and the no-plan health check however long it runs. Its false-rollback budget
(``SequentialConfig.false_rollback_rate``, 1% by default) is spent once, never renewed.

Each test is a **mixture sequential probability ratio test** (mSPRT; Robbins 1970;
Johari et al. 2017) whose evidence ``E`` is a non-negative (super)martingale under its
null hypothesis, so by Ville's inequality ``P(sup_t E_t >= 1 / alpha) <= alpha``: looks
may be taken as often as wanted, for as long as wanted, with stages of any length, and the
chance that a healthy canary is ever rolled back stays below the sum of the tests'
levels. There is nothing to exhaust: the bound holds over an unbounded horizon.

Tests between the canary and the stable serving **at the same time** (Netflix, Lindon et
al., KDD 2022, "Rapid Regression Detection in Software Deployments through Sequential
Testing": Poisson counts, conditioned on their total):

* ``error_rate``, ``timeout_rate``: in each check interval the canary sends ``n_c``
  requests and the stable ``n_b``; ``T`` events (errors, or timeouts) happened in both.
  If each arm's events are Poisson with rate ``lambda n`` and the canary's rate is
  ``theta`` times the stable's, the canary's count given ``T`` is ``Binomial(T, q)``
  with ``q = theta p / (theta p + 1 - p)``, ``p = n_c / (n_c + n_b)``. The likelihood
  ratio of ``theta`` against ``1`` is ``theta^x / (1 + p (theta - 1))^T``
  (:func:`rate_log_lr`). The null is ``theta <= 1``. With a fixed number of requests per
  arm (Bernoulli requests) the exact conditional law is hypergeometric, which is smaller
  in the convex order than that binomial (Hoeffding 1963), so the same ratio is then a
  supermartingale: still valid, slightly conservative.
* ``latency_p50``, ``latency_p95``: exceedances. In each interval the threshold is the
  **pooled** p50 (p95) of both arms' successful requests in that interval (a sketch bucket
  key); an exceedance is a request in a higher bucket. Under the null (same latency
  distribution in both arms within the interval, whatever it is and however it drifts
  between intervals) the pooled threshold does not depend on which arm a request came
  from, so the canary's exceedances given ``T`` are hypergeometric: the same ratio with
  ``p = n_c_ok / (n_c_ok + n_b_ok)`` is a supermartingale.

Test against the **baseline recorded before the rollout**, for stages with no concurrent
stable traffic (the 100% stage):

* ``baseline_error_rate``: one sample, H0: the canary's error rate ``<= r0 =
  baseline_drift x max(baseline rate, error_rate_floor)`` (the drift factor tolerates the
  diurnal drift of the error rate since the baseline was recorded); alternatives are odds
  ratios ``theta`` on ``r0``, and the ratio is ``theta^x / (1 + r0 (theta - 1))^n`` (the
  same formula, :func:`rate_log_lr`).
* ``baseline_latency``: one sample, H0: at most ``baseline_latency_share`` (5%) of the
  canary's successful requests are slower than ``max_p95_ratio x`` the baseline's p95.

Every test mixes ``rate_ratios`` (a grid from 2 to 32, equal weights): ``E = sum_j w_j
prod_i LR_i(theta_j)``. The evidence is kept as one log-likelihood sum per grid point:
plain sums over checks (a fleet's leader adds the merged windows' counts; nothing else is
needed). Besides the test started at the deployment's first check, tests start every
``start_every`` checks and the evidence is their weighted sum (:class:`Evidence`): a
regression that begins late is not diluted in hours of healthy data, under the same
budget.

Budget shares (default): errors 80%, timeouts 5%, latency 5% (p50 and p95 exceedances),
the recorded baseline 10% (its two tests).

Rollback: a test's evidence reaches ``1 / alpha_test`` **and** the canary is beyond the
judge's guard (error/timeout ratio ``> 2`` to the floor, or p50 ratio ``> 1.2`` / p95
ratio ``> 1.5``), so a significant but tiny difference is not rolled back. The guard only
removes rollbacks, so the budget holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from sidecar.core.canary.judge import JudgeConfig
from sidecar.core.canary.window import ZERO_KEY, VariantWindow

__all__ = [
    "DEFAULT_RATE_RATIOS",
    "SEQUENTIAL_TESTS",
    "TOTALS",
    "DeploymentAnalysis",
    "DeploymentDecision",
    "Evidence",
    "IntervalCounts",
    "RecordedBaseline",
    "SequentialConfig",
    "exceedances",
    "interval_counts",
    "mixture_log_e",
    "quantile_ratios",
    "rate_log_lr",
]

DEFAULT_RATE_RATIOS: Final = (2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 16.0, 22.0, 32.0)
"""The mixture's alternatives: from the guard (2x: a smaller regression is never rolled
back, so no evidence is spent on it) to 32x, roughly evenly on the log scale."""

SEQUENTIAL_TESTS: Final = (
    "error_rate",
    "timeout_rate",
    "latency_p50",
    "latency_p95",
    "baseline_error_rate",
    "baseline_latency",
)
"""The deployment's tests, in order; each has its own share of the budget."""

_SCHEMA: Final = 2
FloatArray = npt.NDArray[np.float64]


# ------------------------------------------------------------------ the statistics


def rate_log_lr(
    events: npt.ArrayLike, total: npt.ArrayLike, share: npt.ArrayLike, ratios: npt.ArrayLike
) -> FloatArray:
    """Log likelihood ratio of rate ratio ``theta`` (each of ``ratios``) against 1 for
    ``events`` canary events out of ``total``, when the canary's share under the null is
    ``share``: ``x log theta - T log(1 + p (theta - 1))``.

    That is ``binom.logpmf(x, T, q) - binom.logpmf(x, T, p)`` with ``q = theta p /
    (theta p + 1 - p)`` (the conditional Poisson test), and, with ``total = n`` requests
    and ``share = r0``, the one-sample Bernoulli ratio of odds ratio ``theta``. Broadcasts
    the counts against each other and appends the ratios as the last axis.
    """
    x = np.asarray(events, dtype=np.float64)[..., None]
    n = np.asarray(total, dtype=np.float64)[..., None]
    p = np.asarray(share, dtype=np.float64)[..., None]
    theta = np.asarray(ratios, dtype=np.float64)
    out = x * np.log(theta) - n * np.log1p(p * (theta - 1.0))
    return np.asarray(out, dtype=np.float64)


def logsumexp(values: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """``log sum exp(values)`` over `axis`, computed stably (the same as
    ``scipy.special.logsumexp``, checked in the tests; numpy only, so the controller's
    first check does not import scipy on the serving path)."""
    a = np.asarray(values, dtype=np.float64)
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - peak), axis=axis)) + np.squeeze(peak, axis=axis)
    return np.asarray(out, dtype=np.float64)


def mixture_log_e(log_lr: npt.ArrayLike, log_weights: npt.ArrayLike) -> FloatArray:
    """``log sum_j w_j exp(L_j)`` over the last axis: the mixture's log evidence."""
    return np.asarray(
        logsumexp(np.asarray(log_lr) + np.asarray(log_weights), axis=-1),
        dtype=np.float64,
    )


def exceedances(
    canary: VariantWindow, stable: VariantWindow, quantile: float
) -> tuple[int, int, int, int]:
    """``(canary above, canary successes, stable above, stable successes)``: successful
    requests in a sketch bucket above the one holding the pooled ``quantile`` of both
    windows (the threshold is a function of the pooled buckets only)."""
    cb, sb = canary.latency_buckets(), stable.latency_buckets()
    keys = np.union1d(cb.keys, sb.keys)
    if keys.size == 0:
        return 0, 0, 0, 0
    c = np.zeros(keys.size)
    s = np.zeros(keys.size)
    c[np.searchsorted(keys, cb.keys)] = cb.counts
    s[np.searchsorted(keys, sb.keys)] = sb.counts
    pooled = np.cumsum(c + s)
    rank = quantile * (pooled[-1] - 1.0)
    index = int(np.searchsorted(pooled, rank, side="right"))
    above = slice(min(index + 1, keys.size), None)
    return (
        round(float(np.sum(c[above]))),
        round(float(np.sum(c))),
        round(float(np.sum(s[above]))),
        round(float(np.sum(s))),
    )


def _above(window: VariantWindow, limit_s: float) -> tuple[int, int]:
    """(successful requests in buckets whose value is above ``limit_s``, successes)."""
    b = window.latency_buckets()
    values = np.where(b.keys == ZERO_KEY, 0.0, b.values)
    return round(float(np.sum(b.counts[values > limit_s]))), b.total


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class SequentialConfig:
    """The deployment's budget and how it is shared; validated (``ValueError``)."""

    false_rollback_rate: float = 0.01
    """Chance that a healthy deployment is ever rolled back (all stages, any length)."""
    error_share: float = 0.8
    timeout_share: float = 0.05
    latency_share: float = 0.05
    """Split evenly between ``latency_p50`` and ``latency_p95``."""
    baseline_share: float = 0.1
    """Split evenly between the two tests against the recorded baseline."""
    rate_ratios: tuple[float, ...] = DEFAULT_RATE_RATIOS
    """The mixture's alternatives (rate or odds ratios > 1), equal weights."""
    baseline_drift: float = 2.0
    """Error rate drift tolerated since the baseline was recorded (100% stage)."""
    baseline_latency_share: float = 0.05
    """Share of requests allowed above ``max_p95_ratio x`` the baseline p95."""
    late_weight: float = 0.2
    """Share of each test's evidence given to the tests started later (change points)."""
    start_every: int = 10
    """Checks between two later starts (10 minutes at the default interval)."""
    recent_starts: int = 12
    """Later starts kept (the latest; 2 hours of starts at the defaults); 0: none."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Guards, floors and minimum counts (its ``alpha`` is not used)."""

    def __post_init__(self) -> None:
        self._check_types()
        self._check_ranges()

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("judge", "rate_ratios"):
                continue
            if f.name in ("start_every", "recent_starts"):
                low = 1 if f.name == "start_every" else 0
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not low <= value <= 1000
                ):
                    raise ValueError(f"{f.name} must be an int in [{low}, 1000], got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
        if not isinstance(self.judge, JudgeConfig):
            raise ValueError(f"judge must be a JudgeConfig, got {self.judge!r}")

    def _check_ranges(self) -> None:
        if not 0.0 < self.false_rollback_rate < 1.0:
            raise ValueError(
                f"false_rollback_rate must be in (0, 1), got {self.false_rollback_rate}"
            )
        shares = (self.error_share, self.timeout_share, self.latency_share, self.baseline_share)
        if any(s <= 0.0 for s in shares) or abs(math.fsum(shares) - 1.0) > 1e-9:
            raise ValueError(f"the four shares must be > 0 and sum to 1, got {shares}")
        ratios = self.rate_ratios
        if (
            not ratios
            or len(ratios) > 64
            or any(
                isinstance(r, bool) or not isinstance(r, int | float) or not 1.0 < r < 1e6
                for r in ratios
            )
        ):
            raise ValueError(f"rate_ratios must be 1..64 numbers in (1, 1e6), got {ratios!r}")
        if self.baseline_drift < 1.0:
            raise ValueError(f"baseline_drift must be >= 1, got {self.baseline_drift}")
        if not 0.0 < self.late_weight < 1.0:
            raise ValueError(f"late_weight must be in (0, 1), got {self.late_weight}")
        if not 0.0 < self.baseline_latency_share < 0.5:
            raise ValueError(
                f"baseline_latency_share must be in (0, 0.5), got {self.baseline_latency_share}"
            )

    def alpha(self, test: str) -> float:
        """The level of one test (its share of the budget)."""
        share = {
            "error_rate": self.error_share,
            "timeout_rate": self.timeout_share,
            "latency_p50": self.latency_share / 2.0,
            "latency_p95": self.latency_share / 2.0,
            "baseline_error_rate": self.baseline_share / 2.0,
            "baseline_latency": self.baseline_share / 2.0,
        }[test]
        return self.false_rollback_rate * share


# ------------------------------------------------------------------ evidence


TOTALS: Final = ("cn", "sn", "ce", "se", "ct", "st")
"""Running totals per start: canary / stable requests, errors, timeouts."""


class Evidence:
    """The tests' evidence, vectorised over ``runs`` (the sidecar uses one run; the
    benchmark many).

    **Change points.** Besides the test started at the deployment's first check (weight
    ``1 - late_weight``), a test starts every ``start_every`` checks (the ``j``-th with
    weight ``late_weight / (j (j + 1))``; the weights sum to 1), and the evidence is the
    weighted sum of all of them. Each is a martingale with mean 1 under the null from its
    start, so the weighted sum is one too and Ville's bound holds for the sum: a
    regression that begins hours into a deployment is judged on the data since a recent
    start, not diluted in hours of healthy data, and the budget is still spent once.
    Only the first start and the latest ``recent_starts`` are kept (dropping a
    non-negative term only lowers the evidence: still valid, memory bounded).

    Per test an array ``(runs, slots, len(rate_ratios))`` of log-likelihood sums; per
    start the running totals (:data:`TOTALS`) the guards read.
    """

    def __init__(self, config: SequentialConfig, runs: int = 1) -> None:
        self.config = config
        self.log_ratios = np.log(np.asarray(config.rate_ratios, dtype=np.float64))
        self.log_weights = np.full(self.log_ratios.size, -math.log(self.log_ratios.size))
        slots = config.recent_starts + 1
        self.sums: dict[str, FloatArray] = {
            t: np.zeros((runs, slots, self.log_ratios.size)) for t in SEQUENTIAL_TESTS
        }
        self.totals: dict[str, FloatArray] = {k: np.zeros((runs, slots)) for k in TOTALS}
        self.slot_log_weight = np.full(slots, -np.inf)
        self.slot_log_weight[0] = math.log1p(-config.late_weight)
        self.slot_start = np.full(slots, -1, dtype=np.int64)
        self.slot_start[0] = 1
        self.checks = 0
        self.thresholds = {t: math.log(1.0 / config.alpha(t)) for t in SEQUENTIAL_TESTS}

    def begin_check(self) -> None:
        """Count the next check; open a new start when one is due."""
        self.checks += 1
        every = self.config.start_every
        if self.checks > 1 and (self.checks - 1) % every == 0 and self.config.recent_starts:
            j = (self.checks - 1) // every
            slot = 1 + (j - 1) % self.config.recent_starts
            for sums in self.sums.values():
                sums[:, slot, :] = 0.0
            for totals in self.totals.values():
                totals[:, slot] = 0.0
            self.slot_log_weight[slot] = math.log(self.config.late_weight / (j * (j + 1.0)))
            self.slot_start[slot] = self.checks

    def add_totals(self, **counts: npt.ArrayLike) -> None:
        """Add one interval's counts (keys of :data:`TOTALS`) to every start's totals."""
        for key, value in counts.items():
            self.totals[key] += np.asarray(value, dtype=np.float64).reshape(-1, 1)

    def _add(self, test: str, log_lr: FloatArray) -> None:
        self.sums[test] += log_lr.reshape(-1, 1, self.log_ratios.size)

    def add_two_sample(
        self,
        test: str,
        canary: npt.ArrayLike,
        canary_n: npt.ArrayLike,
        stable: npt.ArrayLike,
        stable_n: npt.ArrayLike,
    ) -> None:
        """One interval of a canary-vs-stable test: events and trials per arm."""
        c = np.asarray(canary, dtype=np.float64)
        nc = np.asarray(canary_n, dtype=np.float64)
        nb = np.asarray(stable_n, dtype=np.float64)
        total = c + np.asarray(stable, dtype=np.float64)
        both = nc + nb
        share = np.divide(nc, both, out=np.zeros_like(both), where=both > 0)
        self._add(test, rate_log_lr(c, total, share, self.config.rate_ratios))

    def add_one_sample(
        self, test: str, events: npt.ArrayLike, n: npt.ArrayLike, null_rate: npt.ArrayLike
    ) -> None:
        """One interval of a test against a null rate: ``events`` of ``n``."""
        self._add(test, rate_log_lr(events, n, null_rate, self.config.rate_ratios))

    def _per_slot(self, test: str) -> FloatArray:
        """Log of each start's weighted mixture evidence, ``(runs, slots)``."""
        mixed = mixture_log_e(self.sums[test], self.log_weights)
        return np.asarray(mixed + self.slot_log_weight, dtype=np.float64)

    def log_e(self, test: str) -> FloatArray:
        """Log evidence per run (all starts, all rate ratios)."""
        return logsumexp(self._per_slot(test), axis=-1)

    def significant(self, test: str) -> npt.NDArray[np.bool_]:
        """Evidence at or beyond ``1 / alpha_test`` per run."""
        return np.asarray(self.log_e(test) >= self.thresholds[test])

    def dominant(self, test: str) -> npt.NDArray[np.int64]:
        """Per run, the start contributing most evidence (its totals feed the guard)."""
        return np.asarray(np.argmax(self._per_slot(test), axis=-1), dtype=np.int64)

    def rate_ratio(
        self, test: str, events: str, floor: float
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(canary rate, stable rate, guard ratio) since the dominant start of ``test``;
        ``events`` is ``"e"`` (errors) or ``"t"`` (timeouts)."""
        slot = self.dominant(test)[:, None]
        cn = np.take_along_axis(self.totals["cn"], slot, axis=1)[:, 0]
        sn = np.take_along_axis(self.totals["sn"], slot, axis=1)[:, 0]
        ce = np.take_along_axis(self.totals[f"c{events}"], slot, axis=1)[:, 0]
        se = np.take_along_axis(self.totals[f"s{events}"], slot, axis=1)[:, 0]
        c_rate = ce / np.maximum(cn, 1.0)
        s_rate = se / np.maximum(sn, 1.0)
        return c_rate, s_rate, c_rate / np.maximum(s_rate, floor)


# ------------------------------------------------------------------ one deployment


@dataclass(frozen=True)
class RecordedBaseline:
    """The stable's figures recorded before the rollout (the 100% stage's reference)."""

    requests: int
    error_rate: float
    p95_s: float


@dataclass(frozen=True)
class IntervalCounts:
    """One check interval's counts (plain sums: a fleet adds its sidecars' counts)."""

    canary_requests: int
    stable_requests: int
    canary_errors: int
    stable_errors: int
    canary_timeouts: int
    stable_timeouts: int
    p50: tuple[int, int, int, int]
    """``exceedances(..., 0.5)``."""
    p95: tuple[int, int, int, int]
    canary_above_baseline: int = 0
    """Canary successes above ``max_p95_ratio x`` the baseline p95 (with a baseline)."""


def interval_counts(
    canary: VariantWindow, stable: VariantWindow, baseline_limit_s: float | None = None
) -> IntervalCounts:
    """Read one interval's counts from the two arms' windows of that interval."""
    above = _above(canary, baseline_limit_s)[0] if baseline_limit_s is not None else 0
    return IntervalCounts(
        canary.requests,
        stable.requests,
        canary.errors,
        stable.errors,
        canary.timeouts,
        stable.timeouts,
        exceedances(canary, stable, 0.5),
        exceedances(canary, stable, 0.95),
        above,
    )


@dataclass(frozen=True)
class DeploymentDecision:
    """The deployment's answer after one check."""

    rollback: bool
    enough_data: bool
    """Both arms (or the canary and a recorded baseline) have the minimum requests."""
    reason: str
    check: int
    log_e: Mapping[str, float]


class DeploymentAnalysis:
    """The sequential tests of one deployment (one run of :class:`Evidence`). Pure and
    stateful; ``to_dict`` / ``from_dict`` persist it (all plain numbers)."""

    def __init__(self, config: SequentialConfig, deployment: str) -> None:
        self.config = config
        self.deployment = deployment
        self.evidence = Evidence(config)
        self.baseline_requests = 0
        self.rolled_back = False

    @property
    def checks(self) -> int:
        return self.evidence.checks

    @property
    def totals(self) -> dict[str, int]:
        """Counts since the deployment's first check (the first start's totals)."""
        return {k: round(float(v[0, 0])) for k, v in self.evidence.totals.items()}

    # -- the check ----------------------------------------------------------------------

    def observe(
        self,
        counts: IntervalCounts,
        *,
        latency_ratios: tuple[float, float] | None = None,
        baseline: RecordedBaseline | None = None,
    ) -> DeploymentDecision:
        """Add one interval and decide. ``latency_ratios``: the canary's (p50, p95)
        ratios to the stable over the windows the guard reads (None: not measurable, the
        latency tests cannot roll back). ``baseline``: judge the canary against it too
        (stages without concurrent stable traffic)."""
        e, cfg = self.evidence, self.config
        e.begin_check()
        e.add_totals(
            cn=counts.canary_requests,
            sn=counts.stable_requests,
            ce=counts.canary_errors,
            se=counts.stable_errors,
            ct=counts.canary_timeouts,
            st=counts.stable_timeouts,
        )
        e.add_two_sample(
            "error_rate",
            counts.canary_errors,
            counts.canary_requests,
            counts.stable_errors,
            counts.stable_requests,
        )
        e.add_two_sample(
            "timeout_rate",
            counts.canary_timeouts,
            counts.canary_requests,
            counts.stable_timeouts,
            counts.stable_requests,
        )
        for test, (ca, cn, sa, sn) in (("latency_p50", counts.p50), ("latency_p95", counts.p95)):
            e.add_two_sample(test, ca, cn, sa, sn)
        base_ok = baseline is not None and baseline.requests > 0
        if baseline is not None and base_ok:
            self.baseline_requests += counts.canary_requests
            e.add_one_sample(
                "baseline_error_rate",
                counts.canary_errors,
                counts.canary_requests,
                self._baseline_rate(baseline),
            )
            e.add_one_sample(
                "baseline_latency",
                counts.canary_above_baseline,
                counts.p50[1],
                cfg.baseline_latency_share,
            )
        log_e = {test: float(e.log_e(test)[0]) for test in SEQUENTIAL_TESTS}
        failed = self._failed(log_e, latency_ratios, baseline if base_ok else None)
        t = self.totals
        minimum = cfg.judge.min_requests
        concurrent = t["cn"] >= minimum and t["sn"] >= minimum
        enough = concurrent or (base_ok and self.baseline_requests >= minimum)
        budget = f"deployment budget {cfg.false_rollback_rate:.2%}, check {self.checks}"
        if failed:
            self.rolled_back = True
            reason = f"FAIL ({budget}): " + "; ".join(failed)
        elif baseline is not None and not base_ok:
            reason = (
                f"PASS ({budget}): no stable traffic and no baseline recorded before "
                "the rollout: this stage is gate-free (duration and samples only)"
            )
        elif not enough:
            reason = (
                f"INCONCLUSIVE ({budget}): canary {t['cn']} and stable "
                f"{t['sn']} requests, {minimum} needed per arm"
            )
        else:
            strongest = max(SEQUENTIAL_TESTS, key=lambda k: log_e[k] - e.thresholds[k])
            alone = ""
            if base_ok and baseline is not None:
                alone = (
                    f" (no concurrent stable: against the baseline recorded before the rollout, "
                    f"errors <= {self._baseline_rate(baseline):.2%})"
                )
            reason = (
                f"PASS ({budget}){alone}: no regression; strongest evidence {strongest} "
                f"e={math.exp(min(log_e[strongest], 700.0)):.3g} < "
                f"{1.0 / cfg.alpha(strongest):.3g}"
            )
        gate_free = baseline is not None and not base_ok
        return DeploymentDecision(bool(failed), enough or gate_free, reason, self.checks, log_e)

    def _baseline_rate(self, baseline: RecordedBaseline) -> float:
        floor = self.config.judge.error_rate_floor
        return min(0.5, self.config.baseline_drift * max(baseline.error_rate, floor))

    def _failed(
        self,
        log_e: Mapping[str, float],
        latency: tuple[float, float] | None,
        baseline: RecordedBaseline | None,
    ) -> list[str]:
        e, j = self.evidence, self.config.judge
        out: list[str] = []

        def hit(test: str) -> bool:
            return log_e[test] >= e.thresholds[test]

        def evidence(test: str) -> str:
            value = math.exp(min(log_e[test], 700.0))
            start = int(e.slot_start[e.dominant(test)[0]])
            since = "" if start == 1 else f", since check {start}"
            return f"e={value:.3g} >= {1.0 / self.config.alpha(test):.3g}{since}"

        for test, events, floor, guard in (
            ("error_rate", "e", j.error_rate_floor, j.max_error_ratio),
            ("timeout_rate", "t", j.timeout_rate_floor, j.max_timeout_ratio),
        ):
            if not hit(test):
                continue
            c_rate, s_rate, ratio = (float(a[0]) for a in e.rate_ratio(test, events, floor))
            if ratio > guard:
                out.append(
                    f"{test} HIGH: canary {c_rate:.2%} vs stable {s_rate:.2%} "
                    f"(ratio {ratio:.3g} > {guard:g}), {evidence(test)}"
                )
        if latency is not None:
            r50, r95 = latency
            beyond = r50 > j.max_p50_ratio or r95 > j.max_p95_ratio
            for test in ("latency_p50", "latency_p95"):
                if hit(test) and beyond:
                    out.append(
                        f"{test} HIGH: canary p50 ratio {r50:.3g} (guard "
                        f"{j.max_p50_ratio:g}), p95 ratio {r95:.3g} (guard "
                        f"{j.max_p95_ratio:g}), {evidence(test)}"
                    )
                    break
        if baseline is not None:
            if hit("baseline_error_rate"):
                rate = self._baseline_rate(baseline)
                out.append(
                    f"baseline_error_rate HIGH: canary errors above {rate:.2%} "
                    f"({self.config.baseline_drift:g} x the recorded baseline "
                    f"{baseline.error_rate:.2%}), {evidence('baseline_error_rate')}"
                )
            if hit("baseline_latency"):
                out.append(
                    f"baseline_latency HIGH: more than "
                    f"{self.config.baseline_latency_share:.0%} of canary requests slower "
                    f"than {j.max_p95_ratio:g} x the recorded p95 "
                    f"{baseline.p95_s * 1000:.3g} ms, {evidence('baseline_latency')}"
                )
        return out

    # -- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        e = self.evidence
        return {
            "schema": _SCHEMA,
            "deployment": self.deployment,
            "checks": e.checks,
            "rolled_back": self.rolled_back,
            "baseline_requests": self.baseline_requests,
            "rate_ratios": list(self.config.rate_ratios),
            "slots": e.slot_log_weight.size,
            "slot_start": e.slot_start.tolist(),
            "slot_log_weight": [
                None if not math.isfinite(w) else w for w in e.slot_log_weight.tolist()
            ],
            "totals": {k: v[0].tolist() for k, v in e.totals.items()},
            "sums": {k: v[0].tolist() for k, v in e.sums.items()},
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any], config: SequentialConfig) -> DeploymentAnalysis:
        """Restore; ``ValueError`` when the data does not fit ``config`` (another grid or
        number of starts, a missing test, a non-finite number)."""
        if data.get("schema") != _SCHEMA:
            raise ValueError(f"unknown canary checkpoint schema {data.get('schema')!r}")
        if [float(r) for r in data["rate_ratios"]] != [float(r) for r in config.rate_ratios]:
            raise ValueError("the checkpoint was made with other rate_ratios")
        out = DeploymentAnalysis(config, str(data["deployment"]))
        e = out.evidence
        if int(data["slots"]) != e.slot_log_weight.size:
            raise ValueError("the checkpoint was made with another recent_starts")
        e.checks = int(data["checks"])
        out.rolled_back = bool(data["rolled_back"])
        out.baseline_requests = int(data["baseline_requests"])
        e.slot_start[:] = [int(v) for v in data["slot_start"]]
        e.slot_log_weight[:] = [-np.inf if w is None else float(w) for w in data["slot_log_weight"]]
        for key in TOTALS:
            row = np.asarray([float(v) for v in data["totals"][key]], dtype=np.float64)
            if row.shape != e.totals[key][0].shape or not np.all(np.isfinite(row)):
                raise ValueError(f"checkpoint totals {key} do not fit")
            e.totals[key][0] = row
        for test in SEQUENTIAL_TESTS:
            rows = np.asarray(data["sums"][test], dtype=np.float64)
            if rows.shape != e.sums[test][0].shape or not np.all(np.isfinite(rows)):
                raise ValueError(f"checkpoint sums of {test} do not fit")
            e.sums[test][0] = rows
        return out


def quantile_ratios(
    canary: VariantWindow, stable: VariantWindow, floor_s: float
) -> tuple[float, float] | None:
    """The canary's (p50, p95) over the stable's (each at least ``floor_s``); None when
    either window has no latency."""
    c50, c95 = canary.quantile(0.5), canary.quantile(0.95)
    s50, s95 = stable.quantile(0.5), stable.quantile(0.95)
    if c50 is None or c95 is None or s50 is None or s95 is None:
        return None
    return c50 / max(s50, floor_s), c95 / max(s95, floor_s)

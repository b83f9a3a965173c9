"""Canary judge simulation: the sidecar's judge + analysis against a naive error-rate rule.

Run: ``.venv/bin/python bench/canary_judge.py`` (writes ``bench/results/canary_judge.json``;
``--quick`` runs a tenth of the runs for iterating, and does not write the results).

One run is one 2-hour canary stage: 100 requests/s in total (Poisson per second), 5% of
them to the canary (binomial per second), a check every minute (120 checks). Both rules see
the same simulated traffic, recorded through the real ``RollingWindows`` (10-s buckets,
30-min horizon) and read back through the real ``VariantWindow``/``CumulativeWindows``;
the judge is the real ``CanaryAnalysis`` (``judge`` at the per-check level of its
alpha-spending plan). Time is virtual: no sleeping.

* judge: ``CanaryAnalysis()`` defaults (harmonic alpha spending of a 1% false-rollback
  budget over 120 checks x 3 metrics, roll back on the first FAIL), judging the canary's
  and the stable's windows cumulative since the stage start and, once the stage is older
  than 10 minutes, also the last 10 minutes (``check(..., recent=...)``, half the look's
  level each).
* naive: roll back when the canary's error rate over the last 5 minutes exceeds 2x the
  stable's (same 5-minute window; shorter while the stage is younger than 5 minutes).

Scenarios (the regression, if any, starts with the stage): healthy (0.1% errors, a fifth of
them DEADLINE_EXCEEDED, lognormal latency with median 20 ms and sigma 0.5, same as stable);
canary at 1.0% errors; canary at 0.5% errors; canary at 3x latency. A "design" section
runs alternative judge designs (no recent window; flat Bonferroni spending; sliding
5-minute windows only; two FAILs in a row) on the same traffic of the regression
scenarios plus a late regression (1.0% errors from minute 60), to show why the defaults
were chosen. (The false-rollback bound holds for every one of them by construction; the
main section measures it for the default.)

Deployment budget (issue #15; what the controller uses): ``--deployment-only`` runs just
these sections and merges them into the existing JSON. ``deployment``: healthy deployments
through the default plan end to end (5% / 25% / 50% / 100% stages, each held 1-4x its
planned time, the 100% stage judged against the baseline recorded before the rollout) and
through the no-plan health check for 24 h, 1000 runs each; every rollback is false.
``equal_traffic``: 5 req/s per variant, a 10x error regression (0.1% -> 1%), a 3x latency
regression, healthy canaries for 4 h. ``deployment.detection``: the 5/95 split and late
regressions. Simulated at the level of the tests' inputs (one interval's counts per check:
requests, errors, timeouts per arm, pooled-quantile exceedances drawn from their exact
null law, or, for 3x latency, from multinomial counts over the sketch's buckets),
vectorised over runs with the sidecar's own ``Evidence``; the first 40 runs of the 10x
scenario are replayed through ``DeploymentAnalysis`` and must decide at the same minute.

Fast path, exact in distribution: per-second counts are generated with numpy and summed per
minute; each minute's requests of one variant are recorded with one ``record_many`` call
per status at the minute's start. Successful requests' latencies are drawn as multinomial
counts over the sketch's own 1% buckets (the probability of each bucket under the
lognormal), which is what per-request recording into the sketch would hold. Checks fall on
minute boundaries and windows hold whole minutes, so the judge sees what it would see with
per-request recording.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from ddsketch.mapping import LogarithmicMapping
from scipy import special

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.core.canary import (  # noqa: E402
    CanaryAnalysis,
    CanaryAnalysisConfig,
    CumulativeWindows,
    Decision,
    DeploymentAnalysis,
    IntervalCounts,
    RollingWindows,
    SequentialConfig,
    check_alpha,
)
from sidecar.core.canary.sequential import SEQUENTIAL_TESTS, Evidence  # noqa: E402
from sidecar.core.stats import wilson_interval  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "canary_judge.json"

SEED = 20_250_301
TOTAL_RPS = 100.0
CANARY_WEIGHT = 0.05
STAGE_S = 7200
CHECK_S = 60
BUCKET_S = 10.0
HORIZON_S = 1800.0
NAIVE_SPAN_S = 300.0
NAIVE_RATIO = 2.0
LATENCY_MEDIAN_S = 0.020
LATENCY_SIGMA = 0.5
BASE_ERROR_RATE = 0.001
TIMEOUT_SHARE = 0.2  # of the baseline errors, DEADLINE_EXCEEDED
RELATIVE_ACCURACY = 0.01
WORKERS = 2

STATUSES = ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL")


@dataclass(frozen=True)
class Scenario:
    name: str
    runs: int
    canary_error_rate: float = BASE_ERROR_RATE
    canary_latency_factor: float = 1.0
    onset_s: int = 0
    """When the regression starts (seconds into the stage)."""

    @property
    def healthy(self) -> bool:
        """No regression: the canary behaves like the stable."""
        return self.canary_error_rate == BASE_ERROR_RATE and self.canary_latency_factor == 1.0

    stop_when_all_rolled_back: bool = True


SCENARIOS = (
    Scenario("healthy", 600),
    Scenario("errors_1pct", 1000, canary_error_rate=0.01),
    Scenario("errors_0_5pct", 400, canary_error_rate=0.005),
    Scenario("latency_3x", 400, canary_latency_factor=3.0),
)
DESIGN_SCENARIOS = (
    Scenario("errors_1pct", 300, canary_error_rate=0.01),
    Scenario("errors_0_5pct", 200, canary_error_rate=0.005),
    Scenario("latency_3x", 100, canary_latency_factor=3.0),
    Scenario("errors_1pct_from_60min", 100, canary_error_rate=0.01, onset_s=3600),
)
RECENT_SPAN_S = 600.0


# ------------------------------------------------------------------ traffic


def status_probabilities(error_rate: float) -> npt.NDArray[np.float64]:
    """P(OK), P(UNAVAILABLE), P(DEADLINE_EXCEEDED), P(INTERNAL): the baseline's errors
    (a fifth timeouts) plus, for a regressed canary, extra INTERNAL errors."""
    timeouts = BASE_ERROR_RATE * TIMEOUT_SHARE
    unavailable = BASE_ERROR_RATE - timeouts
    internal = max(0.0, error_rate - BASE_ERROR_RATE)
    return np.array([1.0 - error_rate, unavailable, timeouts, internal])


@dataclass(frozen=True)
class LatencyGrid:
    """The sketch's buckets over the simulated latency range, with each bucket's
    representative value (what the sketch reports for it)."""

    values: npt.NDArray[np.float64]
    log_lower: npt.NDArray[np.float64]
    log_upper: npt.NDArray[np.float64]

    def probabilities(self, median_s: float) -> npt.NDArray[np.float64]:
        mu = math.log(median_s)
        upper = special.ndtr((self.log_upper - mu) / LATENCY_SIGMA)
        lower = special.ndtr((self.log_lower - mu) / LATENCY_SIGMA)
        p = np.asarray(upper - lower, dtype=np.float64)
        p[0] += float(lower[0])  # fold the far tails into the end buckets
        p[-1] += 1.0 - float(upper[-1])
        return np.asarray(p / p.sum(), dtype=np.float64)


def latency_grid() -> LatencyGrid:
    mapping = LogarithmicMapping(RELATIVE_ACCURACY)
    lo = mapping.key(LATENCY_MEDIAN_S * math.exp(-9 * LATENCY_SIGMA))
    hi = mapping.key(LATENCY_MEDIAN_S * 3.0 * math.exp(9 * LATENCY_SIGMA))
    keys = np.arange(lo, hi + 1, dtype=np.float64)
    values = np.array([mapping.value(int(k)) for k in keys], dtype=np.float64)
    assert all(mapping.key(float(v)) == int(k) for k, v in zip(keys, values, strict=True))
    log_gamma = math.log(mapping.gamma)
    return LatencyGrid(values, (keys - 1.0) * log_gamma, keys * log_gamma)


@dataclass(frozen=True)
class Minute:
    """One minute of one variant's traffic: requests per status, OK latencies per bucket."""

    status_counts: npt.NDArray[np.int64]
    latency_counts: npt.NDArray[np.int64]


def simulate_traffic(
    rng: np.random.Generator, scenario: Scenario, grid: LatencyGrid
) -> dict[str, list[Minute]]:
    minutes = STAGE_S // CHECK_S
    per_second = rng.poisson(TOTAL_RPS, STAGE_S)
    canary_per_second = rng.binomial(per_second, CANARY_WEIGHT)
    canary = canary_per_second.reshape(minutes, CHECK_S).sum(axis=1)
    stable = (per_second - canary_per_second).reshape(minutes, CHECK_S).sum(axis=1)
    out: dict[str, list[Minute]] = {}
    regressed = np.arange(minutes) * CHECK_S >= scenario.onset_s
    for variant, counts, error_rate, factor in (
        ("canary", canary, scenario.canary_error_rate, scenario.canary_latency_factor),
        ("stable", stable, BASE_ERROR_RATE, 1.0),
    ):
        status_p = np.where(
            regressed[:, None],
            status_probabilities(error_rate),
            status_probabilities(BASE_ERROR_RATE),
        )
        latency_p = np.where(
            regressed[:, None],
            grid.probabilities(LATENCY_MEDIAN_S * factor),
            grid.probabilities(LATENCY_MEDIAN_S),
        )
        by_status = rng.multinomial(counts, status_p)
        latencies = rng.multinomial(by_status[:, 0], latency_p)
        out[variant] = [Minute(by_status[m], latencies[m]) for m in range(minutes)]
    return out


def record_minute(
    rolling: RollingWindows, variant: str, now: float, minute: Minute, grid: LatencyGrid
) -> None:
    nonzero = np.flatnonzero(minute.latency_counts)
    rolling.record_many(variant, now, "OK", grid.values[nonzero], minute.latency_counts[nonzero])
    for status, count in zip(STATUSES[1:], minute.status_counts[1:].tolist(), strict=True):
        if count:
            rolling.record_many(variant, now, status, [0.0], [count])


# ------------------------------------------------------------------ rules


class Rule:
    """A rollback rule evaluated once per check; remembers when it rolled back."""

    name: str

    def __init__(self) -> None:
        self.rolled_back_at: float | None = None
        self.final = ""
        self.reason = ""

    def evaluate(self, rolling: RollingWindows, cumulative: CumulativeWindows, now: float) -> None:
        raise NotImplementedError

    @property
    def active(self) -> bool:
        return self.rolled_back_at is None and self.final == ""


class JudgeRule(Rule):
    """The real ``CanaryAnalysis``. ``span_s`` None: windows cumulative since the stage
    start, else sliding windows of ``span_s``; ``recent_s``: also judge the last
    ``recent_s`` seconds once the stage is older than that (splitting the look's level)."""

    def __init__(
        self, name: str, config: CanaryAnalysisConfig, span_s: float | None, recent_s: float | None
    ) -> None:
        super().__init__()
        self.name = name
        self.analysis = CanaryAnalysis(config)
        self.span_s = span_s
        self.recent_s = recent_s

    def evaluate(self, rolling: RollingWindows, cumulative: CumulativeWindows, now: float) -> None:
        if self.span_s is None:
            canary, stable = cumulative.window("canary"), cumulative.window("stable")
        else:
            canary = rolling.window("canary", now, self.span_s)
            stable = rolling.window("stable", now, self.span_s)
        recent = None
        if self.recent_s is not None and now - cumulative.start > self.recent_s:
            recent = (
                rolling.window("canary", now, self.recent_s),
                rolling.window("stable", now, self.recent_s),
            )
        decision = self.analysis.check(canary, stable, recent=recent)
        if decision.decision is Decision.ROLLBACK:
            self.rolled_back_at = now
            self.reason = decision.reason
        elif decision.decision is not Decision.CONTINUE:
            self.final = decision.decision.value


class NaiveRule(Rule):
    name = "naive"

    def evaluate(self, rolling: RollingWindows, cumulative: CumulativeWindows, now: float) -> None:
        canary = rolling.window("canary", now, NAIVE_SPAN_S)
        stable = rolling.window("stable", now, NAIVE_SPAN_S)
        c, s = canary.error_rate, stable.error_rate
        if c is not None and s is not None and c > NAIVE_RATIO * s:
            self.rolled_back_at = now
            self.reason = f"canary {c:.3%} > {NAIVE_RATIO:g} x stable {s:.3%}"


def default_rules() -> list[Rule]:
    return [JudgeRule("judge", CanaryAnalysisConfig(), None, RECENT_SPAN_S), NaiveRule()]


def design_rules() -> list[Rule]:
    two_in_a_row = CanaryAnalysisConfig(consecutive_failure_limit=1, failure_limit=10**6)
    return [
        JudgeRule("judge", CanaryAnalysisConfig(), None, RECENT_SPAN_S),
        JudgeRule("cumulative_only", CanaryAnalysisConfig(), None, None),
        JudgeRule("flat_spending", CanaryAnalysisConfig(spending="flat"), None, RECENT_SPAN_S),
        JudgeRule("sliding_5min_only", CanaryAnalysisConfig(), NAIVE_SPAN_S, None),
        JudgeRule("two_fails_in_a_row", two_in_a_row, None, RECENT_SPAN_S),
    ]


RULE_SETS: dict[str, Callable[[], list[Rule]]] = {"main": default_rules, "design": design_rules}


# ------------------------------------------------------------------ one run


def run_stage(job: tuple[str, Scenario, int]) -> dict[str, Any]:
    """Simulate one stage; returns each rule's rollback time (None) and final decision."""
    rule_set, scenario, index = job
    # The same seed for a scenario name and run index in every rule set: same traffic.
    seed = np.random.SeedSequence(SEED, spawn_key=(sum(map(ord, scenario.name)), index))
    rng = np.random.default_rng(seed)
    grid = latency_grid()
    traffic = simulate_traffic(rng, scenario, grid)
    rolling = RollingWindows(BUCKET_S, HORIZON_S, relative_accuracy=RELATIVE_ACCURACY)
    cumulative = CumulativeWindows(0.0)
    rules = RULE_SETS[rule_set]()
    minutes = STAGE_S // CHECK_S
    for m in range(minutes):
        start = float(m * CHECK_S)
        for variant in ("canary", "stable"):
            record_minute(rolling, variant, start, traffic[variant][m], grid)
        now = start + CHECK_S
        cumulative.advance(rolling, now)
        for rule in rules:
            if rule.active:
                rule.evaluate(rolling, cumulative, now)
        if scenario.stop_when_all_rolled_back and all(r.rolled_back_at is not None for r in rules):
            break
    return {
        r.name: {
            "rolled_back_at": r.rolled_back_at,
            "final": r.final or None,
            "onset_s": None if scenario.healthy else scenario.onset_s,
            "reason": r.reason or None,
            "run": index,
        }
        for r in rules
    }


# ------------------------------------------------------------------ summaries


def fraction(count: int, runs: int) -> dict[str, Any]:
    ci = wilson_interval(count, runs, 0.05)
    return {"count": count, "runs": runs, "rate": count / runs, "ci95": [ci.lower, ci.upper]}


def summarise(outcomes: Sequence[dict[str, Any]], rule: str) -> dict[str, Any]:
    runs = len(outcomes)
    onset = outcomes[0][rule]["onset_s"]  # None: healthy, every rollback is false
    times = [o[rule]["rolled_back_at"] for o in outcomes]

    def is_false(t: float | None) -> bool:
        return t is not None and (onset is None or t <= onset)

    # Minutes from the regression's onset (healthy: the stage start) to the rollback;
    # for a regression, rollbacks before the onset are false and not counted as detections.
    early = sum(1 for t in times if is_false(t))
    start = 0.0 if onset is None else float(onset)
    minutes = np.array(
        [(t - start) / 60.0 for t in times if t is not None and (onset is None or t > onset)]
    )
    rolled = int(minutes.size)
    if onset is None:
        rolled, early = early, 0  # report healthy rollbacks once, as rollbacks
    within = {
        f"within_{w}min": (int(np.count_nonzero(minutes <= w)) / runs) for w in (1, 2, 5, 10, 30)
    }
    finals: dict[str, int] = {}
    for o in outcomes:
        key = o[rule]["final"] or ("ROLLBACK" if o[rule]["rolled_back_at"] is not None else "-")
        finals[key] = finals.get(key, 0) + 1
    # Median time to detect over all runs (undetected runs count as never): defined when
    # more than half the runs rolled back.
    ordered = np.sort(np.concatenate([minutes, np.full(runs - rolled, np.inf)]))
    median = float(np.median(ordered)) if rolled * 2 > runs else None
    return {
        "runs": runs,
        "rolled_back": fraction(rolled + early, runs),
        "rolled_back_before_onset": early / runs,
        "onset_minute": None if onset is None else onset / 60.0,
        "median_minutes_to_rollback": median,
        "mean_minutes_to_rollback_when_rolled_back": float(minutes.mean()) if rolled else None,
        **within,
        "outcomes": dict(sorted(finals.items())),
        # Why the first few false rollbacks (healthy, or before the onset) happened.
        "false_rollback_examples": [
            {
                "run": o[rule]["run"],
                "minute": o[rule]["rolled_back_at"] / 60.0,
                "reason": o[rule]["reason"],
            }
            for o in outcomes
            if is_false(o[rule]["rolled_back_at"])
        ][:5],
    }


def run_all(
    rule_set: str, scenarios: Sequence[Scenario], scale: float, pool: ProcessPoolExecutor
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios:
        runs = max(10, round(scenario.runs * scale))
        jobs = [(rule_set, scenario, i) for i in range(runs)]
        t0 = time.perf_counter()
        out[scenario.name] = list(pool.map(run_stage, jobs, chunksize=max(1, runs // 40)))
        print(
            f"  {rule_set:6s} {scenario.name:14s} {runs:5d} runs {time.perf_counter() - t0:6.1f} s",
            flush=True,
        )
    return out


def headline(summary: dict[str, dict[str, Any]], rule: str) -> dict[str, Any]:
    healthy = summary["healthy"][rule]
    e1 = summary["errors_1pct"][rule]
    e05 = summary["errors_0_5pct"][rule]
    lat = summary["latency_3x"][rule]
    return {
        "false_rollback_rate": healthy["rolled_back"]["rate"],
        "false_rollback_ci95": healthy["rolled_back"]["ci95"],
        "detect_1pct_within_5min": e1["within_5min"],
        "detect_latency3x_within_2min": lat["within_2min"],
        "detect_0_5pct": {
            "median_minutes": e05["median_minutes_to_rollback"],
            "within_5min": e05["within_5min"],
            "within_10min": e05["within_10min"],
            "within_30min": e05["within_30min"],
            "ever": e05["rolled_back"]["rate"],
        },
        "runs": {name: s[rule]["runs"] for name, s in summary.items()},
    }


def fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.1f}"


def print_table(heads: dict[str, dict[str, Any]]) -> None:
    rules = list(heads)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("false rollback (healthy, 2 h)", lambda h: fmt(h["false_rollback_rate"])),
        ("1.0% errors: rolled back <= 5 min", lambda h: fmt(h["detect_1pct_within_5min"])),
        ("0.5% errors: median minutes", lambda h: fmt(h["detect_0_5pct"]["median_minutes"], False)),
        ("0.5% errors: <= 5 min", lambda h: fmt(h["detect_0_5pct"]["within_5min"])),
        ("0.5% errors: <= 10 min", lambda h: fmt(h["detect_0_5pct"]["within_10min"])),
        ("0.5% errors: <= 30 min", lambda h: fmt(h["detect_0_5pct"]["within_30min"])),
        ("3x latency: rolled back <= 2 min", lambda h: fmt(h["detect_latency3x_within_2min"])),
    ]
    print(f"\n{'':36s}" + "".join(f"{r:>12s}" for r in rules))
    for label, get in rows:
        print(f"{label:36s}" + "".join(f"{get(heads[r]):>12s}" for r in rules))


# ------------------------------------------------------------------ one budget per deployment
#
# The sidecar's default since issue #15: ``DeploymentAnalysis`` (sidecar/core/canary/
# sequential.py), simulated at the level of its inputs: each check interval's counts
# (requests, errors, timeouts per arm; successes above the pooled p50 / p95), vectorised
# over runs with the same ``Evidence`` class the sidecar uses (one row per run).

PLAN_STAGES = ((0.05, 900), (0.25, 900), (0.50, 1800), (1.00, 1800))
"""The default plan's canary stages: (canary share, planned seconds)."""
STRETCH = (1.0, 4.0)
"""Each stage of a plan run lasts its planned time x U(1, 4), in whole minutes."""
NO_PLAN_S = 24 * 3600
DEPLOYMENT_RUNS = 1000
EQUAL_RPS = 5.0  # per variant
EQUAL_RUNS = 2000
EQUAL_LATENCY_RUNS = 1000
EQUAL_HEALTHY_S = 4 * 3600


def _p_above(limit_s: float, median_s: float) -> float:
    return float(special.ndtr(-(math.log(limit_s / median_s)) / LATENCY_SIGMA))


class BatchDeployment:
    """The sidecar's deployment rule over ``runs`` runs at once: its ``Evidence`` (with
    the change-point starts) and the rate guards since each test's dominant start.
    Latency guards are taken as always exceeded (that only makes false rollbacks more
    likely: an upper bound)."""

    def __init__(self, runs: int, config: SequentialConfig) -> None:
        self.config = config
        self.e = Evidence(config, runs)
        self.rolled_at = np.full(runs, np.nan)
        self.why = np.full(runs, "", dtype=object)

    def check(
        self,
        now: float,
        c: dict[str, npt.NDArray[Any]],
        baseline_rate: npt.NDArray[np.float64] | None = None,
        alone: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """One check. ``baseline_rate``/``alone``: runs in a stage with no concurrent
        stable traffic are also judged against their recorded baseline."""
        e, j = self.e, self.config.judge
        e.begin_check()
        e.add_totals(**{k: c[k] for k in ("cn", "sn", "ce", "se", "ct", "st")})
        e.add_two_sample("error_rate", c["ce"], c["cn"], c["se"], c["sn"])
        e.add_two_sample("timeout_rate", c["ct"], c["cn"], c["st"], c["sn"])
        e.add_two_sample("latency_p50", c["c50"], c["cok"], c["s50"], c["sok"])
        e.add_two_sample("latency_p95", c["c95"], c["cok"], c["s95"], c["sok"])
        hits: list[tuple[str, npt.NDArray[np.bool_]]] = []
        for test, ev, floor, guard in (
            ("error_rate", "e", j.error_rate_floor, j.max_error_ratio),
            ("timeout_rate", "t", j.timeout_rate_floor, j.max_timeout_ratio),
        ):
            ratio = e.rate_ratio(test, ev, floor)[2]
            hits.append((test, e.significant(test) & (ratio > guard)))
        hits.append(("latency_p50", e.significant("latency_p50")))
        hits.append(("latency_p95", e.significant("latency_p95")))
        if baseline_rate is not None and alone is not None:
            e.add_one_sample(
                "baseline_error_rate", np.where(alone, c["ce"], 0), np.where(alone, c["cn"], 0),
                baseline_rate,
            )  # fmt: skip
            e.add_one_sample(
                "baseline_latency", np.where(alone, c["cab"], 0), np.where(alone, c["cok"], 0),
                self.config.baseline_latency_share,
            )  # fmt: skip
            hits.append(("baseline_error_rate", alone & e.significant("baseline_error_rate")))
            hits.append(("baseline_latency", alone & e.significant("baseline_latency")))
        fresh = np.isnan(self.rolled_at)
        for test, hit in hits:
            new = fresh & hit
            self.rolled_at[new] = now
            self.why[new] = test
            fresh &= ~hit


def interval_traffic(
    rng: np.random.Generator,
    seconds: float,
    canary_rps: npt.NDArray[np.float64],
    stable_rps: npt.NDArray[np.float64],
    canary_error: float,
    baseline_limit_p: float,
) -> dict[str, npt.NDArray[Any]]:
    """One check interval of healthy-latency traffic for every run (vectorised): counts,
    and exceedances of the pooled p50 / p95 drawn from their exact null law (the pooled
    threshold does not depend on the arms: hypergeometric)."""
    cn = rng.poisson(canary_rps * seconds)
    sn = rng.poisson(stable_rps * seconds)
    ce = rng.binomial(cn, canary_error)
    se = rng.binomial(sn, BASE_ERROR_RATE)
    ct = rng.binomial(ce, min(1.0, BASE_ERROR_RATE * TIMEOUT_SHARE / canary_error))
    st = rng.binomial(se, TIMEOUT_SHARE)
    cok, sok = cn - ce, sn - se
    out = {"cn": cn, "sn": sn, "ce": ce, "se": se, "ct": ct, "st": st, "cok": cok, "sok": sok}
    total = cok + sok
    for name, q in (("50", 0.5), ("95", 0.95)):
        above = np.floor((1.0 - q) * total).astype(np.int64)
        x = rng.hypergeometric(np.maximum(cok, 0), np.maximum(sok, 0), np.minimum(above, total))
        out[f"c{name}"] = x
        out[f"s{name}"] = above - x
    out["cab"] = rng.binomial(cok, baseline_limit_p)
    return out


def deployment_section(scale: float) -> dict[str, Any]:
    """Healthy deployments: the default plan end to end (every canary stage, each held
    1-4x its planned time, the 100% stage against the baseline recorded before) and the
    no-plan health check for 24 h. Every rollback is false."""
    config = SequentialConfig()
    runs = max(50, round(DEPLOYMENT_RUNS * scale))
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(15, 1)))
    p95 = LATENCY_MEDIAN_S * math.exp(1.6448536269514722 * LATENCY_SIGMA)
    limit_p = _p_above(config.judge.max_p95_ratio * p95, LATENCY_MEDIAN_S)
    t0 = time.perf_counter()
    # The plan: per run, each stage's length in whole checks.
    stretch = rng.uniform(*STRETCH, size=(runs, len(PLAN_STAGES)))
    lengths = np.ceil(stretch * np.array([s for _, s in PLAN_STAGES]) / CHECK_S).astype(int)
    ends = np.cumsum(lengths, axis=1)
    # The baseline recorded before the rollout: the stable's last `lookback` (5 min) at 100%.
    base_n = rng.poisson(TOTAL_RPS * 300.0, size=runs)
    base_rate = rng.binomial(base_n, BASE_ERROR_RATE) / base_n
    null_rate = np.minimum(
        0.5, config.baseline_drift * np.maximum(base_rate, config.judge.error_rate_floor)
    )
    plan = BatchDeployment(runs, config)
    for k in range(int(ends[:, -1].max())):
        stage = np.minimum((k >= ends).sum(axis=1), len(PLAN_STAGES))
        active = stage < len(PLAN_STAGES)
        share = np.array([w for w, _ in PLAN_STAGES] + [0.0])[stage]
        c_rps = np.where(active, TOTAL_RPS * share, 0.0)
        s_rps = np.where(active, TOTAL_RPS * (1.0 - share), 0.0)
        counts = interval_traffic(rng, CHECK_S, c_rps, s_rps, BASE_ERROR_RATE, limit_p)
        alone = active & (share >= 1.0)
        plan.check((k + 1) * CHECK_S, counts, null_rate, alone)
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    no_plan = BatchDeployment(runs, config)
    c_rps = np.full(runs, TOTAL_RPS * CANARY_WEIGHT)
    s_rps = np.full(runs, TOTAL_RPS * (1.0 - CANARY_WEIGHT))
    for k in range(NO_PLAN_S // CHECK_S):
        counts = interval_traffic(rng, CHECK_S, c_rps, s_rps, BASE_ERROR_RATE, limit_p)
        no_plan.check((k + 1) * CHECK_S, counts)
    no_plan_s = time.perf_counter() - t0
    out: dict[str, Any] = {}
    for name, batch, extra in (
        ("plan", plan, {"stage_minutes_mean": (lengths * CHECK_S / 60).mean(axis=0).tolist()}),
        ("no_plan_24h", no_plan, {}),
    ):
        rolled = ~np.isnan(batch.rolled_at)
        whys: dict[str, int] = {}
        for w in batch.why[rolled].tolist():
            whys[w] = whys.get(w, 0) + 1
        out[name] = {
            **fraction(int(rolled.sum()), runs),
            "by_test": whys,
            "minutes": sorted((batch.rolled_at[rolled] / 60).tolist())[:20],
            **extra,
        }
    worst = max(out.values(), key=lambda v: v["ci95"][1])
    print(
        f"  deployment plan {out['plan']['count']}/{runs} ({plan_s:.1f} s), no-plan 24 h "
        f"{out['no_plan_24h']['count']}/{runs} ({no_plan_s:.1f} s)",
        flush=True,
    )
    return {
        "false_rollback_rate": worst["rate"],
        "false_rollback_ci_upper": worst["ci95"][1],
        "headline": "the worse of the two paths (plan, no-plan 24 h)",
        "runs_per_path": runs,
        "budget": config.false_rollback_rate,
        "test_levels": {t: config.alpha(t) for t in SEQUENTIAL_TESTS},
        "rate_ratios": list(config.rate_ratios),
        "plan_stages": [{"canary_share": w, "planned_s": s} for w, s in PLAN_STAGES],
        "stage_stretch": list(STRETCH),
        "latency_guard": "assumed exceeded (upper bound on false rollbacks)",
        "paths": out,
        "elapsed_s": plan_s + no_plan_s,
    }


def _bucket_exceed(c: npt.NDArray[Any], s: npt.NDArray[Any], q: float) -> tuple[Any, Any]:
    """Per run (rows): canary and stable counts above the bucket of the pooled quantile
    (the sidecar's ``exceedances`` on the same buckets)."""
    pooled = np.cumsum(c + s, axis=1)
    rank = q * (pooled[:, -1] - 1.0)
    index = (pooled <= rank[:, None]).sum(axis=1)
    above = np.arange(c.shape[1])[None, :] > index[:, None]
    return (c * above).sum(axis=1), (s * above).sum(axis=1)


def _quantile(counts: npt.NDArray[Any], values: npt.NDArray[np.float64], q: float) -> Any:
    cum = np.cumsum(counts, axis=1)
    rank = q * (cum[:, -1] - 1.0)
    index = np.minimum((cum <= rank[:, None]).sum(axis=1), counts.shape[1] - 1)
    return values[index]


def equal_traffic_section(scale: float) -> dict[str, Any]:
    """5 requests/s per variant (a 50/50 split of 10/s), a check every minute, the
    deployment rule with its defaults: a 10x error regression (0.1% -> 1%), a 3x latency
    regression, and healthy canaries for 4 h."""
    config = SequentialConfig()
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(15, 2)))
    p95 = LATENCY_MEDIAN_S * math.exp(1.6448536269514722 * LATENCY_SIGMA)
    limit_p = _p_above(config.judge.max_p95_ratio * p95, LATENCY_MEDIAN_S)
    t0 = time.perf_counter()
    runs = max(100, round(EQUAL_RUNS * scale))
    rps = np.full(runs, EQUAL_RPS)
    batch = BatchDeployment(runs, config)
    history: list[dict[str, Any]] = []
    for k in range(30):
        counts = interval_traffic(rng, CHECK_S, rps, rps, 0.01, limit_p)
        history.append(counts)
        batch.check((k + 1) * CHECK_S, counts)
    minutes = np.where(np.isnan(batch.rolled_at), np.inf, batch.rolled_at / 60.0)
    # The sidecar's own DeploymentAnalysis on the first runs' counts: same decisions.
    agree = 0
    for r in range(min(40, runs)):
        real = DeploymentAnalysis(config, "check")
        at = math.inf
        for k, c in enumerate(history):
            counts_r = IntervalCounts(
                int(c["cn"][r]), int(c["sn"][r]), int(c["ce"][r]), int(c["se"][r]),
                int(c["ct"][r]), int(c["st"][r]),
                (int(c["c50"][r]), int(c["cok"][r]), int(c["s50"][r]), int(c["sok"][r])),
                (int(c["c95"][r]), int(c["cok"][r]), int(c["s95"][r]), int(c["sok"][r])),
            )  # fmt: skip
            if real.observe(counts_r, latency_ratios=(10.0, 10.0)).rollback:
                at = k + 1.0
                break
        agree += at == minutes[r]
    assert agree == min(40, runs), f"vectorised and real rule disagree ({agree})"
    errors_s = time.perf_counter() - t0
    # 3x latency: bucket counts drawn over the sketch's own buckets.
    t0 = time.perf_counter()
    grid = latency_grid()
    lat_runs = max(100, round(EQUAL_LATENCY_RUNS * scale))
    lat = BatchDeployment(lat_runs, config)
    c_cum = np.zeros((lat_runs, grid.values.size))
    s_cum = np.zeros((lat_runs, grid.values.size))
    p_slow, p_base = (
        grid.probabilities(LATENCY_MEDIAN_S * 3.0),
        grid.probabilities(LATENCY_MEDIAN_S),
    )
    lat_rolled = np.full(lat_runs, np.nan)
    for k in range(5):
        lrps = np.full(lat_runs, EQUAL_RPS)
        counts = interval_traffic(rng, CHECK_S, lrps, lrps, BASE_ERROR_RATE, limit_p)
        c_b = rng.multinomial(counts["cok"], p_slow).astype(np.float64)
        s_b = rng.multinomial(counts["sok"], p_base).astype(np.float64)
        c_cum += c_b
        s_cum += s_b
        for name, q in (("50", 0.5), ("95", 0.95)):
            counts[f"c{name}"], counts[f"s{name}"] = _bucket_exceed(c_b, s_b, q)
        lat.check((k + 1) * CHECK_S, counts)
        r50 = _quantile(c_cum, grid.values, 0.5) / _quantile(s_cum, grid.values, 0.5)
        r95 = _quantile(c_cum, grid.values, 0.95) / _quantile(s_cum, grid.values, 0.95)
        guard = (r50 > config.judge.max_p50_ratio) | (r95 > config.judge.max_p95_ratio)
        sig = lat.e.significant("latency_p50") | lat.e.significant("latency_p95")
        new = np.isnan(lat_rolled) & sig & guard
        lat_rolled[new] = k + 1.0
    latency_s = time.perf_counter() - t0
    # Healthy canaries at equal traffic, 4 h.
    t0 = time.perf_counter()
    healthy = BatchDeployment(runs, config)
    for k in range(EQUAL_HEALTHY_S // CHECK_S):
        healthy.check(
            (k + 1) * CHECK_S,
            interval_traffic(rng, CHECK_S, rps, rps, BASE_ERROR_RATE, limit_p),
            None,
        )
    healthy_s = time.perf_counter() - t0
    false = int((~np.isnan(healthy.rolled_at)).sum())
    within = {w: float(np.mean(minutes <= w)) for w in (1, 2, 3, 4, 5, 10, 15, 30)}
    detected_lat = np.where(np.isnan(lat_rolled), np.inf, lat_rolled)
    print(
        f"  equal traffic: 10x median {np.median(minutes):.1f} min, <=10 min {within[10]:.3f}; "
        f"3x latency <=2 min {np.mean(detected_lat <= 2):.3f}; healthy 4 h {false}/{runs}",
        flush=True,
    )
    return {
        "canary_rps": EQUAL_RPS,
        "stable_rps": EQUAL_RPS,
        "check_every_s": CHECK_S,
        "detect_10x_median_min": float(np.median(minutes)),
        "detect_10x_within_5min": within[5],
        "detect_10x_within_10min": within[10],
        "detect_10x_within_10min_ci95": fraction(int(np.sum(minutes <= 10)), runs)["ci95"],
        "detect_10x_within": {str(w): v for w, v in within.items()},
        "detect_10x_runs": runs,
        "detect_latency3x_within_1min": float(np.mean(detected_lat <= 1)),
        "detect_latency3x_within_2min": float(np.mean(detected_lat <= 2)),
        "detect_latency3x_runs": lat_runs,
        "healthy_4h_false_rollback": fraction(false, runs),
        "vectorised_equals_sidecar_rule_runs": min(40, runs),
        "elapsed_s": errors_s + latency_s + healthy_s,
    }


def _detect_errors(
    rng: np.random.Generator, runs: int, canary_rps: float, stable_rps: float,
    rate: float, onset_min: int, after_min: int,
) -> dict[str, Any]:  # fmt: skip
    """Minutes from the onset of an error regression (``rate`` from minute ``onset_min``)
    to the deployment rule's rollback; healthy before."""
    config = SequentialConfig()
    batch = BatchDeployment(runs, config)
    c_rps, s_rps = np.full(runs, canary_rps), np.full(runs, stable_rps)
    for k in range(onset_min + after_min):
        r = rate if k >= onset_min else BASE_ERROR_RATE
        batch.check((k + 1) * CHECK_S, interval_traffic(rng, CHECK_S, c_rps, s_rps, r, 0.0))
    t = batch.rolled_at / 60.0 - onset_min
    early = int(np.sum(t <= 0))
    t = np.where(np.isnan(t) | (t <= 0), np.inf, t)
    return {
        "runs": runs,
        "canary_rps": canary_rps,
        "stable_rps": stable_rps,
        "canary_error_rate": rate,
        "onset_minute": onset_min,
        "median_min": float(np.median(t)),
        **{f"within_{w}min": float(np.mean(t <= w)) for w in (2, 5, 10, 30, 60)},
        "rolled_back_before_onset": early / runs,
    }


def late_and_split_section(scale: float) -> dict[str, Any]:
    """The deployment rule on the 5/95 split of the per-stage scenarios (regression from
    the start) and on regressions that begin late in a long no-plan deployment."""
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(15, 3)))
    runs = max(50, round(500 * scale))
    c5, s95 = TOTAL_RPS * CANARY_WEIGHT, TOTAL_RPS * (1.0 - CANARY_WEIGHT)
    t0 = time.perf_counter()
    out = {
        "split_5_95_errors_1pct": _detect_errors(rng, runs, c5, s95, 0.01, 0, 60),
        "split_5_95_errors_0_5pct": _detect_errors(rng, runs, c5, s95, 0.005, 0, 60),
        "late_5_95_errors_1pct_from_60min": _detect_errors(rng, runs, c5, s95, 0.01, 60, 60),
        "late_5_95_errors_1pct_from_6h": _detect_errors(rng, runs, c5, s95, 0.01, 360, 60),
        "late_5_95_errors_1pct_from_24h": _detect_errors(rng, runs, c5, s95, 0.01, 1440, 60),
        "late_equal_errors_1pct_from_6h": _detect_errors(
            rng, runs, EQUAL_RPS, EQUAL_RPS, 0.01, 360, 60
        ),
    }
    for name, row in out.items():
        print(f"  {name:36s} median {row['median_min']:5.1f} min, <=10 min "
              f"{row['within_10min']:.3f}, <=30 min {row['within_30min']:.3f}",
              flush=True)  # fmt: skip
    out["elapsed_s"] = time.perf_counter() - t0
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a tenth of the runs; no JSON")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument(
        "--deployment-only",
        action="store_true",
        help="only the deployment and equal_traffic sections, merged into the existing JSON",
    )
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    t0 = time.perf_counter()
    deployment = deployment_section(scale)
    equal = equal_traffic_section(scale)
    deployment["detection"] = late_and_split_section(scale)
    if args.deployment_only:
        if args.quick:
            print("(--quick: results not written)")
            return
        kept = json.loads(RESULTS.read_text())
        kept["deployment"] = deployment
        kept["equal_traffic"] = equal
        RESULTS.write_text(json.dumps(kept, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)} (deployment, equal_traffic)")
        return
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        main_runs = run_all("main", SCENARIOS, scale, pool)
        design_runs = run_all("design", DESIGN_SCENARIOS, scale, pool)
    elapsed = time.perf_counter() - t0

    summary = {
        name: {rule: summarise(outs, rule) for rule in outs[0]} for name, outs in main_runs.items()
    }
    design = {
        name: {rule: summarise(outs, rule) for rule in outs[0]}
        for name, outs in design_runs.items()
    }
    heads = {rule: headline(summary, rule) for rule in ("judge", "naive")}
    print_table(heads)
    print("\ndesign alternatives (same traffic per scenario and run index):")
    columns = (
        ("before onset", "errors_1pct_from_60min", "rolled_back_before_onset"),
        ("1%<=5min", "errors_1pct", "within_5min"),
        ("0.5% med", "errors_0_5pct", "median_minutes_to_rollback"),
        ("0.5%<=10", "errors_0_5pct", "within_10min"),
        ("3x<=2min", "latency_3x", "within_2min"),
        ("late med", "errors_1pct_from_60min", "median_minutes_to_rollback"),
        ("late<=10", "errors_1pct_from_60min", "within_10min"),
    )
    print(f"{'':20s}" + "".join(f"{c[0]:>12s}" for c in columns))
    for rule in design["errors_1pct"]:
        cells = []
        for _, scenario_name, key in columns:
            row = design[scenario_name][rule]
            value = row[key]
            cells.append(fmt(value, pct=not key.startswith("median")))
        print(f"{rule:20s}" + "".join(f"{c:>12s}" for c in cells))
    print(f"\nelapsed {elapsed:.1f} s with {args.workers} workers")

    config = CanaryAnalysisConfig()
    result = {
        "seed": SEED,
        "elapsed_s": elapsed,
        "workers": args.workers,
        "parameters": {
            "total_rps": TOTAL_RPS,
            "canary_weight": CANARY_WEIGHT,
            "stage_s": STAGE_S,
            "check_every_s": CHECK_S,
            "checks": STAGE_S // CHECK_S,
            "bucket_s": BUCKET_S,
            "horizon_s": HORIZON_S,
            "latency": {
                "distribution": "lognormal",
                "median_s": LATENCY_MEDIAN_S,
                "sigma": LATENCY_SIGMA,
            },
            "baseline_error_rate": BASE_ERROR_RATE,
            "baseline_timeout_share_of_errors": TIMEOUT_SHARE,
            "scenarios": {
                s.name: {
                    "canary_error_rate": s.canary_error_rate,
                    "canary_latency_factor": s.canary_latency_factor,
                    "runs": s.runs,
                }
                for s in SCENARIOS
            },
            "judge": {
                "window": "cumulative since stage start (CumulativeWindows)",
                "planned_checks": config.planned_checks,
                "false_rollback_budget": config.false_rollback_rate,
                "spending": config.spending,
                "alpha_check_1": check_alpha(1, config),
                "alpha_check_5": check_alpha(5, config),
                "alpha_check_120": check_alpha(config.planned_checks, config),
                "failure_limit": config.failure_limit,
                "judge_config": {
                    k: getattr(config.judge, k) for k in config.judge.__dataclass_fields__
                },
            },
            "naive": {"window_s": NAIVE_SPAN_S, "ratio": NAIVE_RATIO},
        },
        "judge": heads["judge"],
        "naive": heads["naive"],
        "scenarios": summary,
        "design_alternatives": design,
        "deployment": deployment,
        "equal_traffic": equal,
    }
    if args.quick:
        print("(--quick: results not written)")
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

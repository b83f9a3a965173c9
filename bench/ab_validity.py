"""A/B validity simulation for the sidecar's statistics core.

Run: ``.venv/bin/python bench/ab_validity.py`` (writes ``bench/results/ab_validity.json``).

What it measures, with fixed seeds and vectorised numpy:

1. A/A false-positive rate: 10,000 experiments at 10% conversion in both arms, a look every
   500 users per arm up to 20,000 per arm (40 looks). The sidecar's anytime-valid verdict
   (mSPRT, alpha 0.05; a false positive is any look whose verdict is Ship B or Keep A) is set
   next to naive peeking (pooled z-test at every look, reject the first time p < 0.05).
2. Power for 10% -> 11% with the same look schedule, truncated at 20,000 per arm and at the
   planner's inflated horizon, plus the planner's closed-form power bound next to the
   simulated power, and the fixed-horizon z-test at the fixed-horizon sample size.
3. Robustness: A/A at 2% and 50% conversion (tau^2 tuned to the 20,000 horizon), A/A with a
   100x larger tau^2, and A/A with a look every 50 users per arm (400 looks).
4. Users (``users``): 2,000 A/A runs where users have Beta-distributed propensities around
   10% (intra-user correlation drawn per run from [0.05, 0.3]) and send 1 + Poisson(9.5)
   requests each (mean 10.5; the ledger counts at most 20 per user), spread uniformly over
   the experiment, with 100 looks. The sidecar's user-level analysis (user buckets, delta
   method, the same mSPRT) is set next to the request-level analysis on the same data, and
   its power for a 10% relative lift (10% -> 11%) is measured on 2,000 more runs. Two runs
   are replayed through `ExperimentTracker` itself and must agree to 1e-9.

Every figure is computed here from simulated data; nothing is hard-coded.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sidecar.core.experiment import (  # noqa: E402
    ExperimentSettings,
    ExperimentTracker,
    MetricSpec,
)
from sidecar.core.stats import (  # noqa: E402
    plan_sequential,
    sample_size_per_arm,
    sequential_paths,
    sequential_paths_estimates,
    sequential_power_lower_bound,
    sequential_update,
    sequential_verdict,
    start_sequential,
    two_proportion_ztest,
    wilson_interval,
)
from sidecar.core.stats.buckets import DEFAULT_BUCKETS, ratio_from_buckets  # noqa: E402
from sidecar.core.stats.sequential import (  # noqa: E402
    DEFAULT_MIN_EVENTS,
    Verdict,
    optimal_mixing_ratio,
)

RESULTS = ROOT / "bench" / "results" / "ab_validity.json"

RUNS = 10_000
ALPHA = 0.05
POWER = 0.80
BASELINE = 0.10
LIFT = 0.01  # absolute: 10% -> 11%
LOOK_EVERY = 500
MAX_N = 20_000
SEED_AA = 20_240_601
SEED_POWER = 20_240_602
SEED_FIXED = 20_240_603
SEED_ROBUST = 20_240_604
SEED_USERS = 20_261_202
USER_RUNS = 2_000
USERS_PER_ARM = 8_000
USER_LOOKS = 100
USER_CHUNK = 25
ICC_RANGE = (0.05, 0.3)
REQUESTS_EXTRA_MEAN = 9.5  # requests per user: 1 + Poisson(9.5)
PER_KEY_CAP = 20  # the ledger's default max_per_key: outcomes counted per user
MIN_USERS = 100  # ExperimentSettings.min_users (default)
Z_CRIT = float(-special.ndtri(ALPHA / 2))  # two-sided critical value of the naive z-test

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def look_schedule(look_every: int, max_n: int) -> IntArray:
    """Users per arm at each look: every ``look_every`` up to ``max_n`` (``max_n`` included)."""
    looks = list(range(look_every, max_n + 1, look_every))
    if looks[-1] != max_n:
        looks.append(max_n)
    return np.asarray(looks, dtype=np.int64)


def cumulative_successes(
    rng: np.random.Generator, runs: int, schedule: IntArray, rate: float
) -> IntArray:
    """Cumulative conversions at each look for ``runs`` independent arms."""
    increments = np.diff(schedule, prepend=0)
    draws = rng.binomial(increments[np.newaxis, :], rate, size=(runs, schedule.size))
    return np.cumsum(draws, axis=1, dtype=np.int64)


def pooled_z(sc: IntArray, st: IntArray, n: IntArray) -> npt.NDArray[np.float64]:
    """Vectorised pooled two-proportion z (treatment minus control), equal arm sizes."""
    nf = n.astype(np.float64)
    pooled = (sc + st) / (2.0 * nf)
    se = np.sqrt(pooled * (1.0 - pooled) * (2.0 / nf))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (st - sc) / nf / np.where(se > 0, se, 1.0), 0.0)
    return z


@dataclass(frozen=True)
class Rate:
    count: int
    runs: int
    rate: float
    lower: float
    upper: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "runs": self.runs,
            "rate": self.rate,
            "ci_lower": self.lower,
            "ci_upper": self.upper,
        }


def rate(flags: BoolArray) -> Rate:
    count = int(np.count_nonzero(flags))
    runs = int(flags.size)
    ci = wilson_interval(count, runs, 0.05)
    return Rate(count, runs, count / runs, ci.lower, ci.upper)


@dataclass(frozen=True)
class ArmPaths:
    schedule: IntArray
    control: IntArray
    treatment: IntArray


def simulate(
    seed: int, runs: int, schedule: IntArray, rate_control: float, rate_treatment: float
) -> ArmPaths:
    rng = np.random.default_rng(seed)
    control = cumulative_successes(rng, runs, schedule, rate_control)
    treatment = cumulative_successes(rng, runs, schedule, rate_treatment)
    return ArmPaths(schedule, control, treatment)


@dataclass(frozen=True)
class SidecarOutcome:
    ever_significant: BoolArray  # any look with Ship B / Keep A, per run
    first_decision: npt.NDArray[np.str_]  # first non-Continue verdict (stopping rule)
    significant_by_look: BoolArray  # (runs, looks): rejected at or before the look


def run_sidecar(paths: ArmPaths, tau_squared: float, minimum_effect: float) -> SidecarOutcome:
    n = np.broadcast_to(paths.schedule, paths.control.shape)
    res = sequential_paths(
        paths.control, n, paths.treatment, n, tau_squared=tau_squared, alpha=ALPHA
    )
    ship = res.ci_lower > 0.0
    keep = res.ci_upper < 0.0
    significant = ship | keep
    # p < alpha and "interval excludes 0" are the same event; check it on every look.
    assert np.array_equal(significant, res.p_value < ALPHA), "p-value / interval disagree"
    equivalent = (res.ci_lower > -minimum_effect) & (res.ci_upper < minimum_effect) & ~significant
    decided = significant | equivalent
    any_decided = decided.any(axis=1)
    first = np.argmax(decided, axis=1)
    rows = np.arange(decided.shape[0])
    label = np.where(
        ~any_decided,
        "continue",
        np.where(ship[rows, first], "ship_b", np.where(keep[rows, first], "keep_a", "equivalent")),
    )
    ever: BoolArray = np.asarray(significant.any(axis=1), dtype=np.bool_)
    return SidecarOutcome(ever, label, significant)


def run_naive(paths: ArmPaths) -> tuple[BoolArray, BoolArray]:
    """Naive peeking: reject at the first look with pooled-z p < alpha."""
    z = pooled_z(
        paths.control, paths.treatment, np.broadcast_to(paths.schedule, paths.control.shape)
    )
    by_look = np.logical_or.accumulate(np.abs(z) > Z_CRIT, axis=1)
    return by_look[:, -1], by_look


def cross_check(paths: ArmPaths, tau_squared: float, minimum_effect: float, rows: int) -> None:
    """The vectorised path must agree with the streaming API and the scalar z-test."""
    n = paths.schedule
    res = sequential_paths(
        paths.control[:rows], n, paths.treatment[:rows], n, tau_squared=tau_squared, alpha=ALPHA
    )
    z = pooled_z(paths.control[:rows], paths.treatment[:rows], np.broadcast_to(n, (rows, n.size)))
    for i in range(rows):
        state = start_sequential(tau_squared, ALPHA)
        for k in range(n.size):
            look = sequential_update(
                state, int(paths.control[i, k]), int(n[k]), int(paths.treatment[i, k]), int(n[k])
            )
            state = look.state
            assert math.isclose(state.p_value, res.p_value[i, k], rel_tol=1e-12, abs_tol=1e-15)
            assert math.isclose(state.ci_lower, res.ci_lower[i, k], abs_tol=1e-15)
            assert math.isclose(state.ci_upper, res.ci_upper[i, k], abs_tol=1e-15)
            zt = two_proportion_ztest(
                int(paths.control[i, k]), int(n[k]), int(paths.treatment[i, k]), int(n[k])
            )
            assert math.isclose(zt.statistic, z[i, k], rel_tol=1e-9, abs_tol=1e-12)
        decision = sequential_verdict(look, minimum_effect)
        assert isinstance(decision.verdict, Verdict)


# --------------------------------------------------------------------------- users


@dataclass
class UserChunk:
    """Cumulative per-look totals of a chunk of runs, shaped (runs, arm, looks, buckets)."""

    y: npt.NDArray[np.float64]
    n: npt.NDArray[np.float64]
    users: npt.NDArray[np.float64]
    requests_sent: int
    users_total: int
    icc: npt.NDArray[np.float64]
    # (runs, arm, user) -> per-request arrays of one run, kept for the replay check
    replay: list[tuple[npt.NDArray[np.int64], ...]]


def simulate_users(
    rng: np.random.Generator, runs: int, rates: tuple[float, float], keep: int
) -> UserChunk:
    """Users with Beta propensities and Poisson request counts; requests at uniform times,
    binned into the looks; whole users hashed (here: drawn) into buckets."""
    k, looks, u = DEFAULT_BUCKETS, USER_LOOKS, USERS_PER_ARM
    icc = rng.uniform(*ICC_RANGE, size=runs)
    shape = (runs, 2, looks, k)
    y = np.zeros(shape)
    n = np.zeros(shape)
    users = np.zeros(shape)
    sent = 0
    replay: list[tuple[npt.NDArray[np.int64], ...]] = []
    for arm, mean in enumerate(rates):
        ab = 1.0 / icc - 1.0  # Beta(a, b) with a + b = 1/icc - 1 has correlation icc
        p = rng.beta((mean * ab)[:, None], ((1.0 - mean) * ab)[:, None], size=(runs, u))
        m = 1 + rng.poisson(REQUESTS_EXTRA_MEAN, size=(runs, u))
        sent += int(m.sum())
        counted = np.minimum(m, PER_KEY_CAP)
        bucket = rng.integers(0, k, size=(runs, u))
        user_of = np.repeat(np.arange(runs * u), counted.ravel())
        t = rng.random(user_of.size)
        # (beyond the cap a user's requests are not counted: only `counted` are drawn)
        # sort each user's times, so its first request opens the user (users per look)
        order = np.lexsort((t, user_of))
        t = t[order]
        look = np.minimum((t * looks).astype(np.int64), looks - 1)
        hit = rng.random(user_of.size) < p.ravel()[user_of]
        run = user_of // u
        b = bucket.ravel()[user_of]
        flat = ((run * 2 + arm) * looks + look) * k + b
        size = runs * 2 * looks * k
        y += np.bincount(flat, weights=hit, minlength=size).reshape(shape)
        n += np.bincount(flat, minlength=size).reshape(shape)
        starts = np.concatenate(([0], np.cumsum(counted.ravel())[:-1]))
        first_look = look[starts]  # times are sorted within a user: its first request
        uflat = ((np.arange(runs * u) // u * 2 + arm) * looks + first_look) * k + bucket.ravel()
        users += np.bincount(uflat, minlength=size).reshape(shape)
        for r in range(min(keep, runs)):
            sel = run == r
            replay.append((np.full(int(sel.sum()), arm), look[sel], b[sel], hit[sel], user_of[sel]))
    return UserChunk(
        np.cumsum(y, axis=2),
        np.cumsum(n, axis=2),
        np.cumsum(users, axis=2),
        sent,
        2 * runs * u,
        icc,
        replay,
    )


@dataclass
class UserDecisions:
    user_level: BoolArray  # per run: any look with Ship B / Keep A (user-level)
    request_level: BoolArray
    p_value: npt.NDArray[np.float64]  # (runs, looks): user-level running p
    lower: npt.NDArray[np.float64]
    upper: npt.NDArray[np.float64]
    design_effect: npt.NDArray[np.float64]  # per run, at the last look


def analyse_users(chunk: UserChunk, tau2: float) -> UserDecisions:
    est = ratio_from_buckets(chunk.y, chunk.n)  # (runs, arm, looks)
    d = est.ratio[:, 1] - est.ratio[:, 0]
    s2 = est.variance[:, 0] + est.variance[:, 1]
    successes = chunk.y.sum(axis=-1)
    outcomes = chunk.n.sum(axis=-1)
    users = chunk.users.sum(axis=-1)
    m = DEFAULT_MIN_EVENTS
    evaluated = (
        (users >= MIN_USERS).all(axis=1)
        & (successes >= m).all(axis=1)
        & (outcomes - successes >= m).all(axis=1)
    )
    p, lo, hi = sequential_paths_estimates(d, s2, evaluated, tau2, ALPHA)
    user_level = ((lo > 0.0) | (hi < 0.0)).any(axis=1)
    sc = successes[:, 0].astype(np.int64)
    st = successes[:, 1].astype(np.int64)
    nc = outcomes[:, 0].astype(np.int64)
    nt = outcomes[:, 1].astype(np.int64)
    req = sequential_paths(sc, nc, st, nt, tau_squared=tau2, alpha=ALPHA)
    request_level = ((req.ci_lower > 0.0) | (req.ci_upper < 0.0)).any(axis=1)
    pa, pb = sc[:, -1] / nc[:, -1], st[:, -1] / nt[:, -1]
    naive = pa * (1 - pa) / nc[:, -1] + pb * (1 - pb) / nt[:, -1]
    return UserDecisions(
        np.asarray(user_level, dtype=np.bool_),
        np.asarray(request_level, dtype=np.bool_),
        p,
        lo,
        hi,
        s2[:, -1] / naive,
    )


def replay_through_tracker(chunk: UserChunk, decisions: UserDecisions, tau2: float) -> int:
    """Feed a kept run outcome by outcome through `ExperimentTracker` (unit = the bucket,
    new_user on a user's first outcome), look at every look boundary, and require the same
    running p-value and interval as the vectorised path (1e-9). Returns the runs checked."""
    spec = MetricSpec("click", "bool", LIFT, baseline=BASELINE)
    checked = 0
    for r in range(len(chunk.replay) // 2):
        tracker = ExperimentTracker(ExperimentSettings(metrics=(spec,), min_users=MIN_USERS))
        epoch = tracker.sync("A", "B", {"A": 5000, "B": 5000}, 0.0)
        assert tracker.report(0.0).metrics[0].tau_squared == tau2
        parts = [chunk.replay[r], chunk.replay[len(chunk.replay) // 2 + r]]
        arm = np.concatenate([x[0] for x in parts])
        look = np.concatenate([x[1] for x in parts])
        bucket = np.concatenate([x[2] for x in parts])
        hit = np.concatenate([x[3] for x in parts])
        user = np.concatenate([x[4] + i * 10**9 for i, x in enumerate(parts)])
        order = np.argsort(look, kind="stable")
        seen: set[int] = set()
        pos = 0
        for j in range(USER_LOOKS):
            while pos < order.size and look[order[pos]] == j:
                i = order[pos]
                uid = int(user[i])
                tracker.outcome(
                    epoch,
                    "AB"[int(arm[i])],
                    "",
                    "click",
                    bool(hit[i]),
                    unit=int(bucket[i]),
                    keyless=False,
                    new_user=uid not in seen,
                )
                seen.add(uid)
                pos += 1
            tracker.look(float(j))
            m = tracker.report(float(j), history=False).metrics[0]
            assert math.isclose(m.p_value, decisions.p_value[r, j], rel_tol=1e-9, abs_tol=1e-12)
            for ours, want in (
                (m.difference.lower, decisions.lower[r, j]),
                (m.difference.upper, decisions.upper[r, j]),
            ):
                assert math.isclose(ours, float(np.clip(want, -1.0, 1.0)), abs_tol=1e-9)
        checked += 1
    return checked


def users_section(tau2: float) -> dict[str, Any]:
    rng = np.random.default_rng(SEED_USERS)
    results: dict[str, list[npt.NDArray[np.generic]]] = {
        k: [] for k in ("aa_user", "aa_request", "power_user", "power_request", "de", "icc")
    }
    sent = users_total = 0
    replayed = 0
    for label, rates in (("aa", (BASELINE, BASELINE)), ("power", (BASELINE, BASELINE * 1.1))):
        for start in range(0, USER_RUNS, USER_CHUNK):
            keep = 1 if (start == 0) else 0
            chunk = simulate_users(rng, min(USER_CHUNK, USER_RUNS - start), rates, keep)
            dec = analyse_users(chunk, tau2)
            if keep:
                replayed += replay_through_tracker(chunk, dec, tau2)
            results[f"{label}_user"].append(dec.user_level)
            results[f"{label}_request"].append(dec.request_level)
            if label == "aa":
                results["de"].append(dec.design_effect)
                results["icc"].append(chunk.icc)
                sent += chunk.requests_sent
                users_total += chunk.users_total
    aa_user = rate(np.concatenate(results["aa_user"]))
    aa_req = rate(np.concatenate(results["aa_request"]))
    pw_user = rate(np.concatenate(results["power_user"]))
    pw_req = rate(np.concatenate(results["power_request"]))
    de = np.concatenate(results["de"])
    return {
        "runs": USER_RUNS,
        "power_runs": USER_RUNS,
        "seed": SEED_USERS,
        "users_per_arm": USERS_PER_ARM,
        "mean_requests_per_user": sent / users_total,
        "per_key_cap": PER_KEY_CAP,
        "intra_user_correlation_range": list(ICC_RANGE),
        "looks": USER_LOOKS,
        "buckets": DEFAULT_BUCKETS,
        "min_users": MIN_USERS,
        "tau_squared": tau2,
        "aa_false_decision_rate": aa_user.rate,
        "aa_false_decision_ci_upper": aa_user.upper,
        "aa_false_decision": aa_user.as_dict(),
        "request_level_aa_false_decision_rate": aa_req.rate,
        "request_level_aa_false_decision": aa_req.as_dict(),
        "power_10pct_relative": pw_user.rate,
        "power_10pct_relative_ci": [pw_user.lower, pw_user.upper],
        "request_level_power_10pct_relative": pw_req.rate,
        "design_effect_median": float(np.median(de)),
        "design_effect_range": [float(de.min()), float(de.max())],
        "runs_replayed_through_tracker": replayed,
    }


def main() -> int:
    t0 = time.perf_counter()
    plan = plan_sequential(BASELINE, LIFT, alpha=ALPHA, power=POWER)
    fixed = sample_size_per_arm(BASELINE, LIFT, alpha=ALPHA, power=POWER)
    tau2 = plan.tau_squared
    schedule = look_schedule(LOOK_EVERY, MAX_N)

    # 1. A/A at 10%.
    aa = simulate(SEED_AA, RUNS, schedule, BASELINE, BASELINE)
    cross_check(aa, tau2, LIFT, rows=25)
    side_aa = run_sidecar(aa, tau2, LIFT)
    naive_aa, _ = run_naive(aa)
    side_fp = rate(side_aa.ever_significant)
    stop_fp = rate(np.isin(side_aa.first_decision, ["ship_b", "keep_a"]))
    equivalent = rate(side_aa.first_decision == "equivalent")
    naive_fp = rate(naive_aa)

    # 2. Power for 10% -> 11%: one simulation up to the planner's horizon; truncations of it.
    horizon = max(plan.n_per_arm, MAX_N)
    power_schedule = look_schedule(LOOK_EVERY, horizon)
    pw = simulate(SEED_POWER, RUNS, power_schedule, BASELINE, BASELINE + LIFT)
    side_pw = run_sidecar(pw, tau2, LIFT)
    _, naive_by_look = run_naive(pw)
    at_max = int(np.searchsorted(power_schedule, MAX_N))
    power_at_max = rate(side_pw.significant_by_look[:, at_max])
    power_at_plan = rate(side_pw.significant_by_look[:, -1])
    ship_at_plan = rate(side_pw.first_decision == "ship_b")
    curve = side_pw.significant_by_look.mean(axis=0)
    reach = np.flatnonzero(curve >= POWER)
    empirical_n = int(power_schedule[reach[0]]) if reach.size else None
    bound_at_max = sequential_power_lower_bound(MAX_N, BASELINE, LIFT, tau2, ALPHA)
    naive_power_at_max = rate(naive_by_look[:, at_max])

    # Fixed-horizon z-test at its own sample size (one look).
    rng = np.random.default_rng(SEED_FIXED)
    n_fix = np.array([fixed.n_per_arm], dtype=np.int64)
    sc = rng.binomial(fixed.n_per_arm, BASELINE, size=(RUNS, 1)).astype(np.int64)
    st = rng.binomial(fixed.n_per_arm, BASELINE + LIFT, size=(RUNS, 1)).astype(np.int64)
    z_fix = pooled_z(sc, st, np.broadcast_to(n_fix, sc.shape))[:, 0]
    fixed_power = rate(np.abs(z_fix) > Z_CRIT)

    # 3. Robustness: other baselines and a 100x larger tau^2 (both put more weight on early,
    # small-count looks, where the plug-in variance is least accurate), and denser looks.
    robust: dict[str, dict[str, object]] = {}
    r_star = optimal_mixing_ratio(ALPHA)
    scenarios = [
        # (name, baseline, tau^2)
        ("aa_baseline_0.02", 0.02, r_star * 2 * 0.02 * 0.98 / MAX_N),
        ("aa_baseline_0.5", 0.50, r_star * 2 * 0.50 * 0.50 / MAX_N),
        ("aa_tau_squared_x100", BASELINE, 100 * tau2),
    ]
    for i, (name, base, tau_sq) in enumerate(scenarios):
        paths = simulate(SEED_ROBUST + i, RUNS, schedule, base, base)
        fp = rate(run_sidecar(paths, tau_sq, base * 0.1).ever_significant)
        robust[name] = {
            "baseline": base,
            "tau_squared": tau_sq,
            "tau_squared_source": "r* V / 20000 (tuned to this horizon)"
            if name != "aa_tau_squared_x100"
            else "100 x the main tau^2",
            "look_every": LOOK_EVERY,
            "max_n_per_arm": MAX_N,
            "false_positive": fp.as_dict(),
        }
    fine = look_schedule(50, MAX_N)
    fine_paths = simulate(SEED_ROBUST + 10, RUNS, fine, BASELINE, BASELINE)
    fine_fp = rate(run_sidecar(fine_paths, tau2, LIFT).ever_significant)
    fine_naive = rate(run_naive(fine_paths)[0])
    robust["aa_look_every_50"] = {
        "baseline": BASELINE,
        "tau_squared": tau2,
        "look_every": 50,
        "looks": int(fine.size),
        "max_n_per_arm": MAX_N,
        "false_positive": fine_fp.as_dict(),
        "naive_peeking_false_positive": fine_naive.as_dict(),
    }
    t_users = time.perf_counter()
    users = users_section(tau2)
    users_seconds = time.perf_counter() - t_users
    users["elapsed_seconds"] = round(users_seconds, 2)
    elapsed = time.perf_counter() - t0

    result = {
        "runs": RUNS,
        "seeds": {"aa": SEED_AA, "power": SEED_POWER, "fixed": SEED_FIXED, "robust": SEED_ROBUST},
        "parameters": {
            "alpha": ALPHA,
            "power_target": POWER,
            "baseline": BASELINE,
            "minimum_effect": LIFT,
            "tau_squared": tau2,
            "tau_squared_source": "plan_sequential(0.10, 0.01, alpha=0.05, power=0.8)",
            "min_events": DEFAULT_MIN_EVENTS,
            "look_every": LOOK_EVERY,
            "looks": int(schedule.size),
            "max_n_per_arm": MAX_N,
        },
        "sidecar": {
            "aa_false_positive_rate": side_fp.rate,
            "aa_false_positive_ci_lower": side_fp.lower,
            "aa_false_positive_ci_upper": side_fp.upper,
            "aa_false_positives": side_fp.count,
            "aa_false_positive_rate_stop_at_first_verdict": stop_fp.rate,
            "aa_equivalent_rate": equivalent.rate,
            "power_10_to_11": power_at_max.rate,
            "power_10_to_11_ci": [power_at_max.lower, power_at_max.upper],
            "power_10_to_11_max_n_per_arm": MAX_N,
            "power_10_to_11_lower_bound_formula": bound_at_max,
            "planned_n_per_arm": plan.n_per_arm,
            "planned_inflation": plan.inflation,
            "planned_power_lower_bound": plan.planned_power,
            "power_10_to_11_at_planned_n": power_at_plan.rate,
            "power_10_to_11_at_planned_n_ci": [power_at_plan.lower, power_at_plan.upper],
            "ship_b_rate_at_planned_n_stop_at_first_verdict": ship_at_plan.rate,
            "planned_power_reached": bool(power_at_plan.lower >= POWER),
            "planned_looks": int(power_schedule.size),
            "smallest_simulated_n_with_target_power": empirical_n,
        },
        "naive_peeking": {
            "aa_false_positive_rate": naive_fp.rate,
            "aa_false_positive_ci_lower": naive_fp.lower,
            "aa_false_positive_ci_upper": naive_fp.upper,
            "power_10_to_11": naive_power_at_max.rate,
        },
        "fixed_horizon": {
            "n_per_arm": fixed.n_per_arm,
            "power_10_to_11_single_look": fixed_power.rate,
            "power_10_to_11_single_look_ci": [fixed_power.lower, fixed_power.upper],
        },
        "robustness": robust,
        "users": users,
        "elapsed_seconds": round(elapsed, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    def pct(r: Rate) -> str:
        return f"{100 * r.rate:6.2f}%  [{100 * r.lower:5.2f}%, {100 * r.upper:5.2f}%]"

    print(
        f"A/B validity bench: {RUNS} runs, alpha {ALPHA}, tau^2 {tau2:.4g}, min_events "
        f"{DEFAULT_MIN_EVENTS}"
    )
    print(
        f"A/A at {BASELINE:.0%}, a look every {LOOK_EVERY} per arm up to {MAX_N} "
        f"({schedule.size} looks)"
    )
    print(f"  {'method':<44} {'false-positive rate [95% Wilson]'}")
    print(f"  {'sidecar mSPRT (any Ship B / Keep A)':<44} {pct(side_fp)}")
    print(f"  {'sidecar mSPRT (stop at first verdict)':<44} {pct(stop_fp)}")
    print(f"  {'naive peeking, pooled z every look':<44} {pct(naive_fp)}")
    print(f"  {'sidecar A/A runs ending Equivalent':<44} {pct(equivalent)}")
    print(f"Power for {BASELINE:.0%} -> {BASELINE + LIFT:.0%} (same look schedule)")
    print(
        f"  {'sidecar mSPRT, max n 20,000 per arm':<44} {pct(power_at_max)}"
        f"   bound {bound_at_max:.3f}"
    )
    print(
        f"  {'sidecar mSPRT, planner n ' + format(plan.n_per_arm, ',') + ' per arm':<44} "
        f"{pct(power_at_plan)}   bound {plan.planned_power:.3f}"
    )
    print(f"  {'naive peeking, max n 20,000 per arm':<44} {pct(naive_power_at_max)}")
    print(
        f"  {'fixed horizon z-test, n ' + format(fixed.n_per_arm, ',') + ' (1 look)':<44} "
        f"{pct(fixed_power)}"
    )
    print(
        f"  planner inflation {plan.inflation:.3f}x; smallest simulated max n reaching "
        f"{POWER:.0%}: {empirical_n}"
    )
    print("Robustness (sidecar A/A false-positive rate)")
    for name, item in robust.items():
        fp_dict = item["false_positive"]
        assert isinstance(fp_dict, dict)
        print(
            f"  {name:<44} {100 * fp_dict['rate']:6.2f}%  "
            f"[{100 * fp_dict['ci_lower']:5.2f}%, {100 * fp_dict['ci_upper']:5.2f}%]"
        )
    print(
        f"Users: {USER_RUNS} A/A runs, {USERS_PER_ARM} users per arm, "
        f"{users['mean_requests_per_user']:.2f} requests per user, intra-user correlation "
        f"{ICC_RANGE[0]}-{ICC_RANGE[1]}, {USER_LOOKS} looks; design effect median "
        f"{users['design_effect_median']:.2f}"
    )
    print(
        f"  {'user-level (buckets, delta method)':<44} "
        f"{100 * float(users['aa_false_decision_rate']):6.2f}%  upper "
        f"{100 * float(users['aa_false_decision_ci_upper']):5.2f}%"
    )
    print(
        f"  {'request-level (today, same data)':<44} "
        f"{100 * float(users['request_level_aa_false_decision_rate']):6.2f}%"
    )
    print(
        f"  {'power, 10% relative lift (user-level)':<44} "
        f"{100 * float(users['power_10pct_relative']):6.2f}%"
    )
    print(
        f"elapsed {elapsed:.1f} s (users {users_seconds:.1f} s); wrote {RESULTS.relative_to(ROOT)}"
    )
    users_ok = float(users["aa_false_decision_ci_upper"]) <= 0.05
    ok = side_fp.upper <= ALPHA and power_at_plan.lower >= POWER and users_ok
    print(
        "targets:",
        "met" if ok else "NOT met",
        f"(FP upper bound {side_fp.upper:.4f} <= {ALPHA}; power lower bound at planned n "
        f"{power_at_plan.lower:.4f} >= {POWER})",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
